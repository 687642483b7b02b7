"""`ps` and `gc`: everything hybridorch made, across stacks, found by its labels (Docker, Kubernetes) or state
records (local QEMU VMs), with age, owner and ttl; and removal of what outlived its ttl, data kept.

Runtimes are reached only through the existing backend classes (their Docker client, kubectl and state dir).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from hybridorch.ops.audit import human_age, parse_time
from hybridorch.errors import BackendError
from hybridorch.core.labels import (LABEL_MANAGED, LABEL_OWNER, LABEL_RUNTIME, LABEL_STACK, LABEL_TTL, LABEL_WORKLOAD,
                     MANAGED_BY)
from hybridorch.core.spec import parse_duration

TARGETS = ("local", "kubernetes", "all")
K8S_WORKLOADS = ("deployments.apps", "statefulsets.apps", "virtualmachines.kubevirt.io")
DURATION = r"([0-9]+[smhdw])+"


@dataclass(frozen=True)
class Managed:
    """One thing hybridorch made that runs a workload: a container, a local VM or a cluster workload object."""

    target: str                 # local | kubernetes
    kind: str                   # container | vm | Deployment | StatefulSet | VirtualMachine
    name: str
    namespace: str
    stack: str
    workload: str
    runtime: str
    owner: str | None
    ttl: str | None
    created: float | None       # start time (containers, VMs) or creationTimestamp

    def age(self, now: float) -> float | None:
        return None if self.created is None else max(0.0, now - self.created)

    def expired(self, now: float) -> bool:
        age = self.age(now)
        return bool(self.ttl and age is not None and re.fullmatch(DURATION, self.ttl)
                    and age > parse_duration(self.ttl))

    def to_dict(self, now: float) -> dict[str, Any]:
        age = self.age(now)
        return {"target": self.target, "kind": self.kind, "name": self.name, "namespace": self.namespace,
                "stack": self.stack, "workload": self.workload, "runtime": self.runtime, "owner": self.owner,
                "ttl": self.ttl, "ageSeconds": None if age is None else round(age, 1),
                "expired": self.expired(now)}


def _targets(target: str) -> tuple[str, ...]:
    if target not in TARGETS:
        raise BackendError(f"unknown target {target!r}: use {', '.join(TARGETS)}")
    return ("local", "kubernetes") if target == "all" else (target,)


def inventory(target: str = "local", *, context: str | None = None,
              skipped: list[str] | None = None) -> list[Managed]:
    """Everything hybridorch made on the target(s), whatever stack file it came from.

    With target "all", a side that cannot be reached (no Docker engine, no cluster configured) is left out and
    named in `skipped`; a single named target raises instead."""
    out: list[Managed] = []
    for t in _targets(target):
        try:
            out += _local() if t == "local" else _kubernetes(context)
        except BackendError as err:
            if target != "all" or skipped is None:
                raise
            skipped.append(f"{t}: {err}")
    return sorted(out, key=lambda m: (m.target, m.stack, m.workload, m.name))


def _local() -> list[Managed]:
    from hybridorch.backends.docker import DockerBackend
    from hybridorch.vm.host import running_vm_states

    client = DockerBackend().client
    out = []
    try:
        containers = client.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}={MANAGED_BY}"},
                                            ignore_removed=True)
    except Exception as err:  # noqa: BLE001 - the SDK's errors, turned into ours at this boundary
        raise BackendError(f"listing hybridorch's containers: {err}") from err
    for c in containers:
        labels = c.labels or {}
        state = c.attrs.get("State") or {}
        started = parse_time(state.get("StartedAt")) if state.get("Running") else None
        out.append(Managed("local", "container", c.name, "", labels.get(LABEL_STACK, ""),
                           labels.get(LABEL_WORKLOAD, ""), labels.get(LABEL_RUNTIME, ""), labels.get(LABEL_OWNER),
                           labels.get(LABEL_TTL), started or parse_time(c.attrs.get("Created"))))
    for workdir, st in running_vm_states():
        # owner and ttl as the backend recorded them beside the VM (they are also labels in the domain's metadata)
        out.append(Managed("local", "vm", workdir.name, "", str(st.get("stack", "")),
                           str(st.get("workload", "")), str(st.get("runtime", "vm")), st.get("owner"), st.get("ttl"),
                           st.get("started")))
    return out


def _kubernetes(context: str | None) -> list[Managed]:
    from hybridorch.backends.kubernetes import KubernetesBackend

    backend = KubernetesBackend(context=context)
    served = set(backend.kubectl("api-resources", "-o", "name").stdout.split())
    resources = [r for r in K8S_WORKLOADS if r in served]
    items = backend.get_json(",".join(resources), "--all-namespaces", "-l", f"{LABEL_MANAGED}={MANAGED_BY}")
    out = []
    for o in items:
        meta = o.get("metadata") or {}
        labels = meta.get("labels") or {}
        out.append(Managed("kubernetes", str(o.get("kind")), meta.get("name", ""), meta.get("namespace", ""),
                           labels.get(LABEL_STACK, ""), labels.get(LABEL_WORKLOAD, ""), labels.get(LABEL_RUNTIME, ""),
                           labels.get(LABEL_OWNER), labels.get(LABEL_TTL), parse_time(meta.get("creationTimestamp"))))
    return out


def ps_table(items: list[Managed], now: float | None = None) -> str:
    now = time.time() if now is None else now
    if not items:
        return "nothing made by hybridorch"
    rows = [("TARGET", "STACK", "WORKLOAD", "KIND", "NAME", "RUNTIME", "AGE", "OWNER", "TTL")]
    for m in items:
        age = m.age(now)
        ttl = (m.ttl or "-") + (" (expired)" if m.expired(now) else "")
        rows.append((m.target, m.stack, m.workload, m.kind, (f"{m.namespace}/" if m.namespace else "") + m.name,
                     m.runtime, "-" if age is None else human_age(age), m.owner or "-", ttl))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def gc(target: str = "local", *, dry_run: bool = False, context: str | None = None, now: float | None = None,
       skipped: list[str] | None = None) -> tuple[list[Managed], list[str]]:
    """Remove what is past its ttl, only hybridorch's, keeping data as `down`/`delete` keep it.

    Returns the expired items and what was removed (nothing with dry_run)."""
    now = time.time() if now is None else now
    expired = [m for m in inventory(target, context=context, skipped=skipped) if m.expired(now)]
    if dry_run or not expired:
        return expired, []
    removed: list[str] = []
    local = [m for m in expired if m.target == "local"]
    if local:
        removed += _remove_containers(local) + _remove_vms(local)
    cluster = [m for m in expired if m.target == "kubernetes"]
    if cluster:
        removed += _remove_cluster_workloads(cluster, context)
    return expired, removed


def _remove_vms(items: list[Managed]) -> list[str]:
    """Expired local VMs, one replica at a time through the QEMU backend (domain and state dir, as `down`)."""
    from hybridorch.backends.qemu import QemuBackend
    from hybridorch.vm.host import state_root

    return [f"vm {m.stack}/{m.name}" for m in items
            if m.kind == "vm" and QemuBackend.remove_vm(state_root() / m.stack / m.name)]


def _remove_containers(items: list[Managed]) -> list[str]:
    """Containers; named volumes are separate objects and stay, as with `down`."""
    from hybridorch.backends.docker import DockerBackend

    client = DockerBackend().client
    removed = []
    for m in items:
        if m.kind != "container":
            continue
        try:
            c = client.containers.get(m.name)
            if (c.labels or {}).get(LABEL_MANAGED) != MANAGED_BY:
                continue   # the name was reused by something that is not ours
            c.remove(force=True, v=False)
            removed.append(f"container {m.name}")
        except Exception as err:  # noqa: BLE001 - gone meanwhile is fine; anything else is reported
            if "No such container" not in str(err) and "404" not in str(err):
                raise BackendError(f"removing container {m.name}: {err}") from err
    return removed


def _remove_cluster_workloads(items: list[Managed], context: str | None) -> list[str]:
    """The expired workload objects and their Services, through the backend's own removal, which cuts claims
    and DataVolumes loose from their owners first so the data stays."""
    from hybridorch.backends.kubernetes import KubernetesBackend, ObjectRef

    backend = KubernetesBackend(context=context)
    removed: list[str] = []
    for stack in sorted({m.stack for m in items}):
        mine = [m for m in items if m.stack == stack]
        refs = [ObjectRef(m.kind, m.namespace, m.name) for m in mine]
        for m in mine:
            selector = f"{LABEL_MANAGED}={MANAGED_BY},{LABEL_STACK}={stack},{LABEL_WORKLOAD}={m.workload}"
            refs += [ObjectRef.of(s) for s in backend.get_json("services", "-n", m.namespace, "-l", selector)]
        removal = backend.remove_objects(stack, list(dict.fromkeys(refs)), delete_data=False)
        removed += list(removal.removed) + [str(k) for k in removal.kept]
    return removed
