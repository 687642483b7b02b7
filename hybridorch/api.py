"""The library entry points: everything the CLI does, callable from Python (`import hybridorch.api`)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterator

from hybridorch.core.packing import DEFAULT_SOLVER_BUDGET
from hybridorch.core.plan import Plan, plan_stack
from hybridorch.core.policyfile import load_policy, resolve_policy
from hybridorch.core.runtime import VM_RUNTIMES, Runtime
from hybridorch.core.spec import namespace_prefix_problem
from hybridorch.errors import OutputError, Problem, SpecError

__all__ = ["plan_stack", "load_policy", "resolve_policy"]   # re-exported: part of the library API

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from hybridorch.ops.audit import AuditReport
    from hybridorch.ops.capacity import Assumptions, CapacityReport
    from hybridorch.backends.base import Backend, LockNotice, Managed, Removal, Snapshot, WorkloadStatus
    from hybridorch.backends.events import EventSink
    from hybridorch.render.writer import Rendered

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
    if plot is not None and fmt not in ("png", "svg"):
        raise SpecError([Problem(plot, 0, "", "--plot needs a file name ending in .png or .svg")])
    report = capacity_report(plan_stack(path, policy, hosts, solver_budget, strict=False),
                             assumptions or Assumptions())
    if plot is not None:
        from hybridorch.ops.report import capacity_figure

        from hybridorch.ops.files import write_whole

        try:   # whole or not at all; a FIFO, a device or the stack itself is refused before anything is opened
            write_whole(plot, capacity_figure(report, fmt), "the plot", inputs=[path])
        except OSError as err:
            raise OutputError(f"cannot write the plot to {plot}: {err.strerror}") from None
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
        local = local_facts(probe=False, sandboxes=plan.has_runtime(Runtime.SANDBOXED))
    return render_plan(plan, target=target, templates_dir=templates, namespace_prefix=namespace_prefix, local=local)


def _backend_run(path: str, target: str, policy: str | None, options: dict[str, Any]) -> tuple[Plan, Any]:
    from hybridorch.backends.base import get_backend

    hosts = options.pop("hosts", None)
    plan = plan_stack(path, policy, hosts, solver_budget=0)  # manifests do not depend on the packing
    _check_namespace_prefix(plan, options.get("namespace_prefix", ""))
    return plan, get_backend(target, **options)


def _locked(backend: "Backend", stack: str, command: str, wait_lock: bool,
            on_lock_wait: "LockNotice | None") -> "AbstractContextManager[None]":
    """The one place runs that change a stack take its lock (Backend.lock): up/apply, down/delete, snapshot
    changes (gc locks each stack in ops.lifecycle). Held elsewhere: wait (`on_lock_wait` hears why) or, without
    `wait_lock`, raise LockHeld (exit 75)."""
    return backend.lock(stack, command=f"hybridorch {command}", wait=wait_lock, on_wait=on_lock_wait)


def up(path: str, target: str = "local", *, wait: bool = True, timeout: float = 300, policy: str | None = None,
       templates: str | None = None, events: "EventSink | None" = None, wait_lock: bool = True,
       on_lock_wait: "LockNotice | None" = None, lock_command: str = "up",
       **options: Any) -> list["WorkloadStatus"]:
    """Make every workload of the stack run on the target (idempotent); `events` hears each step of each
    workload and image as it happens (hybridorch.backends.events). One run per stack at a time: see _locked."""
    from hybridorch.render.stack import render_plan

    plan, backend = _backend_run(path, target, policy, {**options, "events": events})
    render_target = "kubernetes" if target == "kubernetes" else "local"
    local = None
    if render_target == "local":
        from hybridorch.vm.host import local_facts
        # the rendered domains point at this machine's guests and disks and use its KVM verdict
        local = local_facts(sandboxes=plan.has_runtime(Runtime.SANDBOXED))
    rendered = render_plan(plan, target=render_target, templates_dir=templates,
                           namespace_prefix=options.get("namespace_prefix", ""), local=local)
    with _locked(backend, plan.stack.name, lock_command, wait_lock, on_lock_wait):
        return backend.up(plan, rendered, wait=wait, timeout=timeout)


def apply(path: str, **options: Any) -> list["WorkloadStatus"]:
    """`up` on a Kubernetes cluster (`hybridorch apply`): load local images, dry run, server-side apply, prune, wait."""
    return up(path, "kubernetes", **{"lock_command": "apply", **options})


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
         events: "EventSink | None" = None, wait_lock: bool = True, on_lock_wait: "LockNotice | None" = None,
         lock_command: str = "down", **options: Any) -> "Removal":
    """Remove everything the tool created for the stack on the target, and nothing else. Data (claims,
    DataVolumes, volumes, disks) is kept unless `delete_data`; the result names what was removed and kept.
    `events` hears each workload's removal."""
    plan, backend = _backend_run(path, target, policy, {**options, "events": events})
    with _locked(backend, plan.stack.name, lock_command, wait_lock, on_lock_wait):
        return backend.down(plan, delete_data=delete_data)


