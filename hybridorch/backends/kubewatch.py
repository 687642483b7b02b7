"""Reading and watching a stack's objects through the `kubernetes` client (imported lazily: only `apply`,
`up --target kubernetes` and `status` pay for it), and deciding from pods and events why a workload is not ready.

Used by the kubernetes backend only; kubectl stays for apply, prune and delete. The decisions (which pod state is a
failure, what a progress line says) are pure functions over the objects as the API server returns them.
"""
from __future__ import annotations

import json
import queue
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from hybridorch import proc
from hybridorch.backends.kube_api import NO_CLUSTER, permission_denied
from hybridorch.backends.kubeconfig import check_kubeconfig
from hybridorch.errors import BackendError
from hybridorch.core.labels import LABEL_WORKLOAD

# container states kubelet will not get out of by itself (or only by retrying the same failure): fail fast
FAILING_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                             "CrashLoopBackOff", "CreateContainerConfigError", "CreateContainerError",
                             "RunContainerError"})
# controller events that mean no pod will be made (Pod Security, quota, a missing ServiceAccount...)
FAILING_EVENTS = frozenset({"FailedCreate"})
EVENT_SKEW = 5.0        # seconds: events stamped this long before the wait began still count (clock skew)
WATCH_ROUND = 20        # seconds per watch request; the thread re-watches from the last resourceVersion


def api_client(kubeconfig: str | None, context: str | None) -> Any:
    """An ApiClient for KUBECONFIG (or `kubeconfig`) and `context`, as kubectl would choose them; the files are
    checked through the safe reader first (the client's own reader waits on a FIFO and quotes the file)."""
    check_kubeconfig(kubeconfig)
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    except config.ConfigException as err:
        text = str(err)
        m = re.search(r"Expected key current-context|context .*not found|Invalid kube-config file. No configuration "
                      r"found", text)
        if context and "context" in text:
            raise BackendError(f"kubeconfig has no context {context!r}: list the contexts with `kubectl config "
                               "get-contexts` and pass one with --context") from None
        if m or "No configuration found" in text:
            raise BackendError(NO_CLUSTER) from None
        raise BackendError(f"cannot use the kubeconfig: {text}") from None
    except OSError as err:
        raise BackendError(f"cannot read the kubeconfig: {err}") from None
    return client.ApiClient(cfg)


def explain_api_error(err: Exception, where: str) -> str:
    """One line for a failed API call of the client (urllib3 or ApiException)."""
    status = getattr(err, "status", None)
    if status is not None:
        reason = getattr(err, "reason", "") or ""
        try:
            message = json.loads(getattr(err, "body", "") or "{}").get("message") or reason
        except ValueError:
            message = reason
        if status == 401:
            return f"the API server rejected the credentials of {where} (Unauthorized): refresh the kubeconfig's credentials"
        if status == 403:
            return permission_denied(message, where) or \
                f"permission denied ({where}): {message}; ask a cluster admin for RBAC rights"
        return f"the API server answered {status} ({where}): {message}"
    text = " ".join(str(err).split())
    server = re.search(r"host='([^']+)', port=(\d+)", text)
    at = f" at {server.group(1)}:{server.group(2)}" if server else ""
    return (f"cannot reach the Kubernetes API server{at} ({where}): start the cluster, or point KUBECONFIG/--context "
            "at a running one")


def list_json(call: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
    """A list call's response as the API server's JSON (camelCase, like kubectl -o json), not client models."""
    resp = call(_preload_content=False, **kwargs)
    data: dict[str, Any] = json.loads(resp.data or b"{}")
    return data


# --- why a workload is not ready (pure) ------------------------------------------------------------------------

@dataclass(frozen=True)
class Failure:
    workload: str
    namespace: str
    pod: str
    container: str
    reason: str
    message: str

    def line(self, logs: list[str]) -> str:
        where = f"pod {self.pod}" if self.pod else "its controller"
        tail = f"; last log lines: {' | '.join(logs)}" if logs else ""
        return (f"workload {self.workload} failed: {where}: {self.reason}: {self.message or 'no message'}{tail}; "
                f"see `kubectl describe -n {self.namespace} pod {self.pod}`" if self.pod else
                f"workload {self.workload} failed: {where}: {self.reason}: {self.message or 'no message'}; see "
                f"`kubectl get events -n {self.namespace}`")


def pod_failure(pod: dict[str, Any]) -> Failure | None:
    """The reason a pod will not become ready by waiting: a failing container state, or unschedulable."""
    meta, st = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return None
    workload = (meta.get("labels") or {}).get(LABEL_WORKLOAD, "")
    for c in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or []):
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in FAILING_REASONS:
            return Failure(workload, meta.get("namespace", ""), meta.get("name", ""), c.get("name", ""),
                           waiting["reason"], " ".join((waiting.get("message") or "").split()))
    for cond in st.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == \
                "Unschedulable":
            return Failure(workload, meta.get("namespace", ""), meta.get("name", ""), "", "Unschedulable",
                           cond.get("message", ""))
    return None


