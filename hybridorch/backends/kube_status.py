"""What the kubernetes backend reads back from a cluster: each workload's state from its Deployments, StatefulSets
and VirtualMachines (through the `kubernetes` client, kubewatch.py), and the wait until they are ready."""
from __future__ import annotations

import queue
import time
from typing import TYPE_CHECKING, Any

from hybridorch.errors import BackendError
from hybridorch.core.durations import parse_time
from hybridorch.core.labels import LABEL_WORKLOAD, selector
from hybridorch.core.runtime import VM_RUNTIMES, State
from hybridorch.backends.base import WorkloadStatus
from hybridorch.backends.events import KIND_OF_STATE, Event, EventKind, EventSink

if TYPE_CHECKING:
    from hybridorch.core.plan import Plan
    from hybridorch.backends.kubernetes import KubernetesBackend

ACCEPTED = "accepted; no KubeVirt controller in the cluster runs it"


def workload_objects(backend: KubernetesBackend, stack: str) -> list[dict[str, Any]]:
    """The stack's Deployments, StatefulSets and VirtualMachines, read through the kubernetes client."""
    from kubernetes import client

    from hybridorch.backends.kubewatch import explain_api_error, list_json

    apps = client.AppsV1Api(backend.api_client())
    out: list[dict[str, Any]] = []
    try:
        for kind, call in (("Deployment", apps.list_deployment_for_all_namespaces),
                           ("StatefulSet", apps.list_stateful_set_for_all_namespaces)):
            out += [dict(o, kind=kind) for o in list_json(call, label_selector=selector(stack)).get("items") or []]
    except Exception as err:  # noqa: BLE001 - ApiException and urllib3's connection errors alike
        raise BackendError(explain_api_error(err, backend.where)) from None
    return out + _vm_objects(backend, stack)


def kubevirt_present(backend: KubernetesBackend) -> bool:
    """A KubeVirt installation reports phase Deployed; CRDs alone (no controller) do not."""
    if "kubevirts.kubevirt.io" not in backend.kubectl("api-resources", "-o", "name").stdout.split():
        return False
    items = backend.get_json("kubevirts.kubevirt.io", "--all-namespaces")
    return any((i.get("status") or {}).get("phase") == "Deployed" for i in items)


def stack_status(backend: KubernetesBackend, plan: Plan) -> list[WorkloadStatus]:
    objects = workload_objects(backend, plan.stack.name)
    has_vms = any(o.get("kind") == "VirtualMachine" for o in objects)
    return workload_statuses(plan, objects, controller=kubevirt_present(backend) if has_vms else None)


def workload_statuses(plan: Plan, objects: list[dict[str, Any]], controller: bool | None) -> list[WorkloadStatus]:
    by_workload: dict[str, list[dict[str, Any]]] = {}
    for o in objects:
        by_workload.setdefault(o["metadata"].get("labels", {}).get(LABEL_WORKLOAD, ""), []).append(o)
    out = []
    for p in plan.placements:
        objs = by_workload.get(p.name, [])
        if not objs:
            out.append(WorkloadStatus(p.name, p.runtime, State.ABSENT, detail="not in the cluster"))
            continue
        states = [_object_state(o, controller) for o in objs]
        order = (State.FAILED, State.PENDING, State.STOPPED, State.RUNNING, State.READY)
        state = min((s for s, _ in states), key=order.index)
        detail = "; ".join(d for s, d in states if d)
        if "ErrorUnschedulable" in detail and "affinity/selector" in detail and p.runtime in VM_RUNTIMES \
                and p.workload.arch != p.host_arch:
            # the plan emulates the guest on another arch's host, which KubeVirt does not: it asks for a node
            # of the guest's own architecture
            detail += (f" (KubeVirt runs a VM only on a node of its own architecture, {p.workload.arch}: it does "
                       f"not emulate it on {p.host_arch})")
        ns = objs[0]["metadata"].get("namespace", "")
        age = _age(objs[0])
        # in-cluster ports (the Service's); nothing is published on this machine
        ports = tuple(dict.fromkeys(f"{x.port}/{x.protocol.lower()}" for x in list(p.workload.ports) + [
            x for c in p.workload.containers for x in c.ports]))   # a nested VM serves its inner containers' too
        out.append(WorkloadStatus(p.name, p.runtime, state, ports=ports, uptime_seconds=age, detail=detail,
                                  extra={"namespace": ns,
                                         "objects": [f"{o['kind']}/{o['metadata']['name']}" for o in objs]}))
    return out


