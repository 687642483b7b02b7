"""The contexts (plain data the templates lay out) of a Plan and the entry point render_plan, for Kubernetes/KubeVirt
objects or local VM files; every template's text is parsed back and validated before a Rendered is returned."""
from __future__ import annotations

import hashlib
import json
import marshal
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from hybridorch.core import images
from hybridorch.render import validate
from hybridorch import proc
from hybridorch.errors import HybridorchError, RenderError
from hybridorch.core.labels import LABEL_MANAGED, LABEL_RUNTIME, MANAGED_BY, object_labels, replica_names, replica_path
from hybridorch.core.plan import Plan
from hybridorch.core.policy import Placement, Profile
from hybridorch.core.runtime import (ARCHES, DISK_INITRD, DISK_KERNEL, GUEST_DHCP_ARG, VM_RUNTIMES, Runtime,
                                     SandboxClass, assign_host_ports, cache_root, disk_cmdline, guest_cmdline,
                                     is_privileged, read_only_root, readiness_port, runs_image_in_vm, scratch_tmp)
from hybridorch.core.spec import InnerContainer, Workload, memory_bytes
from hybridorch.render.domain import LocalFacts, domain_context, replica_forwards, sandbox_in_vm, vm_dir, workload_forwards
from hybridorch.render.fastyaml import Origin
from hybridorch.render.sandbox import Templates
from hybridorch.render.writer import BlockDumper, Packed, Rendered, RenderedFile, dump_yaml

TARGETS = ("kubernetes", "local")
LABEL_VIRTUALIZATION = "hybridorch.dev/virtualization"
# the RuntimeClass sandboxed workloads name and the CRI handler it maps to, per policy sandboxRuntimeClass
# (the handlers' conventional names: Kata Containers' "kata", gVisor's "runsc")
RUNTIME_CLASSES = {SandboxClass.KATA: ("hybridorch-kata", "kata"), SandboxClass.GVISOR: ("hybridorch-gvisor", "runsc")}
RUNTIME_CLASS = RUNTIME_CLASSES[SandboxClass.KATA][0]   # the default policies' class
# How long KubeVirt waits for a guest to shut down on its own before stopping it (its default is 180 s; a guest
# without ACPI handling, like the examples' busybox-style inits, would hold every delete that long)
VM_GRACE_SECONDS = 20
# Boot disk of a Linux VM that names none: a public cloud image with cloud-init (podman for nested comes from apt)
DEFAULT_DISK_IMAGE = "quay.io/containerdisks/debian:12"
NONROOT_ID = 65532                  # the conventional "nonroot" uid/gid of distroless images
# Local disk a container may use (logs, writable layer, its /tmp emptyDir); request = limit, like cpu and memory
EPHEMERAL_STORAGE = "1Gi"
SCRATCH_SIZE = "256Mi"              # the /tmp emptyDir under a read-only root filesystem
SCRATCH_VOLUME = "hybridorch-tmp"


# --- quantities --------------------------------------------------------------------------------------

def cpu_quantity(millis: int) -> str:
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def memory_quantity(n: int) -> str:
    for suffix, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n % size == 0 and n >= size:
            return f"{n // size}{suffix}"
    return str(n)


# --- contexts: plain data the templates lay out --------------------------------------------------------

def _labels(plan: Plan, workload: Workload | None = None, runtime: str | None = None,
            tenant: str | None = None) -> dict[str, str]:
    # the user's labels first, so ours (which prune and gc rely on) always win
    out = dict(plan.stack.labels)
    if workload is not None:
        out.update(workload.labels)
    out.update(object_labels(plan.stack.name, workload.name if workload else None, runtime, tenant))
    return out


def _selector(plan: Plan, workload: Workload) -> dict[str, str]:
    return object_labels(plan.stack.name, workload.name)


