"""VM snapshots with retention (`hybridorch snapshot create|list|restore|prune STACK WORKLOAD [NAME]`).

Local VMs: internal qcow2 snapshots of each replica's overlay, taken and reverted by libvirt (disk and, for a
running domain, memory), so a restore brings the guest back exactly as it was, already running. Their list comes
from the overlay itself (`qemu-img info -U`), the single source of truth. On a cluster: KubeVirt
VirtualMachineSnapshot / VirtualMachineRestore objects with the stack's labels.

The naming, the retention selection and the rendered objects are pure; the engine calls are at the end.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybridorch.errors import BackendError
from hybridorch.core.labels import LABEL_STACK, LABEL_WORKLOAD, object_labels

if TYPE_CHECKING:
    from hybridorch.backends.kubernetes import KubernetesBackend
    from hybridorch.core.plan import Plan
    from hybridorch.core.policy import Profile
    from hybridorch.core.spec import Workload

DEFAULT_RETAIN = 3          # a workload without `snapshots:` keeps its 3 newest (maxAge: the policy's maxSnapshotAge)
SNAPSHOT_API = "snapshot.kubevirt.io/v1beta1"
SNAPSHOT_RESOURCE = "virtualmachinesnapshots.snapshot.kubevirt.io"
RESTORE_RESOURCE = "virtualmachinerestores.snapshot.kubevirt.io"
# a DNS label minus the room the timestamp suffix takes: valid as a Kubernetes name, a libvirt and a qcow2 tag
PREFIX = re.compile(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?")
_STAMP = "%Y%m%d-%H%M%S"


@dataclass(frozen=True)
class Snapshot:
    name: str
    vm: str                   # the libvirt domain, or NAMESPACE/VM on a cluster
    created: float            # epoch seconds
    size: int | None = None   # bytes of saved VM state (local); None where the engine does not say
    state: str = ""           # local: running | shutoff (what a restore brings back); cluster: the phase

    def to_dict(self, now: float) -> dict[str, Any]:
        return {"name": self.name, "vm": self.vm, "created": self.created, "ageSeconds": round(now - self.created),
                "size": self.size, "state": self.state}


@dataclass(frozen=True)
class Retention:
    retain: int
    max_age: int | None        # seconds; None keeps by count only


def retention_for(w: "Workload", profile: "Profile") -> Retention:
    """The workload's `snapshots: {retain, maxAge}`; absent fields fall back to DEFAULT_RETAIN and the policy's
    maxSnapshotAge (the age the audit accepts, so `prune` leaves nothing for HYB015 to report)."""
    from hybridorch.core.spec import parse_duration

    retain = w.snapshots.retain if w.snapshots else DEFAULT_RETAIN
    max_age = (w.snapshots.max_age if w.snapshots and w.snapshots.max_age else None) or profile.max_snapshot_age
    return Retention(retain, parse_duration(max_age) if max_age else None)


def snapshot_name(prefix: str | None, now: float) -> str:
    """PREFIX-YYYYMMDD-HHMMSS (UTC): names sort by time and say when they were taken."""
    return f"{prefix or 'snap'}-{time.strftime(_STAMP, time.gmtime(now))}"


def check_prefix(prefix: str) -> str | None:
    """Why `prefix` cannot start a snapshot name, or None."""
    if PREFIX.fullmatch(prefix):
        return None
    return f"{prefix!r} is not a snapshot name: lower-case letters, digits and '-', at most 32 characters"


def select_prune(snaps: list[Snapshot], retention: Retention, now: float) -> list[Snapshot]:
    """What `prune` removes, per VM: everything older than maxAge, and beyond the `retain` newest of the rest."""
    out = []
    for vm in sorted({s.vm for s in snaps}):
        mine = sorted((s for s in snaps if s.vm == vm), key=lambda s: (s.created, s.name), reverse=True)
        young = [s for s in mine if retention.max_age is None or now - s.created <= retention.max_age]
        keep = {s.name for s in young[:retention.retain]}
        out += [s for s in mine if s.name not in keep]
    return out


def rollback_warning(snap: Snapshot, now: float) -> str:
    from hybridorch.ops.audit import human_age

    return (f"warning: {snap.vm} is rolled back to {snap.name}, taken {human_age(max(now - snap.created, 0))} ago: "
            "patches, updates and data written since then are gone (apply the guest's updates again)")


def snapshot_object(stack: str, workload: str, vm: str, namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": SNAPSHOT_API, "kind": "VirtualMachineSnapshot",
            "metadata": {"name": f"{name}-{vm}" if vm != workload else name, "namespace": namespace,
                         "labels": object_labels(stack, workload)},
            "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": vm}}}


def restore_object(stack: str, workload: str, vm: str, namespace: str, snapshot: str) -> dict[str, Any]:
    return {"apiVersion": SNAPSHOT_API, "kind": "VirtualMachineRestore",
            "metadata": {"name": f"restore-{snapshot}"[:63].rstrip("-"), "namespace": namespace,
                         "labels": object_labels(stack, workload)},
            "spec": {"target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": vm},
                     "virtualMachineSnapshotName": snapshot}}


# --- local: libvirt domains and their overlays ---------------------------------------------------------------

def _records(overlay: Path) -> Path:
    """Where libvirt's description of each snapshot is kept: beside the overlay, so `down` removes it with it."""
    return overlay.parent / "snapshots"


