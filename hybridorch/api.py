"""The library entry points: everything the CLI does, callable from Python (`import hybridorch.api`)."""
from __future__ import annotations

import os
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Iterator

from hybridorch.errors import BackendError, PolicyError, Problem, SpecError
from hybridorch.core.packing import DEFAULT_SOLVER_BUDGET
from hybridorch.core.plan import Plan, build_plan
from hybridorch.core.policy import PROFILES, SANDBOX_CLASSES, Overhead, Profile, make_profile
from hybridorch.core.schema import DNS_LABEL, Document, Field, Obj, Quantity, Scalar, check_document, parse_quantity
from hybridorch.core.safeload import path_inside
from hybridorch.core.spec import API_VERSION, Stack, load_hosts, load_stack, namespace_prefix_problem, placement_problems

if TYPE_CHECKING:
    from hybridorch.ops.audit import AuditReport
    from hybridorch.ops.lifecycle import Managed
    from hybridorch.ops.capacity import Assumptions, CapacityReport
    from hybridorch.backends.base import Removal, WorkloadStatus
    from hybridorch.render.stack import Rendered

_OVERHEAD = Obj({"cpu": Field(Quantity("cpu"), required=True), "memory": Field(Quantity("memory"), required=True)})

POLICY_FILE = Obj({
    "apiVersion": Field(Scalar(str, enum=(API_VERSION,)), required=True),
    "kind": Field(Scalar(str, enum=("Policy",)), required=True),
    "metadata": Field(Obj({"name": Field(Scalar(str, pattern=DNS_LABEL), required=True)}), required=True),
    "spec": Field(Obj({
        "base": Field(Scalar(str, enum=tuple(PROFILES)), default="balanced"),
        "untrustedRuntime": Field(Scalar(str, enum=("sandboxed", "vm"))),
        "internalRuntime": Field(Scalar(str, enum=("container", "sandboxed"))),
        "privilegedTrustedAsContainer": Field(Scalar(bool)),
        "separateTenants": Field(Scalar(bool)),
        "spreadReplicas": Field(Scalar(bool)),
        "headroomPercent": Field(Scalar(int, minimum=0, maximum=90)),
        "emulationCpuFactor": Field(Scalar(int, minimum=1, maximum=100)),
        "maxVmCpus": Field(Scalar(int, minimum=1, maximum=1024), doc="Per-VM CPU ceiling (audit rule HYB002)."),
        "maxSnapshotAge": Field(Scalar(str, pattern=r"([0-9]+[smhdw])+", what="a duration such as 7d"),
                                doc="Longest snapshot retention the audit accepts (rule HYB015)."),
        "overheads": Field(Obj({"sandboxed": Field(_OVERHEAD), "vm": Field(_OVERHEAD)})),
        "localSandbox": Field(Scalar(str, enum=("auto", "runtime", "vm")),
                              doc="Where a sandboxed workload runs on the local target: auto (Docker's gVisor/Kata "
                                  "runtime, else its own VM), runtime, vm."),
        "sandboxRuntimeClass": Field(Scalar(str, enum=SANDBOX_CLASSES),
                                     doc="What a cluster runs sandboxed pods in: kata (RuntimeClass hybridorch-kata, "
                                         "handler kata, nodes with KVM) or gvisor (hybridorch-gvisor, handler runsc)."),
    }), required=True),
}, description="A hybridorch placement policy: a built-in profile with fields overridden.")

_POLICY_KEYS = {"untrustedRuntime": "untrusted_runtime", "internalRuntime": "internal_runtime",
                "privilegedTrustedAsContainer": "trusted_privileged_container", "separateTenants": "separate_tenants",
                "spreadReplicas": "spread_replicas", "headroomPercent": "headroom_percent",
                "emulationCpuFactor": "emulation_cpu_factor", "maxVmCpus": "max_vm_cpus",
                "maxSnapshotAge": "max_snapshot_age", "localSandbox": "local_sandbox",
                "sandboxRuntimeClass": "sandbox_runtime_class"}


