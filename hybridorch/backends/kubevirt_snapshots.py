"""Snapshots of VMs on a cluster: KubeVirt VirtualMachineSnapshot / VirtualMachineRestore objects carrying the
stack's labels, one per VirtualMachine the workload renders to (the Kubernetes backend's snapshot side)."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from hybridorch.backends.base import Snapshot
from hybridorch.core.durations import parse_time
from hybridorch.core.labels import LABEL_STACK, LABEL_WORKLOAD, object_labels, replica_names
from hybridorch.errors import BackendError

if TYPE_CHECKING:
    from hybridorch.backends.kubernetes import KubernetesBackend
    from hybridorch.core.plan import Plan

SNAPSHOT_API = "snapshot.kubevirt.io/v1beta1"
SNAPSHOT_RESOURCE = "virtualmachinesnapshots.snapshot.kubevirt.io"
RESTORE_RESOURCE = "virtualmachinerestores.snapshot.kubevirt.io"


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


def check_crds(backend: KubernetesBackend) -> None:
    served = set(backend.kubectl("api-resources", "--api-group=snapshot.kubevirt.io", "-o", "name").stdout.split())
    if SNAPSHOT_RESOURCE not in served or RESTORE_RESOURCE not in served:
        raise BackendError(f"KubeVirt's snapshot CRDs are missing on {backend.where} ({SNAPSHOT_RESOURCE}, "
                           f"{RESTORE_RESOURCE}): install KubeVirt with its Snapshot feature gate")


def cluster_vms(plan: Plan, workload: str, namespace_prefix: str) -> tuple[str, list[str]]:
    """(namespace, VirtualMachine names) the kubevirt rendering gives a workload."""
    w = next(w for w in plan.stack.workloads if w.name == workload)
    replicas = max(w.replicas, 1)
    return f"{namespace_prefix}{w.tenant}", replica_names(w.name, replicas)


def _apply(backend: KubernetesBackend, docs: list[dict[str, Any]]) -> None:
    backend.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(d) for d in docs))


def _list(backend: KubernetesBackend, stack: str, workload: str, namespace: str) -> list[Snapshot]:
    items = backend.get_json(SNAPSHOT_RESOURCE, "-n", namespace, "-l",
                             f"{LABEL_STACK}={stack},{LABEL_WORKLOAD}={workload}")
    return [Snapshot(o["metadata"]["name"], f"{namespace}/{(o.get('spec') or {}).get('source', {}).get('name', '')}",
                     parse_time(o["metadata"].get("creationTimestamp")) or 0.0, None,
                     str((o.get("status") or {}).get("phase", ""))) for o in items]


def cluster_list(backend: KubernetesBackend, plan: Plan, workload: str) -> list[Snapshot]:
    check_crds(backend)
    ns, _ = cluster_vms(plan, workload, backend.namespace_prefix)
    return _list(backend, plan.stack.name, workload, ns)


def lacking(backend: KubernetesBackend) -> list[str]:
    """What a cluster lacks for KubeVirt to snapshot disk data: CDI (DataVolumes) and CSI volume snapshots."""
    served = set(backend.kubectl("api-resources", "-o", "name").stdout.split())
    out = []
    if "datavolumes.cdi.kubevirt.io" not in served:
        out.append("CDI (no DataVolumes)")
    if "volumesnapshotclasses.snapshot.storage.k8s.io" not in served:
        out.append("CSI volume snapshots (no VolumeSnapshot CRDs or snapshot controller)")
    elif not backend.get_json("volumesnapshotclasses.snapshot.storage.k8s.io"):
        out.append("a VolumeSnapshotClass (no CSI driver that snapshots)")
    return out


def check_snapshottable(backend: KubernetesBackend, namespace: str, vms: list[str]) -> None:
    """Refuse in one line where KubeVirt would take a snapshot holding no disk at all: it reports each volume's
    snapshot support on the VM, and a containerDisk (ephemeral: reset at every boot) or a PVC without CSI
    snapshots has none; such a "snapshot" restores the VM's spec only."""
    for vm in vms:
        found = backend.get_json("virtualmachines.kubevirt.io", "-n", namespace, "--field-selector",
                                 f"metadata.name={vm}")
        if not found:
            raise BackendError(f"VirtualMachine {namespace}/{vm} is not in {backend.where}: apply the stack first")
        volumes = (found[0].get("status") or {}).get("volumeSnapshotStatuses") or []
        if volumes and not any(v.get("enabled") for v in volumes):
            why = "; ".join(f"{v.get('name')}: {v.get('reason', 'not supported')}" for v in volumes)
            missing = lacking(backend)
            raise BackendError(
                f"VirtualMachine {namespace}/{vm} has no disk KubeVirt can snapshot ({why}): snapshots need the "
                "boot disk on a PVC (vm.disk.pvc, or vm.disk.size for a DataVolume) of a StorageClass with CSI "
                "snapshots" + (f"; the cluster lacks {' and '.join(missing)}" if missing else ""))


def cluster_create(backend: KubernetesBackend, plan: Plan, workload: str, name: str) -> list[Snapshot]:
    check_crds(backend)
    ns, vms = cluster_vms(plan, workload, backend.namespace_prefix)
    check_snapshottable(backend, ns, vms)
    _apply(backend, [snapshot_object(plan.stack.name, workload, vm, ns, name) for vm in vms])
    return [s for s in _list(backend, plan.stack.name, workload, ns) if s.name.startswith(name)]


def cluster_restore(backend: KubernetesBackend, plan: Plan, workload: str, name: str | None) -> list[Snapshot]:
    """Each VirtualMachine back to its newest snapshot named `name` (a replica's carries its VM's name after it),
    or its newest one; KubeVirt's restore controller does the rest."""
    check_crds(backend)
    ns, vms = cluster_vms(plan, workload, backend.namespace_prefix)
    found = sorted(_list(backend, plan.stack.name, workload, ns), key=lambda s: s.created)
    restored = []
    for vm in vms:
        mine = [s for s in found if s.vm == f"{ns}/{vm}" and (name is None or s.name.startswith(name))]
        if not mine:
            raise BackendError(f"VirtualMachine {ns}/{vm} has no snapshot" + (f" {name}" if name else ""))
        restored.append(mine[-1])
    _apply(backend, [restore_object(plan.stack.name, workload, s.vm.split("/", 1)[1], ns, s.name) for s in restored])
    return restored


def cluster_delete(backend: KubernetesBackend, doomed: list[Snapshot]) -> None:
    check_crds(backend)
    for s in doomed:
        backend.kubectl("delete", SNAPSHOT_RESOURCE, s.name, "-n", s.vm.split("/", 1)[0], "--ignore-not-found")