def wait_ready(backend: KubernetesBackend, plan: Plan, timeout: float) -> list[WorkloadStatus]:
    """Watch the stack's pods, Deployments/StatefulSets and Warning events until every workload is ready (VMs:
    accepted, or ready where KubeVirt runs); one progress line per workload as its state changes. A pod that
    cannot get ready by waiting (image pull, crash loop, bad config, unschedulable) or a controller that
    cannot make pods fails at once with the pod's own reason and its last log lines."""
    from hybridorch.backends.kubewatch import StackWatch, event_failure, explain_api_error, pod_failure

    stack = plan.stack.name
    namespaces = sorted({f"{backend.namespace_prefix}{p.workload.tenant}" for p in plan.placements})
    vms = [p for p in plan.placements if p.runtime in VM_RUNTIMES]
    controller = kubevirt_present(backend) if vms else None
    pods_of = {(f"{backend.namespace_prefix}{p.workload.tenant}", p.name): p.name for p in plan.placements
               if p.runtime not in VM_RUNTIMES}
    since = time.time()
    deadline = time.monotonic() + timeout
    watch = StackWatch(backend.api_client(), namespaces, selector(stack))
    watch.start()
    shown: dict[str, tuple[EventKind, str]] = {}
    vm_objects: list[dict[str, Any]] = []
    next_vm_read = 0.0
    try:
        while True:
            try:
                kind, change, obj = watch.updates.get(timeout=max(0.05, min(1.0, deadline - time.monotonic())))
                if kind == "error":
                    raise BackendError(explain_api_error(obj["error"], backend.where))
                watch.apply(kind, change, obj)
                while not watch.updates.empty():   # fold everything already queued before deciding
                    kind, change, obj = watch.updates.get_nowait()
                    if kind == "error":
                        raise BackendError(explain_api_error(obj["error"], backend.where))
                    watch.apply(kind, change, obj)
            except queue.Empty:
                pass
            if vms and time.monotonic() >= next_vm_read:
                vm_objects = _vm_objects(backend, stack)
                next_vm_read = time.monotonic() + 2
            statuses = workload_statuses(plan, list(watch.objects.values()) + vm_objects, controller)
            tell_changes(backend.events, statuses, shown)
            if all(_settled(st) for st in statuses):
                return statuses
            failures = [f for f in map(pod_failure, watch.pods.values()) if f and
                        (f.namespace, f.workload) in pods_of] + \
                [f for f in (event_failure(e, pods_of, since) for e in watch.events) if f]
            failed = [st for st in statuses if st.state == State.FAILED]
            if failures:
                backend.events(Event(failures[0].workload, EventKind.FAILED, failures[0].reason))
                raise BackendError(failures[0].line(watch.last_logs(failures[0])))
            if failed:
                raise BackendError(f"workload {failed[0].name} failed: {failed[0].detail or failed[0].state}; see "
                                   f"kubectl describe in namespace {failed[0].extra.get('namespace', '?')}")
            if time.monotonic() > deadline:
                waiting = [st for st in statuses if not _settled(st)]
                why = "; ".join(f"{st.name}: {st.detail or st.state}" for st in waiting[:3])
                raise BackendError(f"not ready after {timeout:.0f}s: {why}; raise --timeout or inspect with "
                                   f"`hybridorch status --target kubernetes`")
    finally:
        watch.stop()


def _vm_objects(backend: KubernetesBackend, stack: str) -> list[dict[str, Any]]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from hybridorch.backends.kubewatch import explain_api_error, list_json

    try:
        data = list_json(client.CustomObjectsApi(backend.api_client()).list_cluster_custom_object, group="kubevirt.io",
                         version="v1", plural="virtualmachines", label_selector=selector(stack))
    except ApiException as err:
        if err.status == 404:
            return []   # no KubeVirt CRDs: nothing of the kind can exist
        raise BackendError(explain_api_error(err, backend.where)) from None
    except Exception as err:  # noqa: BLE001 - urllib3 connection errors and the like
        raise BackendError(explain_api_error(err, backend.where)) from None
    return [dict(o, kind="VirtualMachine") for o in data.get("items") or []]