def _overhead(v: dict[str, str]) -> Overhead:
    cpu, mem = parse_quantity(v["cpu"]), parse_quantity(v["memory"])
    assert cpu is not None and mem is not None
    return Overhead(int(cpu * 1000), int(mem))


def load_policy(path: str) -> Profile:
    """A user policy file (kind: Policy) turned into a Profile."""
    doc: Document = check_document(path, POLICY_FILE)
    spec = doc.values["spec"]
    overrides: dict[str, Any] = {_POLICY_KEYS[k]: v for k, v in spec.items() if k in _POLICY_KEYS and v is not None}
    overheads = spec.get("overheads") or {}
    if overheads.get("sandboxed"):
        overrides["sandbox_overhead"] = _overhead(overheads["sandboxed"])
    if overheads.get("vm"):
        overrides["vm_overhead"] = _overhead(overheads["vm"])
    overrides["name"] = doc.values["metadata"]["name"]
    return make_profile(spec["base"], overrides)


def resolve_policy(stack: Stack, override: str | None = None) -> Profile:
    """The profile a stack uses: --policy wins over spec.policy; a name is built in, anything else a file path.

    A policy path in a stack file is relative to the stack file and must stay in its directory: a stack file
    must not make us read files beside it. The user can still name any file with --policy."""
    ref = override or stack.policy
    if ref in PROFILES:
        return PROFILES[ref]
    path = ref
    if not override:
        inside = path_inside(stack.file, ref)
        if inside is None:
            raise SpecError([Problem(stack.file, stack.policy_line, "spec.policy",
                                     f"policy file {ref!r} is outside the stack's directory (an absolute path, '..' "
                                     "or a symlink out of it): keep it beside the stack, or pass --policy")])
        path = inside
    if not os.path.exists(path):
        message = f"policy {ref!r} is neither {', '.join(PROFILES)} nor an existing file"
        if override:
            raise PolicyError(message)
        raise SpecError([Problem(stack.file, stack.policy_line, "spec.policy", message)])
    return load_policy(path)


def plan_stack(path: str, policy: str | None = None, hosts: str | None = None,
               solver_budget: float = DEFAULT_SOLVER_BUDGET, strict: bool = True) -> Plan:
    """Load a stack file and decide every workload's runtime and host.

    `hosts` is a `kind: Hosts` file describing the machines or cluster; it replaces the stack's spec.hosts.
    `solver_budget`: seconds packing may spend improving on best-fit decreasing (0: none)."""
    stack = load_stack(path)
    if hosts:
        stack = replace(stack, hosts=load_hosts(hosts))
    plan = build_plan(stack, resolve_policy(stack, policy), solver_budget, strict)
    problems = placement_problems(stack, {p.name: p.runtime for p in plan.placements})
    if problems:
        raise SpecError(problems)
    return plan


def _check_namespace_prefix(plan: Plan, prefix: str) -> None:
    bad = namespace_prefix_problem(plan.stack, prefix)
    if bad:
        raise SpecError([bad])


def capacity(path: str, policy: str | None = None, hosts: str | None = None,
             solver_budget: float = DEFAULT_SOLVER_BUDGET, assumptions: "Assumptions | None" = None,
             plot: str | None = None) -> "CapacityReport":
    """The consolidation report (servers, energy, CO2: one workload per server against the packed plan); with
    `plot`, also draw it into that .png or .svg file. Replicas that get no host are listed, not an error."""
    from hybridorch.ops.capacity import Assumptions, capacity_report

    fmt = os.path.splitext(plot)[1].lower().lstrip(".") if plot else ""
    if plot and fmt not in ("png", "svg"):
        raise SpecError([Problem(plot, 0, "", "--plot needs a file name ending in .png or .svg")])
    report = capacity_report(plan_stack(path, policy, hosts, solver_budget, strict=False),
                             assumptions or Assumptions())
    if plot:
        from hybridorch.ops.report import capacity_figure

        data = capacity_figure(report, fmt)
        try:
            with open(plot, "wb") as out:
                out.write(data)
        except OSError as err:
            raise SpecError([Problem(plot, 0, "", f"cannot write the plot: {err.strerror}")]) from err
    return report


