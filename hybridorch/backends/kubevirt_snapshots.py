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


def cluster_create(backend: KubernetesBackend, plan: Plan, workload: str, name: str) -> list[Snapshot]:
    check_crds(backend)
    ns, vms = cluster_vms(plan, workload, backend.namespace_prefix)
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