def _node_selector(p: Placement) -> dict[str, str]:
    out = {"kubernetes.io/arch": p.host_arch, "kubernetes.io/os": p.host_os}
    if p.needs_virtualization:
        out[LABEL_VIRTUALIZATION] = "true"
    return out


def _ports(ports: Iterable[Any]) -> list[dict[str, Any]]:
    return [{"name": p.name or f"{p.protocol.lower()}-{p.port}", "port": p.port, "protocol": p.protocol}
            for p in ports]


def _disk_image(w: Workload) -> str | None:
    """The VM's boot disk image: vm.disk.image; the workload image when the spec itself asks for a VM (then
    `image` names a containerDisk); else none (a PVC) or the default cloud image."""
    if w.vm.disk_image or w.vm.disk_pvc:
        return w.vm.disk_image
    if w.runtime is Runtime.VM and w.image:
        return w.image
    return DEFAULT_DISK_IMAGE


def _inner_containers(w: Workload) -> tuple[InnerContainer, ...]:
    """What runs inside the VM: the `containers` of a nested workload, or the workload's own container image
    when policy moved a container workload into a VM (e.g. it needs its own kernel)."""
    if w.containers:
        return w.containers
    if runs_image_in_vm(w):
        command = tuple(w.command or ()) + tuple(w.args or ())
        return (InnerContainer(w.name, w.image, command or None, dict(w.env), w.ports),)
    return ()


def _vm_port_list(w: Workload) -> list[Any]:
    """The ports a VM serves: its own and its inner containers', each (port, protocol) once."""
    seen: dict[tuple[int, str], Any] = {}
    for p in list(w.ports) + [p for c in _inner_containers(w) for p in c.ports]:
        seen.setdefault((p.port, p.protocol), p)
    return list(seen.values())


def _vm_ports(w: Workload) -> list[dict[str, Any]]:
    return _ports(_vm_port_list(w))


def _workload_context(plan: Plan, p: Placement, namespace: str, image_dirs: list[Path]) -> dict[str, Any]:
    w = p.workload
    privileged = is_privileged(w)
    ready_port = readiness_port(w)
    ready_proto = next((x.protocol for x in w.ports if x.port == ready_port), "TCP")
    # the hardening rule Docker follows too: a read-only root with an emptyDir at /tmp (runtime.read_only_root)
    scratch = [{"name": SCRATCH_VOLUME, "mount_path": "/tmp", "size": SCRATCH_SIZE}] if scratch_tmp(w) else []
    return {
        "name": w.name, "namespace": namespace, "runtime": p.runtime,
        "labels": _labels(plan, w, p.runtime, w.tenant), "selector": _selector(plan, w),
        "kind": "StatefulSet" if w.volumes else "Deployment", "replicas": w.replicas,
        # a locally built image by its content-derived tag: every node runs the same build, IfNotPresent is right
        "image": images.content_ref(w.image, image_dirs) if w.image else w.image,
        "command": list(w.command) if w.command else None,
        "args": list(w.args) if w.args else None,
        "env": [{"name": k, "value": v} for k, v in w.env.items()],
        "ports": _ports(w.ports), "resources": {"cpu": w.resources.cpu, "memory": w.resources.memory,
                                                "ephemeral": EPHEMERAL_STORAGE},
        "privileged": privileged, "read_only_root": read_only_root(w),
        "host_network": "host-network" in w.requires, "nonroot_id": NONROOT_ID,
        "runtime_class": RUNTIME_CLASSES[plan.profile.sandbox_runtime_class][0]
        if p.runtime is Runtime.SANDBOXED else None,
        "node_selector": _node_selector(p),
        "volumes": [{"name": v.name, "mount_path": v.mount_path, "size": v.size} for v in w.volumes],
        "scratch": scratch,
        "ready_port": ready_port if ready_proto == "TCP" else None,
        # replicas over hosts: a hard rule where the policy spreads replicas, else a preference
        "spread": None if w.replicas < 2 else ("DoNotSchedule" if plan.profile.spread_replicas else "ScheduleAnyway"),
    }