def event_failure(event: dict[str, Any], workloads: dict[tuple[str, str], str], since: float) -> Failure | None:
    """A Warning event of a workload's controller (FailedCreate of its ReplicaSet or StatefulSet) that is newer
    than `since`; `workloads` maps (namespace, workload name) to the workload."""
    if event.get("type") != "Warning" or event.get("reason") not in FAILING_EVENTS:
        return None
    obj = event.get("involvedObject") or {}
    ns, name, kind = obj.get("namespace", ""), obj.get("name", ""), obj.get("kind", "")
    owner = name if kind == "StatefulSet" else name.rsplit("-", 1)[0] if kind == "ReplicaSet" else None
    if owner is None or (ns, owner) not in workloads:
        return None
    stamp = event.get("lastTimestamp") or event.get("eventTime") or (event.get("metadata") or {}).get(
        "creationTimestamp")
    if not stamp or _epoch(stamp) < since - EVENT_SKEW:
        return None
    return Failure(workloads[(ns, owner)], ns, "", "", event["reason"], " ".join((event.get("message") or "").split()))


def _epoch(stamp: str) -> float:
    import calendar

    return float(calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")))


# --- the watch ----------------------------------------------------------------------------------------------

class StackWatch:
    """Watches (one thread per namespace and resource) feeding one queue: pods and Deployments/StatefulSets of the
    stack by label, Warning events by namespace. `objects` and `pods` always hold the latest state seen."""

    def __init__(self, api: Any, namespaces: list[str], label_selector: str) -> None:
        from kubernetes import client

        self.core, self.apps = client.CoreV1Api(api), client.AppsV1Api(api)
        self.namespaces, self.selector = namespaces, label_selector
        self.updates: queue.Queue[tuple[str, str, dict[str, Any]]] = queue.Queue()
        self.pods: dict[str, dict[str, Any]] = {}
        self.objects: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._open: set[Any] = set()   # the streaming responses, so stop() can cut them

    def start(self) -> None:
        for ns in self.namespaces:
            for kind, call, kwargs in (
                    ("Pod", self.core.list_namespaced_pod, {"label_selector": self.selector}),
                    ("Deployment", self.apps.list_namespaced_deployment, {"label_selector": self.selector}),
                    ("StatefulSet", self.apps.list_namespaced_stateful_set, {"label_selector": self.selector}),
                    ("Event", self.core.list_namespaced_event, {"field_selector": "type=Warning"})):
                t = threading.Thread(target=self._run, args=(kind, call, ns, kwargs), daemon=True,
                                     name=f"watch-{kind}-{ns}")
                t.start()
                self._threads.append(t)

    def stop(self) -> None:
        """End every watch now: shut the streaming connections down so no thread is left reading one when the
        interpreter exits (a daemon thread inside a read at shutdown aborts the process)."""
        self._stop.set()
        with self._lock:
            responses = list(self._open)
        for resp in responses:
            try:
                resp.shutdown() if hasattr(resp, "shutdown") else resp.close()
            except Exception:  # noqa: BLE001 - already closed
                pass
        for t in self._threads:
            t.join(timeout=5)

    def _run(self, kind: str, call: Callable[..., Any], ns: str, kwargs: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException
        from kubernetes.watch.watch import iter_resp_lines

        try:
            while not self._stop.is_set():
                listing = list_json(call, namespace=ns, **kwargs)
                for item in listing.get("items") or []:
                    item.setdefault("kind", kind)
                    self.updates.put((kind, "ADDED", item))
                version = (listing.get("metadata") or {}).get("resourceVersion")
                gone = False
                while not self._stop.is_set() and not gone:
                    resp = call(namespace=ns, watch=True, resource_version=version, timeout_seconds=WATCH_ROUND,
                                _preload_content=False, **kwargs)
                    with self._lock:
                        self._open.add(resp)
                    try:
                        for line in iter_resp_lines(resp):
                            if self._stop.is_set():
                                return
                            ev = json.loads(line)
                            raw = ev.get("object") or {}
                            if ev.get("type") == "ERROR":
                                if raw.get("code") == 410:   # our resourceVersion is too old: list again
                                    gone = True
                                    break
                                raise ApiException(status=raw.get("code"), reason=raw.get("message"))
                            raw.setdefault("kind", kind)
                            version = (raw.get("metadata") or {}).get("resourceVersion") or version
                            self.updates.put((kind, ev.get("type", ""), raw))
                    finally:
                        with self._lock:
                            self._open.discard(resp)
                        resp.release_conn()
        except Exception as err:  # noqa: BLE001 - handed to the waiting thread, which turns it into one line
            if not self._stop.is_set():
                self.updates.put(("error", "", {"error": err}))

    def apply(self, kind: str, change: str, obj: dict[str, Any]) -> None:
        """Fold one update into the current state."""
        uid = (obj.get("metadata") or {}).get("uid", "")
        if kind == "Pod":
            if change == "DELETED":
                self.pods.pop(uid, None)
            else:
                self.pods[uid] = obj
        elif kind == "Event":
            self.events.append(obj)
        elif kind in ("Deployment", "StatefulSet"):
            if change == "DELETED":
                self.objects.pop(uid, None)
            else:
                self.objects[uid] = obj

    def last_logs(self, failure: Failure, lines: int = 5) -> list[str]:
        """The failing container's last log lines (of its previous run when it crashed), when there are any."""
        if not failure.pod or failure.reason in ("Unschedulable", "ErrImagePull", "ImagePullBackOff"):
            return []
        for previous in ((True, False) if failure.reason == "CrashLoopBackOff" else (False,)):
            try:
                text = self.core.read_namespaced_pod_log(failure.pod, failure.namespace,
                                                         container=failure.container or None, tail_lines=lines,
                                                         previous=previous, _request_timeout=10)
            except Exception:  # noqa: BLE001 - no logs (kwok pods, a container that never started) is fine
                continue
            out = proc.lines(str(text))
            if out:
                return out[-lines:]
        return []
