"""The objects hybridorch renders for Kubernetes as kubectl names them (kind, resource, scope, creation order),
and the progress events that report them by workload."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from hybridorch.core.labels import LABEL_WORKLOAD
from hybridorch.backends.events import Event, EventKind

# Every kind hybridorch renders (resource.group as kubectl names them), in the order objects are created;
# prune and delete look only at these, so objects of other kinds carrying our labels are never touched.
KINDS: tuple[tuple[str, str], ...] = (
    ("Namespace", "namespaces"),
    ("RuntimeClass", "runtimeclasses.node.k8s.io"),
    ("NetworkPolicy", "networkpolicies.networking.k8s.io"),
    ("LimitRange", "limitranges"),
    ("ResourceQuota", "resourcequotas"),
    ("ServiceAccount", "serviceaccounts"),
    ("ConfigMap", "configmaps"),
    ("Secret", "secrets"),
    ("PersistentVolumeClaim", "persistentvolumeclaims"),
    ("Service", "services"),
    ("Deployment", "deployments.apps"),
    ("StatefulSet", "statefulsets.apps"),
    ("PodDisruptionBudget", "poddisruptionbudgets.policy"),
    ("DataVolume", "datavolumes.cdi.kubevirt.io"),
    ("VirtualMachine", "virtualmachines.kubevirt.io"),
)
KIND_ORDER = {kind: i for i, (kind, _) in enumerate(KINDS)}
RESOURCE_OF = dict(KINDS)
CLUSTER_SCOPED = {"Namespace", "RuntimeClass"}
WORKLOAD_KINDS = ("deployments.apps", "statefulsets.apps", "virtualmachines.kubevirt.io")
# Kinds that hold data: they outlive `delete` (and prune) unless --delete-data is given
DATA_KINDS = frozenset({"PersistentVolumeClaim", "DataVolume"})
# Resources that are records of what happened, not objects anybody made
IGNORED_RESOURCES = frozenset({"events", "events.events.k8s.io"})


@dataclass(frozen=True)
class ObjectRef:
    """One object as kubectl names it: kind, namespace (empty when cluster-scoped) and name."""

    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, doc: dict[str, Any]) -> ObjectRef:
        meta = doc.get("metadata") or {}
        kind = doc.get("kind", "")
        return cls(kind, "" if kind in CLUSTER_SCOPED else meta.get("namespace", "") or "default",
                   meta.get("name", ""))

    @property
    def resource(self) -> str:
        return RESOURCE_OF.get(self.kind, self.kind.lower())

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


def applied_events(docs: Iterable[dict[str, Any]], kind: EventKind = EventKind.APPLIED) -> list[Event]:
    """One `applied` event per workload, naming the kinds of its objects the API server took (or another
    `kind` of event about them)."""
    kinds: dict[str, list[str]] = {}
    for d in docs:
        workload = ((d.get("metadata") or {}).get("labels") or {}).get(LABEL_WORKLOAD)
        if workload:
            kinds.setdefault(workload, []).append(d.get("kind", ""))
    return [Event(w, kind, ", ".join(dict.fromkeys(ks))) for w, ks in kinds.items()]


def removed_events(objects: Iterable[dict[str, Any]], removed: Iterable[str]) -> list[Event]:
    """One `removed` event per workload whose objects (among `objects`) `delete` removed, naming their kinds."""
    gone = set(removed)
    return applied_events((o for o in objects if str(ObjectRef.of(o)) in gone), EventKind.REMOVED)