def _check_user_data(user_data: list[tuple[str, str]]) -> None:
    """(workload, #cloud-config text) of the VMs a render wrote, checked by cloud-init in one run (verdicts kept
    by the text's SHA-256); the first invalid one fails the render."""
    problems = validate.cloud_init_problems([text for _, text in user_data])
    for (name, _), problem in zip(user_data, problems):
        if problem:
            raise RenderError(f"workload {name}: cloud-init user data is invalid: {problem}")


def _cloud_config_text(tpl: Templates, plan: Plan, p: Placement) -> str:
    """The #cloud-config user data of a VM: ours (hostname; for nested, podman + one unit per container),
    merged with the spec's vm.userData (lists appended, other keys from the spec win)."""
    w = p.workload
    units = []
    for c in _inner_containers(w):
        units.append({
            "name": c.name, "unit": f"hybridorch-{c.name}.service",
            "text": tpl.text("cloud-init/container.service.j2", stack=plan.stack.name, workload=w.name,
                             container={"name": c.name, "image": c.image,
                                        "command": list(c.command) if c.command else [],
                                        "env": [{"name": k, "value": v} for k, v in c.env.items()],
                                        "ports": _ports(c.ports)},
                             labels=_selector(plan, w)),
        })
    docs = tpl.documents("cloud-init/user-data.yaml.j2", hostname=w.name, stack=plan.stack.name, units=units)
    config = docs[0] if docs else {}
    if w.vm.user_data:
        try:
            extra = yaml.safe_load(w.vm.user_data)
        except yaml.YAMLError as err:
            raise RenderError(f"workload {w.name}: vm.userData is not YAML: {err}") from None
        if extra is not None and not isinstance(extra, dict):
            raise RenderError(f"workload {w.name}: vm.userData must be a #cloud-config mapping")
        for key, value in (extra or {}).items():
            if isinstance(value, list) and isinstance(config.get(key), list):
                config[key] = config[key] + value
            else:
                config[key] = value
    return "#cloud-config\n" + yaml.dump(config, Dumper=BlockDumper, sort_keys=False, default_flow_style=False,
                                           width=120)