def delete(path: str, **options: Any) -> "Removal":
    """`down` on a Kubernetes cluster (`hybridorch delete`): only objects carrying the stack's labels."""
    return down(path, "kubernetes", **{"lock_command": "delete", **options})


def audit(paths: list[str], *, policy: str | None = None, hosts: str | None = None, templates: str | None = None,
          live: bool = False, target: str = "local", context: str | None = None, namespace_prefix: str = "",
          max_image_age: str | None = None, fmt: str = "table", fail_on: str = "high",
          now: float | None = None) -> "AuditReport":
    """Audit stack files, rendered manifests, libvirt domains and cloud-init (and with `live`, what runs) against
    the rules in hybridorch.ops.audit; report.check() raises AuditFailed when a finding reaches `fail_on`."""
    from hybridorch import __version__
    from hybridorch.ops.audit import AuditReport
    from hybridorch.ops.audit_live import audit_files
    from hybridorch.core.durations import is_duration, parse_duration
    from hybridorch.core.schema import show

    age = None
    if max_image_age is not None:
        if not is_duration(max_image_age) or not parse_duration(max_image_age):   # 0s: every image too old
            raise SpecError([Problem("--max-image-age", 0, "", f"{show(max_image_age)} is not a positive duration "
                                                              "such as 30d (at most 12 digits per number)")])
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
       skipped: list[str] | None = None, events: "EventSink | None" = None, wait_lock: bool = True,
       on_lock_wait: "LockNotice | None" = None) -> tuple[list["Managed"], list[str]]:
    """Remove what hybridorch made that is past its TTL, keeping data (`hybridorch gc`): (expired, removed);
    `events` hears a `removed` event per thing removed. Each stack is removed from under its lock; without
    `wait_lock` a stack another run holds is left alone and named in `skipped`."""
    from hybridorch.backends.events import Event, EventKind
    from hybridorch.ops import lifecycle

    expired, removed = lifecycle.gc(target, dry_run=dry_run, context=context, skipped=skipped,
                                    wait_lock=wait_lock, on_lock_wait=on_lock_wait)
    for item in removed:
        if events is not None and not item.startswith("kept "):
            events(Event(item, EventKind.REMOVED))
    return expired, removed



# --- snapshots (hybridorch.ops.snapshots) -----------------------------------------------------------------------

def _snapshot_plan(path: str, workload: str, policy: str | None) -> tuple[Plan, Any]:
    """The plan and the workload, which must be a VM (a container has no disk state to snapshot)."""
    plan = plan_stack(path, policy, solver_budget=0)
    w = next((w for w in plan.stack.workloads if w.name == workload), None)
    if w is None:
        raise SpecError([Problem(path, 0, "", f"no workload named {workload!r} in stack {plan.stack.name}")])
    runtime = next(p.runtime for p in plan.placements if p.workload.name == workload)
    if runtime not in VM_RUNTIMES:
        raise SpecError([Problem(path, w.line(), f"spec.workloads[{w.index}]",
                                 f"workload {workload} runs as {runtime}: only VMs (vm, nested) have snapshots")])
    return plan, w


