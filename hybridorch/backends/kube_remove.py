"""How the kubernetes backend removes objects: deleted, namespaces last, and waited for; like Helm it keeps a
namespace holding objects it did not make, and data (claims, DataVolumes, cut loose first) without --delete-data."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Iterable

from hybridorch import proc
from hybridorch.errors import BackendError
from hybridorch.core.labels import LABEL_MANAGED, LABEL_STACK, MANAGED_BY
from hybridorch.backends import kubernetes_inventory
from hybridorch.backends.base import Kept, Managed, Removal
from hybridorch.backends.kube_api import explain_kubectl_error
from hybridorch.backends.kube_objects import DATA_KINDS, KIND_ORDER, ObjectRef, removed_events

if TYPE_CHECKING:
    from hybridorch.core.plan import Plan
    from hybridorch.backends.kubernetes import KubernetesBackend

DATA_KEPT = "data (kept without --delete-data)"
# Objects Kubernetes makes in every namespace by itself; they never keep a namespace alive
AUTOMATIC = frozenset({("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")})


def down(backend: KubernetesBackend, plan: Plan, *, delete_data: bool = False) -> Removal:
    """Delete the stack's objects. Like Helm, a namespace that holds objects hybridorch did not make is kept
    (and named with what kept it); claims and DataVolumes are kept unless `delete_data`, and with them
    their namespace."""
    stack = plan.stack.name
    owned = backend.owned_objects(stack)
    refs = [ObjectRef.of(o) for o in owned]
    # a shared RuntimeClass carries the labels of whichever stack applied it last, so the last stack to go
    # must also take the ones labelled for a stack that is already gone (unshared keeps those still in use)
    if "runtimeclasses.node.k8s.io" in backend.available_resources():
        for o in backend.get_json("runtimeclasses.node.k8s.io", "-l", f"{LABEL_MANAGED}={MANAGED_BY}"):
            ref = ObjectRef.of(o)
            if ref not in refs:
                refs.append(ref)
    removal = remove_objects(backend, stack, unshared(backend, stack, refs), delete_data)
    for event in removed_events(owned, removal.removed):
        backend.events(event)
    return removal


def remove(backend: KubernetesBackend, items: list[Managed], *, keep_data: bool = True) -> Removal:
    """The workload objects and their Services, stack by stack, through `remove_objects`, which cuts claims
    and DataVolumes loose from their owners first so the data stays."""
    removal = Removal()
    for stack in sorted({m.stack for m in items}):
        mine = [m for m in items if m.stack == stack]
        refs = [ObjectRef(m.kind, m.namespace, m.name) for m in mine]
        for m in mine:
            services = backend.get_json("services", "-n", m.namespace, "-l", kubernetes_inventory.service_selector(m))
            refs += [ObjectRef.of(s) for s in services]
        removal += remove_objects(backend, stack, list(dict.fromkeys(refs)), delete_data=not keep_data)
    return removal


def remove_objects(backend: KubernetesBackend, stack: str, refs: list[ObjectRef], delete_data: bool) -> Removal:
    """Delete `refs`, except namespaces holding foreign objects or kept data; data in the namespaces
    involved is deleted with `delete_data`, else cut loose from its owners and kept."""
    doomed = {r for r in refs if r.kind not in DATA_KINDS}
    namespaces = sorted({r.name for r in refs if r.kind == "Namespace"} |
                        {r.namespace for r in refs if r.namespace})
    kept: list[Kept] = []
    keep_namespaces: set[str] = set()
    for ns in namespaces:
        contents = namespace_contents(backend, ns)
        data = data_objects(contents, stack)
        if delete_data:
            refs += [r for r in map(ObjectRef.of, data) if r not in refs]
        else:
            _release(backend, contents, doomed)
            refs = [r for r in refs if r.kind not in DATA_KINDS]
            kept += [Kept(str(ObjectRef.of(o)), DATA_KEPT, delete_command(backend, ObjectRef.of(o))) for o in data]
        foreign = sorted(str(ObjectRef.of(o)) for o in foreign_objects(contents, stack))
        if foreign or (data and not delete_data):
            keep_namespaces.add(ns)
            if any(r.kind == "Namespace" and r.name == ns for r in refs):
                why = (f"it holds objects hybridorch did not make: {_listing(foreign)}" if foreign else
                       "it holds the data kept above")
                kept.append(Kept(f"Namespace {ns}", why, delete_command(backend, ObjectRef("Namespace", "", ns))))
    refs = [r for r in refs if not (r.kind == "Namespace" and r.name in keep_namespaces)]
    return Removal(tuple(delete(backend, refs)), tuple(kept))


def unshared(backend: KubernetesBackend, stack: str, refs: list[ObjectRef]) -> list[ObjectRef]:
    """Leave out RuntimeClasses that workloads outside this stack still name.

    A RuntimeClass is cluster-wide: several stacks apply the same one, and the last apply owns its labels."""
    classes = {r.name for r in refs if r.kind == "RuntimeClass"}
    if not classes:
        return refs
    used = set()
    for o in backend.get_json("deployments.apps,statefulsets.apps", "--all-namespaces"):
        if o["metadata"].get("labels", {}).get(LABEL_STACK) != stack:
            used.add(((o.get("spec") or {}).get("template") or {}).get("spec", {}).get("runtimeClassName"))
    return [r for r in refs if not (r.kind == "RuntimeClass" and r.name in used)]


def delete(backend: KubernetesBackend, refs: Iterable[ObjectRef], timeout: float = 120) -> list[str]:
    refs = sorted(refs, key=lambda r: (r.kind == "Namespace", -KIND_ORDER.get(r.kind, 0), str(r)))
    if not refs:
        return []
    # one kubectl per namespace, then namespaces (they take everything left inside with them)
    groups: dict[tuple[str, bool], list[ObjectRef]] = {}
    for r in refs:
        groups.setdefault((r.namespace, r.kind == "Namespace"), []).append(r)
    for (ns, _), group in sorted(groups.items(), key=lambda g: g[0][1]):
        args = ["delete", "--ignore-not-found", "--wait=false"]
        if ns:
            args += ["-n", ns]
        backend.kubectl(*args, *[f"{r.resource}/{r.name}" for r in group])
    _wait_gone(backend, refs, timeout)
    return [str(r) for r in refs]


def _wait_gone(backend: KubernetesBackend, refs: list[ObjectRef], timeout: float) -> None:
    pending = list(refs)

    def gone() -> bool:
        nonlocal pending
        left = []
        for ns in sorted({r.namespace for r in pending}):
            group = [r for r in pending if r.namespace == ns]
            args = ["get", "--ignore-not-found", "-o", "name"] + (["-n", ns] if ns else [])
            out = backend.kubectl(*args, *[f"{r.resource}/{r.name}" for r in group]).stdout
            still = {line.split("/", 1)[-1] for line in proc.lines(out)}
            left += [r for r in group if r.name in still]
        pending = left
        return not pending

    if not proc.wait_until(gone, timeout, poll=0.5):
        names = ", ".join(str(r) for r in pending[:3])
        raise BackendError(f"{names} still exist {timeout:.0f}s after deletion: check their finalizers "
                           "with kubectl get -o yaml")


def delete_command(backend: KubernetesBackend, ref: ObjectRef) -> str:
    where = (f" --context {backend.context}" if backend.context else "") + \
        (f" --kubeconfig {backend.kubeconfig}" if backend.kubeconfig else "")
    scope = f" -n {ref.namespace}" if ref.namespace else ""
    return f"kubectl{where} delete {ref.resource}{scope} {ref.name}"


def namespace_contents(backend: KubernetesBackend, namespace: str) -> list[dict[str, Any]]:
    """Every object in the namespace, of every namespaced kind the cluster lists (events aside)."""
    namespaced = backend.namespaced_resources()
    done = backend.kubectl("get", ",".join(namespaced), "-n", namespace, "-o", "json", check=False)
    if done.returncode == 0:
        return list((json.loads(done.stdout or "{}")).get("items", []))
    # one kind failed (an aggregated API that is down...): list kind by kind, and refuse to guess about the
    # kinds that cannot be listed, since deleting the namespace would delete whatever they hold
    items: list[dict[str, Any]] = []
    for res in namespaced:
        one = backend.kubectl("get", res, "-n", namespace, "-o", "json", check=False)
        if one.returncode != 0:
            if "NotFound" in one.stderr or "could not find the requested resource" in one.stderr:
                continue
            why = explain_kubectl_error(one.stderr, backend.where)
            raise BackendError(f"cannot list {res} in namespace {namespace} ({why}); "
                               "nothing was deleted, since the namespace may hold objects hybridorch did not make")
        items += json.loads(one.stdout or "{}").get("items", [])
    return items


def _await_observed(backend: KubernetesBackend, namespace: str, name: str, generation: int,
                    timeout: float = 10) -> None:
    """Wait (briefly) until the StatefulSet controller has seen a new spec: one still acting on the old
    retention policy would put back the owner references about to be removed from the claims. Without a
    controller nothing acts on the old policy either, so the wait just ends."""
    def observed() -> bool:
        st = backend.get_json("statefulsets.apps", name, "-n", namespace, "--ignore-not-found")
        return not st or (st[0].get("status") or {}).get("observedGeneration", 0) >= generation

    proc.wait_until(observed, timeout, poll=0.2)


def _release(backend: KubernetesBackend, contents: list[dict[str, Any]], doomed: set[ObjectRef]) -> None:
    """Cut the ties of the data in `contents` to the objects about to be deleted, so the garbage collector
    keeps it: a doomed StatefulSet whose claims go with it (whenDeleted: Delete) is told to retain them, and
    a claim or DataVolume drops its owner references to doomed objects."""
    doomed_uids = {o["metadata"].get("uid") for o in contents if ObjectRef.of(o) in doomed}
    for o in contents:
        policy = (o.get("spec") or {}).get("persistentVolumeClaimRetentionPolicy") or {}
        if o.get("kind") == "StatefulSet" and o["metadata"].get("uid") in doomed_uids \
                and policy.get("whenDeleted") == "Delete":
            ns, name = o["metadata"]["namespace"], o["metadata"]["name"]
            patched = json.loads(backend.kubectl(
                "patch", "statefulsets.apps", name, "-n", ns, "--type=merge", "-o", "json", "-p",
                json.dumps({"spec": {"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain"}}})).stdout)
            _await_observed(backend, ns, name, patched["metadata"].get("generation", 0))
    for o in contents:
        refs = o["metadata"].get("ownerReferences") or []
        left = [r for r in refs if r.get("uid") not in doomed_uids]
        if o.get("kind") in DATA_KINDS and len(left) != len(refs):
            ref = ObjectRef.of(o)
            backend.kubectl("patch", ref.resource, ref.name, "-n", ref.namespace, "--type=merge", "-p",
                            json.dumps({"metadata": {"ownerReferences": left or None}}))


# --- what a namespace holds (pure: decides from the listed objects alone) -------------------------------------


def _is_ours(obj: dict[str, Any], stack: str) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return labels.get(LABEL_MANAGED) == MANAGED_BY and labels.get(LABEL_STACK) == stack


def ours_by_ownership(items: list[dict[str, Any]], stack: str) -> set[str]:
    """UIDs of the objects that carry the stack's labels or whose ownerReferences chain leads to one that does
    (ReplicaSets and Pods of a Deployment, ControllerRevisions, EndpointSlices of a Service, a VM's instance...)."""
    by_uid = {o["metadata"].get("uid"): o for o in items if o.get("metadata", {}).get("uid")}
    memo: dict[str, bool] = {}

    def ours(uid: str, depth: int = 0) -> bool:
        if uid not in memo:
            memo[uid] = False  # a cycle of owner references leads nowhere
            obj = by_uid[uid]
            memo[uid] = _is_ours(obj, stack) or (depth < 50 and any(
                r.get("uid") in by_uid and ours(r["uid"], depth + 1)
                for r in obj["metadata"].get("ownerReferences") or []))
        return memo[uid]

    return {uid for uid in by_uid if ours(uid)}


def foreign_objects(items: list[dict[str, Any]], stack: str) -> list[dict[str, Any]]:
    """The objects of one namespace that hybridorch did not make for this stack and Kubernetes did not make by
    itself: what must keep the namespace from being deleted. Objects already being deleted do not count."""
    ours = ours_by_ownership(items, stack)
    our_services = {o["metadata"]["name"] for o in items
                    if o.get("kind") == "Service" and o["metadata"].get("uid") in ours}

    def automatic(o: dict[str, Any]) -> bool:
        meta = o["metadata"]
        kind = o.get("kind", "")
        if (kind, meta.get("name")) in AUTOMATIC or kind == "Event":
            return True
        if kind == "Endpoints" and meta.get("name") in our_services:
            return True   # the endpoints controller names them after the Service and sets no owner
        if kind == "EndpointSlice" and (meta.get("labels") or {}).get("kubernetes.io/service-name") in our_services:
            return True
        # the token Secret of the default ServiceAccount, on clusters that still make one
        return kind == "Secret" and o.get("type") == "kubernetes.io/service-account-token" and \
            (meta.get("annotations") or {}).get("kubernetes.io/service-account.name") == "default"

    return [o for o in items if o["metadata"].get("uid") not in ours and not automatic(o)
            and not o["metadata"].get("deletionTimestamp")]


def data_objects(items: list[dict[str, Any]], stack: str) -> list[dict[str, Any]]:
    """The stack's claims and DataVolumes in one namespace (a StatefulSet's claims and a VM's DataVolumes
    included: they carry the stack's labels, or their owners lead to an object that does)."""
    ours = ours_by_ownership(items, stack)
    return [o for o in items if o.get("kind") in DATA_KINDS and o["metadata"].get("uid") in ours
            and not o["metadata"].get("deletionTimestamp")]


def _listing(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