def _vm_context(tpl: Templates, plan: Plan, p: Placement, namespace: str,
                image_dirs: list[Path] | None = None) -> dict[str, Any]:
    """The `vm` of the KubeVirt and libvirt templates. `image_dirs` is given for a cluster's render only: there a
    locally built disk image is named by its content-derived tag, as pods' images are, and a nested VM without a
    disk boots the busybox guest image the kubernetes backend builds (the local target boots that guest itself)."""
    w = p.workload
    windows = w.os == "windows"
    image = _disk_image(w)
    if windows and image == DEFAULT_DISK_IMAGE:
        raise RenderError(f"workload {w.name}: a windows VM needs vm.disk.image or vm.disk.pvc (its boot disk)")
    if image and image_dirs is not None:
        image = images.content_ref(image, image_dirs)
    machine = w.vm.machine or ARCHES[w.arch].machine
    replicas = max(w.replicas, 1)
    bus = "sata" if windows else "virtio"
    # a disk the user names boots the kernel its image ships, as on the local target; the default cloud image
    # and a PVC boot their own bootloader
    kernel_boot = None if windows or image in (None, DEFAULT_DISK_IMAGE) else {
        "image": image, "kernel": DISK_KERNEL, "initrd": DISK_INITRD, "args": disk_cmdline(w.arch, bus)}
    # a nested workload without a disk of its own boots, on a cluster too, the busybox guest the local target
    # boots: its inner containers under runc, from an image the kubernetes backend builds and loads
    guest = image_dirs is not None and p.runtime is Runtime.NESTED and image == DEFAULT_DISK_IMAGE \
        and not w.vm.disk_size
    if guest:
        ref = images.guest_image_ref(plan.stack.name, w.name, _guest_digest(w, image_dirs or []))
        kernel_boot = {"image": ref, "kernel": DISK_KERNEL, "initrd": DISK_INITRD,
                       "args": f"{guest_cmdline(w.arch)} {GUEST_DHCP_ARG}"}
        image = None
    ready_port = readiness_port(w)
    return {
        "name": w.name, "namespace": namespace, "runtime": p.runtime,
        "labels": _labels(plan, w, p.runtime, w.tenant), "selector": _selector(plan, w),
        "names": replica_names(w.name, replicas),
        "run_strategy": "Always" if w.replicas > 0 else "Halted",
        "architecture": w.arch if p.emulated else None, "guest_arch": ARCHES[w.arch].uname,
        "machine": machine, "cores": w.vcpus, "cpu": w.resources.cpu, "memory": w.resources.memory,
        "memory_mib": w.resources.memory_bytes // 2**20,
        "node_selector": _node_selector(p), "ports": _vm_ports(w),
        "disk": {"image": image, "pvc": w.vm.disk_pvc, "size": w.vm.disk_size},
        "bus": bus, "nic_model": "e1000e" if windows else "virtio", "kernel_boot": kernel_boot,
        # a locally built image by its content-derived tag (loaded into kind's nodes): IfNotPresent is right
        "pull_policy": "IfNotPresent", "grace_seconds": VM_GRACE_SECONDS,
        # KubeVirt turns a TCP probe into the virt-launcher pod's, which its masquerade binding hands to the guest:
        # ready when the guest's own service answers
        "ready_port": ready_port if any(x.port == ready_port and x.protocol == "TCP" for x in _vm_port_list(w))
        else None,
        "windows": windows, "accelerated": p.needs_virtualization and not p.emulated, "guest": guest,
        "user_data": None if windows or guest else _cloud_config_text(tpl, plan, p),
    }


