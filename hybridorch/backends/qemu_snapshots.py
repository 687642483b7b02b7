"""Snapshots of local VMs: internal qcow2 snapshots of each replica's overlay, taken and reverted by libvirt (disk
and, for a running domain, memory), listed from the overlay itself (`qemu-img info -U`), the single source of truth."""
from __future__ import annotations

import json
import re
from pathlib import Path

from hybridorch import proc
from hybridorch.backends.base import Snapshot
from hybridorch.core.labels import LABEL_STACK, LABEL_WORKLOAD
from hybridorch.errors import BackendError
from hybridorch.core.labels import LABEL_REPLICA, replica_dir
from hybridorch.vm import libvirt
from hybridorch.vm.host import state_root


def _records(overlay: Path) -> Path:
    """Where libvirt's description of each snapshot is kept: beside the overlay, so `down` removes it with it."""
    return overlay.parent / "snapshots"


def local_vms(stack: str, workload: str) -> list[tuple[str, Path]]:
    """(domain, overlay) of every replica of the workload that has a disk of its own."""
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
    overlays = dict(local_vms(stack, workload))
    for s in doomed:
        libvirt.snapshot_delete(s.vm, s.name, _record(s.vm, overlays[s.vm], s.name))
        _record(s.vm, overlays[s.vm], s.name).unlink(missing_ok=True)