def validate_files(paths: list[str], policy: str | None = None, hosts: str | None = None) -> list[Plan]:
    """Check each file completely (spec, policy contradictions, packing); raises SpecError with all problems."""
    plans: list[Plan] = []
    problems: list[Problem] = []
    for path in paths:
        try:
            plans.append(plan_stack(path, policy, hosts, solver_budget=0))  # feasibility is enough here
        except SpecError as err:
            problems.extend(err.problems)
    if problems:
        raise SpecError(problems)
    return plans


# --- rendering and running (each delegates to the module that owns the concept) --------------------

def render(path: str, target: str = "kubernetes", templates: str | None = None, policy: str | None = None,
           namespace_prefix: str = "", hosts: str | None = None) -> "Rendered":
    """Plan a stack and render it (validated, nothing written): Kubernetes/KubeVirt objects or local VM files."""
    from hybridorch.render.stack import render_plan

    plan = plan_stack(path, policy, hosts, solver_budget=0)
    _check_namespace_prefix(plan, namespace_prefix)
    local = None
    if target == "local":
        from hybridorch.vm.host import local_facts
        # what `up` would define here (the cached KVM verdict, real paths)
        local = local_facts(probe=False, sandboxes=plan.has_runtime("sandboxed"))
    return render_plan(plan, target=target, templates_dir=templates, namespace_prefix=namespace_prefix, local=local)


def _backend_run(path: str, target: str, policy: str | None, options: dict[str, Any]) -> tuple[Plan, Any]:
    from hybridorch.backends.base import get_backend

    hosts = options.pop("hosts", None)
    plan = plan_stack(path, policy, hosts, solver_budget=0)  # manifests do not depend on the packing
    _check_namespace_prefix(plan, options.get("namespace_prefix", ""))
    return plan, get_backend(target, **options)


def up(path: str, target: str = "local", *, wait: bool = True, timeout: float = 300, policy: str | None = None,
       templates: str | None = None, **options: Any) -> list["WorkloadStatus"]:
    """Make every workload of the stack run on the target (idempotent)."""
    from hybridorch.render.stack import render_plan

    plan, backend = _backend_run(path, target, policy, options)
    render_target = "kubernetes" if target == "kubernetes" else "local"
    local = None
    if render_target == "local":
        from hybridorch.vm.host import local_facts
        # the rendered domains point at this machine's guests and disks and use its KVM verdict
        local = local_facts(sandboxes=plan.has_runtime("sandboxed"))
    rendered = render_plan(plan, target=render_target, templates_dir=templates,
                           namespace_prefix=options.get("namespace_prefix", ""), local=local)
    return backend.up(plan, rendered, wait=wait, timeout=timeout)


def status(path: str, target: str = "local", *, policy: str | None = None, **options: Any) -> list["WorkloadStatus"]:
    plan, backend = _backend_run(path, target, policy, options)
    return backend.status(plan)


def logs(path: str, workload: str, target: str = "local", *, tail: int | None = None, follow: bool = False,
         policy: str | None = None, **options: Any) -> Iterator[str]:
    plan, backend = _backend_run(path, target, policy, options)
    if workload not in {w.name for w in plan.stack.workloads}:
        raise SpecError([Problem(path, 0, "", f"no workload named {workload!r} in stack {plan.stack.name}")])
    return backend.logs(plan, workload, tail=tail, follow=follow)


def down(path: str, target: str = "local", *, delete_data: bool = False, policy: str | None = None,
         **options: Any) -> "Removal":
    """Remove everything the tool created for the stack on the target, and nothing else. Data (claims,
    DataVolumes, volumes, disks) is kept unless `delete_data`; the result names what was removed and kept."""
    plan, backend = _backend_run(path, target, policy, options)
    return backend.down(plan, delete_data=delete_data)