def _guest_digest(w: Workload, image_dirs: list[Path]) -> str:
    """What a nested workload's busybox guest runs, hashed (arch, env, inner containers with local images by their
    content tags): a change names a new guest image."""
    inner = [{"name": c.name, "image": images.content_ref(c.image, image_dirs) if c.image else c.image,
              "command": list(c.command or ()), "env": dict(c.env), "ports": [[x.port, x.protocol] for x in c.ports]}
             for c in w.containers]
    data = json.dumps({"arch": w.arch, "env": dict(w.env), "containers": inner}, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()


def _tenant_context(plan: Plan, tenant: str, namespace: str, placements: list[Placement],
                    prefix: str = "", reachable: list[tuple[Placement, list[dict[str, Any]]]] | None = None
                    ) -> dict[str, Any]:
    loose = any(r in pl.workload.requires for pl in placements for r in ("privileged", "host-devices",
                                                                         "host-network"))
    # KubeVirt's virt-launcher pods need more than the restricted level allows
    vms = any(pl.runtime in VM_RUNTIMES for pl in placements)
    cpu = mem = pods = storage = 0
    for pl in placements:
        # one extra replica per workload so a rolling update fits inside the quota
        n = pl.workload.replicas + 1
        cpu += (pl.workload.resources.cpu_millis + pl.overhead.cpu_millis) * n
        mem += (pl.workload.resources.memory_bytes + pl.overhead.memory_bytes) * n
        pods += n
        storage += sum(memory_bytes(v.size) for v in pl.workload.volumes) * max(pl.workload.replicas, 1)
    return {
        "tenant": tenant, "namespace": namespace, "stack": plan.stack.name,
        "labels": _labels(plan, tenant=tenant),
        "enforce": "privileged" if loose or vms else "restricted",
        "quota": {"cpu": cpu_quantity(cpu), "memory": memory_quantity(mem), "pods": pods,
                  "storage": memory_quantity(storage) if storage else None},
        "default": {"cpu": "250m", "memory": "256Mi", "ephemeral": EPHEMERAL_STORAGE},
        "exposed": [{"name": pl.workload.name, "selector": _selector(plan, pl.workload),
                     "ports": _policy_ports(pl, tenant, prefix)} for pl in placements],
        "peers": _egress_peers(plan, tenant, prefix, reachable),
    }


def _policy_ports(p: Placement, tenant: str, prefix: str) -> list[dict[str, Any]]:
    """The declared ports of a workload with who may connect: its own tenant always, the namespaces of the
    tenants in allowFrom, everyone when public (then `from` is left out)."""
    declared = {(x.port, x.protocol): x for x in list(p.workload.ports)
                + [x for c in _inner_containers(p.workload) for x in c.ports]} \
        if p.runtime in VM_RUNTIMES else {(x.port, x.protocol): x for x in p.workload.ports}
    return [{**port, "public": declared[(port["port"], port["protocol"])].public,
             "from": [f"{prefix}{t}" for t in declared[(port["port"], port["protocol"])].allow_from if t != tenant]}
            for port in (_vm_ports(p.workload) if p.runtime in VM_RUNTIMES else _ports(p.workload.ports))]


def _reachable(plan: Plan, prefix: str) -> list[tuple[Placement, list[dict[str, Any]]]]:
    """Each workload with the ports other tenants may reach (public or with allowFrom), when it has any."""
    out = []
    for p in plan.placements:
        ports = [x for x in _policy_ports(p, p.workload.tenant, prefix) if x["public"] or x["from"]]
        if ports:
            out.append((p, ports))
    return out


def _egress_peers(plan: Plan, tenant: str, prefix: str,
                  reachable: list[tuple[Placement, list[dict[str, Any]]]] | None = None) -> list[dict[str, Any]]:
    """The ports of other tenants' workloads that this tenant may reach (allowFrom names it, or public):
    each tenant's egress policy lets exactly those out, so both ends of the connection agree."""
    out = []
    for p, reach in (_reachable(plan, prefix) if reachable is None else reachable):
        if p.workload.tenant == tenant:
            continue
        ports = [x for x in reach if x["public"] or f"{prefix}{tenant}" in x["from"]]
        if ports:
            out.append({"name": p.workload.name, "namespace": f"{prefix}{p.workload.tenant}",
                        "selector": _selector(plan, p.workload), "ports": ports})
    return out


def runtime_class_objects(profile: Profile, tpl: Templates | None = None, stack: str | None = None
                          ) -> list[dict[str, Any]]:
    """The RuntimeClass sandboxed workloads use, with the profile's per-pod overhead (a cluster prerequisite)."""
    tpl = tpl or Templates()
    labels = object_labels(stack, runtime=Runtime.SANDBOXED.value) if stack else {LABEL_MANAGED: MANAGED_BY,
                                                                       LABEL_RUNTIME: Runtime.SANDBOXED.value}
    o = profile.overhead(Runtime.SANDBOXED)
    name, handler = RUNTIME_CLASSES[profile.sandbox_runtime_class]
    kata = profile.sandbox_runtime_class is SandboxClass.KATA
    return tpl.documents("kubernetes/runtimeclass.yaml.j2", name=name, handler=handler,
                         labels=labels, overhead={"cpu": cpu_quantity(o.cpu_millis),
                                                  "memory": memory_quantity(o.memory_bytes)},
                         # a Kata pod is a VM: only nodes with KVM; gVisor runs on any node that has the handler
                         node_selector={LABEL_VIRTUALIZATION: "true"} if kata else None)


# --- rendering -----------------------------------------------------------------------------------------

def _problems(docs: Iterable[dict[str, Any]], where: str, origins: dict[int, Origin]) -> list[str]:
    """A file's schema violations; `origins` (by id) has the skeleton each template output was read through."""
    problems = []
    for doc in docs:
        name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        problems += [f"{where}: {name}: {msg}" for msg in validate.object_problems(doc, origins.get(id(doc)))]
    return problems


def _refuse(problems: list[str]) -> None:
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise RenderError(f"rendered objects fail the Kubernetes {validate.KUBERNETES_VERSION}/KubeVirt "
                          f"schema: {shown}")


def _by_tenant(plan: Plan) -> dict[str, list[Placement]]:
    out: dict[str, list[Placement]] = {}
    for p in plan.placements:
        out.setdefault(p.workload.tenant, []).append(p)
    return out


class _Documents:
    """Template outputs read back, remembering the skeleton each object was read through (by id: the objects live
    as long as the render) so validation need not walk them."""

    def __init__(self, tpl: Templates):
        self.tpl, self.origins = tpl, {}
        self.user_data: list[tuple[str, str]] = []   # (workload, cloud-config) of each VM, checked at once

    def __call__(self, template: str, /, **context: Any) -> list[dict[str, Any]]:
        parsed = self.tpl.documents_with_origin(template, **context)
        self.origins.update((id(doc), origin) for doc, origin in parsed if origin is not None)
        return [doc for doc, _ in parsed]


def _workload_documents(documents: _Documents, plan: Plan, prefix: str,
                        placements: Iterable[Placement]) -> dict[str, list[dict[str, Any]]]:
    """Each placement's objects: its workload or VM, a PodDisruptionBudget, a Service."""
    workloads: dict[str, list[dict[str, Any]]] = {}
    image_dirs = images.image_dirs(plan.stack.file)
    for p in placements:
        ns = f"{prefix}{p.workload.tenant}"
        if p.runtime in VM_RUNTIMES:
            ctx = _vm_context(documents.tpl, plan, p, ns, image_dirs)
            docs = documents("kubevirt/virtualmachine.yaml.j2", vm=ctx)
            if ctx["user_data"] is not None:
                documents.user_data.append((p.workload.name, ctx["user_data"]))
        else:
            ctx = _workload_context(plan, p, ns, image_dirs)
            docs = documents("kubernetes/workload.yaml.j2", w=ctx)
            if p.workload.replicas >= 2:
                docs += documents("kubernetes/poddisruptionbudget.yaml.j2", name=p.workload.name, namespace=ns,
                                  labels=ctx["labels"], selector=ctx["selector"])
        if not docs:   # a user template that renders nothing would make apply prune the running workload
            name = "kubevirt/virtualmachine.yaml.j2" if p.runtime in VM_RUNTIMES else "kubernetes/workload.yaml.j2"
            raise RenderError(f"{documents.tpl.filename(name)}: rendered no object for workload {p.workload.name}")
        if ctx["ports"]:
            docs += documents("kubernetes/service.yaml.j2", name=p.workload.name, namespace=ns,
                              labels=ctx["labels"], selector=ctx["selector"], ports=ctx["ports"])
        workloads[p.workload.name] = docs
    return workloads


# placements from which the workloads are rendered in forked processes, one part per CPU (fewer: a worker's
# start and its cold caches cost more than it saves)
PARALLEL_FROM = 1000
_job: tuple[Templates, Plan, str] | None = None   # what the forked workers render (inherited, never pickled)


def _render_part(start: int, stop: int) -> tuple[Packed | None, list[str], HybridorchError | None]:
    """Worker: placements [start, stop) of the job, validated and dumped (their files' texts)."""
    assert _job is not None
    tpl, plan, prefix = _job
    documents = _Documents(tpl)
    try:
        workloads = _workload_documents(documents, plan, prefix, plan.placements[start:stop])
        _check_user_data(documents.user_data)
    except HybridorchError as err:
        return None, [], err
    paths = tuple(f"workloads/{name}.yaml" for name in workloads)
    problems = [m for path, docs in zip(paths, workloads.values()) for m in _problems(docs, path, documents.origins)]
    texts = tuple(dump_yaml(docs, origins=documents.origins) for docs in workloads.values())
    return Packed(paths, texts, marshal.dumps(list(workloads.values()))), problems, None


def _render_parts(tpl: Templates, plan: Plan, prefix: str,
                  meanwhile: Callable[[], None]) -> tuple[tuple[Packed, ...], list[str]]:
    """The workloads rendered in forked workers (proc.map_forked), in placement order; `meanwhile` here."""
    global _job
    n = len(plan.placements)
    cuts = [n * i // proc.workers() for i in range(proc.workers() + 1)]
    _job = (tpl, plan, prefix)
    try:
        results = proc.map_forked(_render_part, list(zip(cuts, cuts[1:])), meanwhile)
    finally:
        _job = None
    for _, _, err in results:
        if err is not None:
            raise err
    return tuple(part for part, _, _ in results if part is not None), [m for _, ms, _ in results for m in ms]


def _render_kubernetes(tpl: Templates, plan: Plan, prefix: str) -> Rendered:
    tenants = _by_tenant(plan)
    documents = _Documents(tpl)
    head: dict[str, Any] = {}

    def render_head() -> None:
        """Tenants' Namespaces and policies, the RuntimeClasses; one file per tenant carries its Namespace too,
        so kustomize users need nothing else."""
        reachable = _reachable(plan, prefix)   # once, not once per tenant
        contexts = {t: _tenant_context(plan, t, f"{prefix}{t}", ps, prefix, reachable) for t, ps in tenants.items()}
        namespaces = {t: documents("kubernetes/namespace.yaml.j2", **contexts[t]) for t in tenants}
        policies = {t: [d for name in ("networkpolicy", "limitrange", "resourcequota")
                        for d in documents(f"kubernetes/{name}.yaml.j2", **contexts[t])] for t in tenants}
        cluster = runtime_class_objects(plan.profile, tpl, plan.stack.name) \
            if plan.has_runtime(Runtime.SANDBOXED) else []
        head["groups"] = ([("cluster/runtimeclasses.yaml", cluster)] if cluster else []) \
            + [(f"tenants/{t}.yaml", namespaces[t] + policies[t]) for t in tenants]
        head["ordered"] = [d for t in tenants for d in namespaces[t]] + cluster \
            + [d for t in tenants for d in policies[t]]

    packed: tuple[Packed, ...] = ()
    if len(plan.placements) >= PARALLEL_FROM and proc.workers() > 1:
        packed, more = _render_parts(tpl, plan, prefix, render_head)
        groups, ordered = head["groups"], head["ordered"]
    else:
        render_head()
        workloads = _workload_documents(documents, plan, prefix, plan.placements)
        _check_user_data(documents.user_data)
        files = [(f"workloads/{name}.yaml", docs) for name, docs in workloads.items()]
        more = [m for path, docs in files for m in _problems(docs, path, documents.origins)]
        groups, ordered = head["groups"] + files, head["ordered"] + [d for _, docs in files for d in docs]
    _refuse([m for path, docs in head["groups"] for m in _problems(docs, path, documents.origins)] + more)
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": [path for path, _ in groups] + [path for part in packed for path in part.paths]}
    text = dump_yaml([kustomization]).removeprefix("---\n")
    return Rendered("kubernetes", plan.stack.name, tuple(ordered), (RenderedFile("kustomization.yaml", text),),
                    groups=tuple((path, tuple(docs)) for path, docs in groups), packed=packed,
                    origins=documents.origins)


def _render_local(tpl: Templates, plan: Plan, facts: LocalFacts) -> Rendered:
    """One domain (and its cloud-init) per VM replica: <workload>/ for replica 0, <workload>-<i>/ for the others
    (names validation keeps free). These files are exactly what the local backend defines and boots. A sandboxed
    placement has its own VM too when Docker has no gVisor/Kata runtime (or the policy's localSandbox says vm)."""
    files: list[RenderedFile] = []
    sandbox_vms = sandbox_in_vm(plan.profile.local_sandbox, facts.sandbox_runtime)
    assigned = assign_host_ports(plan.stack.workloads)   # the stack's host ports, containers' and VMs' alike
    domains: list[tuple[str, str]] = []   # (workload, domain XML) of every replica, checked at once below
    user_data: list[tuple[str, str]] = []
    for p in plan.placements:
        if p.runtime not in VM_RUNTIMES and not (p.runtime is Runtime.SANDBOXED and sandbox_vms):
            continue   # containers run from the plan directly (docker backend); nothing to write
        w = p.workload
        ctx = _vm_context(tpl, plan, p, namespace="")
        if ctx["user_data"] is not None:
            user_data.append((w.name, ctx["user_data"]))
        has_disk = _disk_image(w) not in (None, DEFAULT_DISK_IMAGE)
        forwards = workload_forwards(w, assigned)
        for i in range(max(w.replicas, 1)):
            d = domain_context(facts, ctx, stack=plan.stack.name, arch=w.arch, replica=i, has_disk=has_disk,
                               forwards=replica_forwards(forwards, i), emulated=p.emulated,
                               overhead_millis=p.overhead.cpu_millis)
            # domain/vm/stack/vm_dir/guest_dir/has_disk: the names user templates written before `d` still use
            xml = tpl.text("libvirt/domain.xml.j2", d=d, domain=d["name"], vm=ctx, stack=plan.stack.name,
                           vm_dir=vm_dir(facts, plan.stack.name, w.name, i), guest_dir=f"{facts.guests_dir}/{w.arch}",
                           has_disk=has_disk)
            domains.append((w.name, xml))
            where = replica_path(w.name, i)
            files.append(RenderedFile(f"{where}/domain.xml", xml))
            if ctx["user_data"] is not None:
                meta = tpl.documents("cloud-init/meta-data.yaml.j2", hostname=w.name,
                                     instance_id=f"hybridorch-{plan.stack.name}-{where}")
                files.append(RenderedFile(f"{where}/user-data", ctx["user_data"]))
                files.append(RenderedFile(f"{where}/meta-data", dump_yaml(meta).removeprefix("---\n")))
    _check_user_data(user_data)
    for (name, _), problem in zip(domains, validate.libvirt_problems([xml for _, xml in domains])):
        if problem:
            raise RenderError(f"{tpl.filename('libvirt/domain.xml.j2')}: domain XML of {name} is invalid: {problem}")
    return Rendered("local", plan.stack.name, (), tuple(files))


@lru_cache(maxsize=8)
def _templates(user_dir: str | None) -> Templates:
    # compiled templates are reused; Jinja's loader still notices edited files (auto_reload checks mtimes)
    return Templates(user_dir)


def default_cache_dir() -> str:
    return str(cache_root())


def render_plan(plan: Plan, target: str = "kubernetes", templates_dir: str | None = None,
                namespace_prefix: str = "", cache_dir: str | None = None, local: LocalFacts | None = None) -> Rendered:
    """Render and validate a plan; raises RenderError (and returns nothing) when any part is invalid.

    cache_dir only shapes the local target's file paths (VM disks and seeds under cache_dir/state/<stack>/);
    `local` gives the real facts of this machine (paths, KVM or TCG, QEMU binaries), as the local backend needs."""
    if target not in TARGETS:
        raise RenderError(f"unknown render target {target!r}: use {' or '.join(TARGETS)}")
    tpl = _templates(str(Path(templates_dir).resolve()) if templates_dir else None)
    if target == "kubernetes":
        return _render_kubernetes(tpl, plan, namespace_prefix)
    return _render_local(tpl, plan, local or LocalFacts.placeholder(cache_dir or default_cache_dir()))


__all__ = ["render_plan", "runtime_class_objects", "cpu_quantity", "memory_quantity", "TARGETS", "RUNTIME_CLASS",
           "RUNTIME_CLASSES"]