def local_vms(stack: str, workload: str) -> list[tuple[str, Path]]:
    """(domain, overlay) of every replica of the workload that has a disk of its own."""
    from hybridorch.vm import libvirt
    from hybridorch.render.domain import LABEL_REPLICA, replica_dir
    from hybridorch.vm.host import state_root

    libvirt.check_daemon()
    doms = libvirt.domains(**{LABEL_STACK: stack, LABEL_WORKLOAD: workload})
    if not doms:
        raise BackendError(f"no VM of workload {workload} in stack {stack} on this machine: `hybridorch up` it first")
    out = []
    for d in sorted(doms, key=lambda d: int(d.labels.get(LABEL_REPLICA, "0") or 0)):
        overlay = state_root() / stack / replica_dir(workload, int(d.labels.get(LABEL_REPLICA, "0") or 0)) / "disk.qcow2"
        if not overlay.exists():
            raise BackendError(f"VM {d.name} boots the busybox guest from an initramfs: it has no disk to snapshot "
                               "(give the workload vm.disk.image)")
        out.append((d.name, overlay))
    return out


def _overlay_snapshots(domain: str, overlay: Path) -> list[Snapshot]:
    from hybridorch import proc

    info = proc.run(["qemu-img", "info", "-U", "--output=json", str(overlay)], what=f"snapshots of {domain}",
                    missing="apt-get install qemu-utils").stdout
    records = _records(overlay)
    out = []
    for s in json.loads(info).get("snapshots", []):
        record = records / f"{s['name']}.xml"
        state = m.group(1) if record.exists() and (m := re.search(r"<state>(\w+)</state>", record.read_text())) else ""
        out.append(Snapshot(s["name"], domain, s["date-sec"] + s.get("date-nsec", 0) / 1e9, s.get("vm-state-size"),
                            state))
    return out


def local_list(stack: str, workload: str) -> list[Snapshot]:
    return [s for dom, overlay in local_vms(stack, workload) for s in _overlay_snapshots(dom, overlay)]


def local_create(stack: str, workload: str, name: str) -> list[Snapshot]:
    from hybridorch.vm import libvirt

    vms = local_vms(stack, workload)
    for dom, overlay in vms:
        if any(s.name == name for s in _overlay_snapshots(dom, overlay)):
            raise BackendError(f"VM {dom} already has a snapshot named {name}")
    made = []
    for dom, overlay in vms:
        records = _records(overlay)
        records.mkdir(exist_ok=True)
        libvirt.snapshot_create(dom, name, records / f"{name}.xml")
        made += [s for s in _overlay_snapshots(dom, overlay) if s.name == name]
    return made


