"""VM snapshots with retention (`hybridorch snapshot create|list|restore|prune STACK WORKLOAD [NAME]`): naming,
which snapshots retention removes, and the rollback warning; the engines act through the Backend snapshot methods.

Local VMs keep internal qcow2 snapshots of each replica's overlay (a restore brings the guest back exactly as it
was, already running); a cluster keeps KubeVirt VirtualMachineSnapshot objects with the stack's labels.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hybridorch.backends.base import Snapshot
from hybridorch.core.durations import human_age, parse_duration
from hybridorch.core.text import table
from hybridorch.errors import BackendError

if TYPE_CHECKING:
    from hybridorch.core.policy import Profile
    from hybridorch.core.spec import Workload

__all__ = ["Snapshot", "Retention", "retention_for", "snapshot_name", "check_prefix", "select_prune",
           "rollback_warning", "snapshot_table"]   # Snapshot: the engine interface's record

DEFAULT_RETAIN = 3          # a workload without `snapshots:` keeps its 3 newest (maxAge: the policy's maxSnapshotAge)
# a DNS label minus the room the timestamp suffix takes: valid as a Kubernetes name, a libvirt and a qcow2 tag
PREFIX = re.compile(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?")
_STAMP = "%Y%m%d-%H%M%S"


@dataclass(frozen=True)
class Retention:
    retain: int
    max_age: int | None        # seconds; None keeps by count only


def retention_for(w: "Workload", profile: "Profile") -> Retention:
    """The workload's `snapshots: {retain, maxAge}`; absent fields fall back to DEFAULT_RETAIN and the policy's
    maxSnapshotAge (the age the audit accepts, so `prune` leaves nothing for HYB015 to report)."""
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


def select_doomed(found: list[Snapshot], w: "Workload", profile: "Profile", name: str | None,
                  now: float) -> list[Snapshot]:
    """What `prune` removes: exactly the snapshots named `name`, or what the workload's retention no longer keeps."""
    if name is None:
        return select_prune(found, retention_for(w, profile), now)
    doomed = [s for s in found if s.name == name]
    if not doomed:
        raise BackendError(f"workload {w.name} has no snapshot {name}")
    return doomed


def rollback_warning(snap: Snapshot, now: float) -> str:
    return (f"warning: {snap.vm} is rolled back to {snap.name}, taken {human_age(max(now - snap.created, 0))} ago: "
            "patches, updates and data written since then are gone (apply the guest's updates again)")


def snapshot_table(snaps: list[Snapshot], now: float) -> str:
    """`snapshot list` as a table: name, VM, age, saved state size and state."""
    rows = [("NAME", "VM", "AGE", "SIZE", "STATE")] + [
        (s.name, s.vm, human_age(max(now - s.created, 0)),
         f"{s.size / 2**20:.1f}MiB" if s.size is not None else "-", s.state) for s in snaps]
    return "\n".join(table(rows))