def audit(paths: list[str], *, policy: str | None = None, hosts: str | None = None, templates: str | None = None,
          live: bool = False, target: str = "local", context: str | None = None, namespace_prefix: str = "",
          max_image_age: str | None = None, fmt: str = "table", fail_on: str = "high",
          now: float | None = None) -> "AuditReport":
    """Audit stack files, rendered manifests, libvirt domains and cloud-init (and with `live`, what runs) against
    the rules in hybridorch.ops.audit; report.check() raises AuditFailed when a finding reaches `fail_on`."""
    from hybridorch import __version__
    from hybridorch.ops.audit import AuditReport
    from hybridorch.ops.audit_live import audit_files
    from hybridorch.core.spec import parse_duration

    age = None
    if max_image_age is not None:
        if not re.fullmatch(r"([0-9]+[smhdw])+", max_image_age):
            raise SpecError([Problem("--max-image-age", 0, "", f"{max_image_age!r} is not a duration such as 30d")])
        age = parse_duration(max_image_age)
    findings = audit_files(paths, policy=policy, hosts=hosts, templates=templates, live=live, target=target,
                           context=context, namespace_prefix=namespace_prefix, max_image_age=age, now=now)
    return AuditReport(tuple(findings), fmt, fail_on, __version__)


def ps(target: str = "local", *, context: str | None = None,
       skipped: list[str] | None = None) -> list["Managed"]:
    """Everything hybridorch made on the target(s), across stacks (`hybridorch ps`); unreachable sides of
    target "all" are named in `skipped`."""
    from hybridorch.ops.lifecycle import inventory

    return inventory(target, context=context, skipped=skipped)


def gc(target: str = "local", *, dry_run: bool = False, context: str | None = None,
       skipped: list[str] | None = None) -> tuple[list["Managed"], list[str]]:
    """Remove what hybridorch made that is past its TTL, keeping data (`hybridorch gc`): (expired, removed)."""
    from hybridorch.ops import lifecycle

    return lifecycle.gc(target, dry_run=dry_run, context=context, skipped=skipped)



# --- snapshots (hybridorch.ops.snapshots) -----------------------------------------------------------------------

def _snapshot_plan(path: str, workload: str, policy: str | None) -> tuple[Plan, Any]:
    """The plan and the workload, which must be a VM (a container has no disk state to snapshot)."""
    plan = plan_stack(path, policy, solver_budget=0)
    w = next((w for w in plan.stack.workloads if w.name == workload), None)
    if w is None:
        raise SpecError([Problem(path, 0, "", f"no workload named {workload!r} in stack {plan.stack.name}")])
    runtime = next(p.runtime for p in plan.placements if p.workload.name == workload)
    if runtime not in ("vm", "nested"):
        raise SpecError([Problem(path, w.line(), f"spec.workloads[{w.index}]",
                                 f"workload {workload} runs as {runtime}: only VMs (vm, nested) have snapshots")])
    return plan, w


def _cluster(context: str | None, namespace_prefix: str) -> Any:
    from hybridorch.backends.kubernetes import KubernetesBackend
    from hybridorch.ops.snapshots import check_crds

    backend = KubernetesBackend(context=context, namespace_prefix=namespace_prefix)
    check_crds(backend)
    return backend


def snapshot_create(path: str, workload: str, prefix: str | None = None, target: str = "local", *,
                    policy: str | None = None, context: str | None = None, namespace_prefix: str = "",
                    now: float | None = None) -> list[Any]:
    """Snapshot every replica of a VM workload as PREFIX-YYYYMMDD-HHMMSS; the snapshots made."""
    import time

    from hybridorch.ops import snapshots as snaps

    if prefix is not None and (why := snaps.check_prefix(prefix)):
        raise SpecError([Problem("NAME", 0, "", why)])
    plan, w = _snapshot_plan(path, workload, policy)
    name = snaps.snapshot_name(prefix, time.time() if now is None else now)
    if target == "local":
        return snaps.local_create(plan.stack.name, workload, name)
    backend = _cluster(context, namespace_prefix)
    ns, vms = snaps.cluster_vms(plan, workload, namespace_prefix)
    snaps.apply_objects(backend, [snaps.snapshot_object(plan.stack.name, workload, vm, ns, name) for vm in vms])
    return [s for s in snaps.cluster_list(backend, plan.stack.name, workload, ns) if s.name.startswith(name)]