def _record(dom: str, overlay: Path, name: str) -> Path:
    record = _records(overlay) / f"{name}.xml"
    if not record.exists():
        raise BackendError(f"snapshot {name} of {dom} was not taken by hybridorch (no {record}): use virsh")
    return record


def local_restore(stack: str, workload: str, name: str | None) -> list[Snapshot]:
    """Roll every replica back to `name` (default: the newest snapshot); a replica reverted to a snapshot taken
    while it was shut off is started again."""
    from hybridorch.vm import libvirt

    plan = []
    for dom, overlay in local_vms(stack, workload):
        snaps = sorted(_overlay_snapshots(dom, overlay), key=lambda s: s.created)
        snap = next((s for s in snaps if s.name == name), None) if name else (snaps[-1] if snaps else None)
        if snap is None:
            raise BackendError(f"VM {dom} has no snapshot {name}" if name else f"VM {dom} has no snapshot")
        plan.append((dom, overlay, snap))
    for dom, overlay, snap in plan:
        libvirt.snapshot_revert(dom, snap.name, _record(dom, overlay, snap.name))
        if not libvirt.is_running(dom):
            libvirt.start(dom)
        # the revert ran a new QEMU: the backend knows its VM by the pid it keeps beside the overlay (status, up)
        new = libvirt.get(dom)
        if new is not None and new.pid and (overlay.parent / "qemu.pid").exists():
            (overlay.parent / "qemu.pid").write_text(f"{new.pid}\n")
    return [snap for _, _, snap in plan]


def local_delete(stack: str, workload: str, doomed: list[Snapshot]) -> None:
    from hybridorch.vm import libvirt

    overlays = dict(local_vms(stack, workload))
    for s in doomed:
        libvirt.snapshot_delete(s.vm, s.name, _record(s.vm, overlays[s.vm], s.name))
        _record(s.vm, overlays[s.vm], s.name).unlink(missing_ok=True)


# --- kubernetes: KubeVirt snapshot objects -------------------------------------------------------------------

def check_crds(backend: "KubernetesBackend") -> None:
    served = set(backend.kubectl("api-resources", "--api-group=snapshot.kubevirt.io", "-o", "name").stdout.split())
    if SNAPSHOT_RESOURCE not in served or RESTORE_RESOURCE not in served:
        raise BackendError(f"KubeVirt's snapshot CRDs are missing on {backend.where} ({SNAPSHOT_RESOURCE}, "
                           f"{RESTORE_RESOURCE}): install KubeVirt with its Snapshot feature gate")


def cluster_vms(plan: "Plan", workload: str, namespace_prefix: str) -> tuple[str, list[str]]:
    """(namespace, VirtualMachine names) the kubevirt rendering gives a workload."""
    w = next(w for w in plan.stack.workloads if w.name == workload)
    replicas = max(w.replicas, 1)
    return f"{namespace_prefix}{w.tenant}", [w.name] if replicas == 1 else [f"{w.name}-{i}" for i in range(replicas)]


def apply_objects(backend: "KubernetesBackend", docs: list[dict[str, Any]]) -> None:
    backend.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(d) for d in docs))


def cluster_list(backend: "KubernetesBackend", stack: str, workload: str, namespace: str) -> list[Snapshot]:
    from hybridorch.ops.audit import parse_time

    items = backend.get_json(SNAPSHOT_RESOURCE, "-n", namespace, "-l",
                             f"{LABEL_STACK}={stack},{LABEL_WORKLOAD}={workload}")
    return [Snapshot(o["metadata"]["name"], f"{namespace}/{(o.get('spec') or {}).get('source', {}).get('name', '')}",
                     parse_time(o["metadata"].get("creationTimestamp")) or 0.0, None,
                     str((o.get("status") or {}).get("phase", ""))) for o in items]