def _object_state(obj: dict[str, Any], controller: bool | None) -> tuple[State, str]:
    kind = obj.get("kind")
    spec, st = obj.get("spec") or {}, obj.get("status") or {}
    if kind in ("Deployment", "StatefulSet"):
        want = spec.get("replicas", 1)
        # available = ready for minReadySeconds (set where there is no readiness probe); the API omits 0
        ready = min(st.get("readyReplicas", 0) or 0, st.get("availableReplicas", 0) or 0)
        current = st.get("observedGeneration", 0) >= obj["metadata"].get("generation", 0)
        updated = (st.get("updatedReplicas", 0) or 0) >= want
        if want == 0:
            return State.STOPPED, "0 replicas"
        for cond in st.get("conditions", []):
            if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
                return State.FAILED, cond.get("message", "")
        if current and updated and ready >= want and (st.get("replicas", 0) or 0) <= want:
            return State.READY, f"{ready}/{want} ready"
        return State.PENDING, f"{ready}/{want} ready"
    if kind == "VirtualMachine":
        return _vm_state(spec, st, controller)
    return State.RUNNING, ""


# printableStatus values of a VM that waiting does not mend
VM_FAILURES = ("CrashLoopBackOff", "ErrorUnschedulable", "ErrImagePull", "ImagePullBackOff", "ErrorPvcNotFound",
               "DataVolumeError", "ErrorDataVolumeNotFound")
# VM conditions that say why, most telling first (Ready's own messages only say "not running")
VM_WHY = ("Failure", "Synchronized", "PodScheduled", "Ready")


def _vm_state(spec: dict[str, Any], st: dict[str, Any], controller: bool | None) -> tuple[State, str]:
    printable = st.get("printableStatus")
    if st.get("ready"):
        return State.READY, printable or "Running"
    if spec.get("runStrategy") == "Halted" or spec.get("running") is False:
        return State.STOPPED, printable or "Halted"
    if controller is False and not printable:
        # no KubeVirt controller in this cluster: the API server accepting the object is all there is
        return State.PENDING, ACCEPTED
    why = vm_reason(st)
    if printable in VM_FAILURES:
        return State.FAILED, f"{printable}: {why}" if why else printable
    if printable == "Running":
        # the guest runs; its readiness probe (the first TCP port) has not answered yet
        return State.PENDING, "Running; the guest's service does not answer yet"
    return State.PENDING, printable or "waiting for KubeVirt"


def vm_reason(st: dict[str, Any]) -> str:
    """KubeVirt's own words for a VM that is not ready, in one line: the message of its most telling False
    condition (the scheduler's, a missing PVC, a failed start)."""
    false = {c.get("type"): c for c in st.get("conditions") or [] if c.get("status") == "False" and c.get("message")}
    for kind in VM_WHY:
        if kind in false:
            return " ".join(str(false[kind]["message"]).split())
    return ""


def state_event(status: WorkloadStatus) -> Event | None:
    """The event a workload's watched state is (none while it is absent: just applied, not delivered yet)."""
    if status.detail == ACCEPTED:
        return Event(status.name, EventKind.ACCEPTED)
    kind = KIND_OF_STATE.get(State(status.state))
    return Event(status.name, kind, status.detail) if kind is not None else None


def tell_changes(events: EventSink, statuses: list[WorkloadStatus], shown: dict[str, tuple[EventKind, str]]) -> None:
    """One event per workload whose state (or its detail) changed since `shown`, which this updates."""
    for event in filter(None, map(state_event, statuses)):
        if shown.get(event.workload) != (event.kind, event.detail):
            shown[event.workload] = (event.kind, event.detail)
            events(event)


def _settled(status: WorkloadStatus) -> bool:
    """Done waiting: ready, deliberately stopped, or a VM the API server accepted where nothing will run it."""
    return status.state in (State.READY, State.RUNNING, State.STOPPED) or status.detail == ACCEPTED


def _age(obj: dict[str, Any]) -> float | None:
    created = parse_time(obj["metadata"].get("creationTimestamp"))
    return None if created is None else max(0.0, time.time() - created)
