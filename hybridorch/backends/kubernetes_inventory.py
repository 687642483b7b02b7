"""What hybridorch made on a cluster, found by its labels: the workload objects `ps` lists and `gc` removes, and
the objects (and VM snapshots) of one stack the live audit reads (the Kubernetes backend's inventory side)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hybridorch.backends.base import LiveFacts, Managed
from hybridorch.backends.kubevirt_snapshots import SNAPSHOT_RESOURCE
from hybridorch.core.durations import parse_time
from hybridorch.core.runtime import runtime_of
from hybridorch.core.labels import (LABEL_MANAGED, LABEL_OWNER, LABEL_RUNTIME, LABEL_STACK, LABEL_TTL, LABEL_WORKLOAD,
                                    MANAGED_BY)

if TYPE_CHECKING:
    from hybridorch.backends.kubernetes import KubernetesBackend

# the objects that run a workload (what `ps` lists); their Services, claims and namespaces follow them
WORKLOAD_RESOURCES = ("deployments.apps", "statefulsets.apps", "virtualmachines.kubevirt.io")
SOC_JOBS = "jobs.batch"   # soc-test boards (kube_soc.py): every cluster serves Jobs


def managed_workloads(backend: KubernetesBackend) -> list[Managed]:
    """Every Deployment, StatefulSet, VirtualMachine and soc-test Job carrying hybridorch's label, in every
    namespace."""
    resources = [r for r in WORKLOAD_RESOURCES if r in backend.available_resources()] + [SOC_JOBS]
    items = backend.get_json(",".join(resources), "--all-namespaces", "-l", f"{LABEL_MANAGED}={MANAGED_BY}")
    out = []
    for o in items:
        meta = o.get("metadata") or {}
        labels = meta.get("labels") or {}
        out.append(Managed("kubernetes", str(o.get("kind")), meta.get("name", ""), meta.get("namespace", ""),
                           labels.get(LABEL_STACK, ""), labels.get(LABEL_WORKLOAD, ""),
                           runtime_of(labels.get(LABEL_RUNTIME)), labels.get(LABEL_OWNER), labels.get(LABEL_TTL),
                           parse_time(meta.get("creationTimestamp"))))
    return out


def service_selector(m: Managed) -> str:
    """The Services of one workload object (gc removes them with it)."""
    return f"{LABEL_MANAGED}={MANAGED_BY},{LABEL_STACK}={m.stack},{LABEL_WORKLOAD}={m.workload}"


def live_objects(backend: KubernetesBackend, stack: str) -> LiveFacts:
    """The stack's objects, then the KubeVirt snapshots of its VMs: snapshots are made by people or tools other
    than apply, so they are matched by the VM they copy, not by labels."""
    objects: list[dict[str, Any]] = backend.owned_objects(stack)
    served = set(backend.kubectl("api-resources", "-o", "name").stdout.split())
    if SNAPSHOT_RESOURCE in served:
        vms = {(o["metadata"].get("namespace"), o["metadata"].get("name")) for o in objects
               if o.get("kind") == "VirtualMachine"}
        objects += [s for s in backend.get_json(SNAPSHOT_RESOURCE, "--all-namespaces")
                    if (s["metadata"].get("namespace"), (s.get("spec") or {}).get("source", {}).get("name")) in vms]
    return LiveFacts(objects=tuple(objects))