def _snapshot_backend(target: str, context: str | None, namespace_prefix: str) -> "Backend":
    """The target's engine (the registry's); one that cannot snapshot says so when asked."""
    from hybridorch.backends.base import get_backend

    options = {"context": context, "namespace_prefix": namespace_prefix} if target == "kubernetes" else {}
    return get_backend(target, **options)


def snapshot_create(path: str, workload: str, prefix: str | None = None, target: str = "local", *,
                    policy: str | None = None, context: str | None = None, namespace_prefix: str = "",
                    now: float | None = None, wait_lock: bool = True,
                    on_lock_wait: "LockNotice | None" = None) -> list["Snapshot"]:
    """Snapshot every replica of a VM workload as PREFIX-YYYYMMDD-HHMMSS; the snapshots made."""
    import time

    from hybridorch.ops import snapshots as snaps

    if prefix is not None and (why := snaps.check_prefix(prefix)):
        raise SpecError([Problem("NAME", 0, "", why)])
    plan, w = _snapshot_plan(path, workload, policy)
    name = snaps.snapshot_name(prefix, time.time() if now is None else now)
    backend = _snapshot_backend(target, context, namespace_prefix)
    with _locked(backend, plan.stack.name, "snapshot create", wait_lock, on_lock_wait):
        return backend.snapshot_create(plan, workload, name)


def snapshot_list(path: str, workload: str, target: str = "local", *, policy: str | None = None,
                  context: str | None = None, namespace_prefix: str = "") -> list["Snapshot"]:
    plan, w = _snapshot_plan(path, workload, policy)
    found = _snapshot_backend(target, context, namespace_prefix).snapshot_list(plan, workload)
    return sorted(found, key=lambda s: (s.vm, s.created))


def snapshot_restore(path: str, workload: str, name: str | None = None, target: str = "local", *,
                     policy: str | None = None, context: str | None = None, namespace_prefix: str = "",
                     now: float | None = None, wait_lock: bool = True,
                     on_lock_wait: "LockNotice | None" = None) -> tuple[list["Snapshot"], list[str]]:
    """Roll the VM back to snapshot `name` (default: the newest): (snapshots restored, warnings to show; a
    restore undoes every patch applied since the snapshot)."""
    import time

    from hybridorch.ops import snapshots as snaps

    plan, w = _snapshot_plan(path, workload, policy)
    now = time.time() if now is None else now
    backend = _snapshot_backend(target, context, namespace_prefix)
    with _locked(backend, plan.stack.name, "snapshot restore", wait_lock, on_lock_wait):
        restored = backend.snapshot_restore(plan, workload, name)
    return restored, [snaps.rollback_warning(s, now) for s in restored]


def snapshot_prune(path: str, workload: str, name: str | None = None, target: str = "local", *,
                   policy: str | None = None, context: str | None = None, namespace_prefix: str = "",
                   dry_run: bool = False, now: float | None = None, wait_lock: bool = True,
                   on_lock_wait: "LockNotice | None" = None) -> list["Snapshot"]:
    """Remove the snapshots the workload's retention (`snapshots: {retain, maxAge}`) no longer keeps, or exactly
    snapshot `name`; the snapshots removed (or, with `dry_run`, that would be)."""
    import time
    from contextlib import nullcontext

    from hybridorch.ops import snapshots as snaps

    plan, w = _snapshot_plan(path, workload, policy)
    backend = _snapshot_backend(target, context, namespace_prefix)
    # chosen under the lock: a run creating or restoring snapshots meanwhile changes what retention keeps
    with nullcontext() if dry_run else _locked(backend, plan.stack.name, "snapshot prune", wait_lock, on_lock_wait):
        found = sorted(backend.snapshot_list(plan, workload), key=lambda s: (s.vm, s.created))
        doomed = snaps.select_doomed(found, w, resolve_policy(plan.stack, policy), name,
                                     time.time() if now is None else now)
        if doomed and not dry_run:
            backend.snapshot_prune(plan, workload, doomed)
    return doomed