def snapshot_list(path: str, workload: str, target: str = "local", *, policy: str | None = None,
                  context: str | None = None, namespace_prefix: str = "") -> list[Any]:
    from hybridorch.ops import snapshots as snaps

    plan, w = _snapshot_plan(path, workload, policy)
    if target == "local":
        found = snaps.local_list(plan.stack.name, workload)
    else:
        ns, _ = snaps.cluster_vms(plan, workload, namespace_prefix)
        found = snaps.cluster_list(_cluster(context, namespace_prefix), plan.stack.name, workload, ns)
    return sorted(found, key=lambda s: (s.vm, s.created))


def snapshot_restore(path: str, workload: str, name: str | None = None, target: str = "local", *,
                     policy: str | None = None, context: str | None = None, namespace_prefix: str = "",
                     now: float | None = None) -> tuple[list[Any], list[str]]:
    """Roll the VM back to snapshot `name` (default: the newest): (snapshots restored, warnings to show; a
    restore undoes every patch applied since the snapshot)."""
    import time

    from hybridorch.ops import snapshots as snaps

    plan, w = _snapshot_plan(path, workload, policy)
    now = time.time() if now is None else now
    if target == "local":
        restored = snaps.local_restore(plan.stack.name, workload, name)
    else:
        backend = _cluster(context, namespace_prefix)
        ns, vms = snaps.cluster_vms(plan, workload, namespace_prefix)
        found = sorted(snaps.cluster_list(backend, plan.stack.name, workload, ns), key=lambda s: s.created)
        restored = []
        for vm in vms:
            mine = [s for s in found if s.vm == f"{ns}/{vm}" and (name is None or s.name.startswith(name))]
            if not mine:
                raise BackendError(f"VirtualMachine {ns}/{vm} has no snapshot" + (f" {name}" if name else ""))
            restored.append(mine[-1])
        snaps.apply_objects(backend, [snaps.restore_object(plan.stack.name, workload, s.vm.split("/", 1)[1], ns,
                                                           s.name) for s in restored])
    return restored, [snaps.rollback_warning(s, now) for s in restored]


def snapshot_prune(path: str, workload: str, name: str | None = None, target: str = "local", *,
                   policy: str | None = None, context: str | None = None, namespace_prefix: str = "",
                   dry_run: bool = False, now: float | None = None) -> list[Any]:
    """Remove the snapshots the workload's retention (`snapshots: {retain, maxAge}`) no longer keeps, or exactly
    snapshot `name`; the snapshots removed (or, with `dry_run`, that would be)."""
    import time

    from hybridorch.ops import snapshots as snaps

    plan, w = _snapshot_plan(path, workload, policy)
    now = time.time() if now is None else now
    found = snapshot_list(path, workload, target, policy=policy, context=context, namespace_prefix=namespace_prefix)
    if name is not None:
        doomed = [s for s in found if s.name == name]
        if not doomed:
            raise BackendError(f"workload {workload} has no snapshot {name}")
    else:
        doomed = snaps.select_prune(found, snaps.retention_for(w, resolve_policy(plan.stack, policy)), now)
    if dry_run or not doomed:
        return doomed
    if target == "local":
        snaps.local_delete(plan.stack.name, workload, doomed)
    else:
        backend = _cluster(context, namespace_prefix)
        for s in doomed:
            backend.kubectl("delete", snaps.SNAPSHOT_RESOURCE, s.name, "-n", s.vm.split("/", 1)[0],
                            "--ignore-not-found")
    return doomed
