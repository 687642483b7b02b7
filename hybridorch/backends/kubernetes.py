"""The kubernetes backend: server-side apply of a rendered stack through kubectl, then wait, prune and delete.

Apply, prune and delete go through the kubectl binary; waiting and status read through the `kubernetes` client
(kubewatch.py, imported lazily). Before applying, the stack's locally built images are loaded into the nodes of a
kind cluster (kind.py), or refused when the nodes of another cluster cannot have them. Failures become one-line
BackendErrors that say what to do. Nothing here prints: progress lines go to the `progress` callback.
"""
from __future__ import annotations

import calendar
import glob
import json
import os
import queue
import re
import shutil
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from hybridorch.core import images
from hybridorch import proc
from hybridorch.errors import BackendError
from hybridorch.core.labels import LABEL_MANAGED, LABEL_STACK, LABEL_WORKLOAD, MANAGED_BY, selector
from hybridorch.core.runtime import State, cache_root
from hybridorch.backends.base import Backend, Kept, Removal, WorkloadStatus

if TYPE_CHECKING:
    from hybridorch.core.plan import Plan
    from hybridorch.render.stack import Rendered

FIELD_MANAGER = "hybridorch"
KUBECTL_MISSING = "install kubectl or set HYBRIDORCH_KUBECTL"
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
DATA_KEPT = "data (kept without --delete-data)"
# Objects Kubernetes makes in every namespace by itself; they never keep a namespace alive
AUTOMATIC = frozenset({("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")})
# Resources that are records of what happened, not objects anybody made
IGNORED_RESOURCES = frozenset({"events", "events.events.k8s.io"})
REQUEST_TIMEOUT = "30s"
ACCEPTED = "accepted; no KubeVirt controller in the cluster runs it"


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


class ApplyRejected(BackendError):
    """The API server rejected some objects of a server-side dry run; nothing was applied."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}; nothing was applied")

    def lines(self) -> list[str]:
        return [f"{p}; nothing was applied" for p in self.problems]


def find_kubectl() -> str:
    """$HYBRIDORCH_KUBECTL, else the kubectl built by e2e/k8s/build.sh (newest version), else PATH."""
    explicit = os.environ.get("HYBRIDORCH_KUBECTL")
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise BackendError(f"HYBRIDORCH_KUBECTL={explicit} is not an executable file: fix or unset it")
        return explicit
    cache = cache_root() / "k8s"
    built = sorted(glob.glob(str(cache / "v*" / "bin" / "kubectl")), key=_version_key)
    if built:
        return built[-1]
    found = shutil.which("kubectl")
    if not found:
        raise BackendError("kubectl not found: install kubectl (Debian package kubectl) or set HYBRIDORCH_KUBECTL "
                           "to its path")
    return found


def _version_key(path: str) -> tuple[int, ...]:
    m = re.search(r"/v(\d+)\.(\d+)\.(\d+)/", path)
    return tuple(int(x) for x in m.groups()) if m else (0,)


def explain_kubectl_error(stderr: str, where: str) -> str:
    """One line that says what went wrong talking to the cluster and what to do about it."""
    text = " ".join(stderr.split())
    m = re.search(r'context "([^"]+)" does not exist|no context exists with the name: "?([^"\s]+)"?'
                  r'|context was not found for specified context: (\S+)', text)
    if m:
        name = m.group(1) or m.group(2) or m.group(3)
        return (f"kubeconfig has no context {name!r}: list the contexts with `kubectl config get-contexts` "
                "and pass one with --context")
    if "localhost:8080" in text and "refused" in text:
        return "no Kubernetes cluster configured: set KUBECONFIG to a kubeconfig file or pass --context"
    if any(s in text for s in ("Unable to connect to the server", "connection refused", "was refused", "no such host",
                               "i/o timeout", "dial tcp", "context deadline exceeded", "TLS handshake timeout",
                               "Client.Timeout exceeded")):
        server = re.search(r'https?://[^\s/"]+|\d+\.\d+\.\d+\.\d+:\d+|\[[0-9a-f:]+\]:\d+', text)
        at = f" at {server.group(0)}" if server else ""
        return (f"cannot reach the Kubernetes API server{at} ({where}): start the cluster, or point KUBECONFIG/"
                "--context at a running one")
    m = re.search(r'no matches for kind "([^"]+)" in version "([^"]+)"', text)
    if m:
        kind, version = m.groups()
        hint = "install KubeVirt (its CRDs) in the cluster" if "kubevirt.io" in version else \
            f"install the CRD that defines {kind}"
        return f"the cluster does not know kind {kind} ({version}): {hint}, or place the workload differently"
    m = re.search(r"the server could not find the requested resource \(\w+ ([a-z0-9.]+)", text)
    if m and "kubevirt.io" in m.group(1):
        return (f"the cluster does not serve {m.group(1)}: install KubeVirt (its CRDs) in the cluster, or place "
                "the workload differently")
    m = re.search(r'the server doesn\'t have a resource type "([^"]+)"', text)
    if m:
        return f"the cluster has no resource type {m.group(1)!r}: install the CRD that defines it"
    if "Unauthorized" in text or "You must be logged in to the server" in text:
        return (f"the API server rejected the credentials of {where} (Unauthorized): refresh the kubeconfig's "
                "credentials")
    m = re.search(r'(User|ServiceAccount|Group) "([^"]+)" cannot (\w+) resource "([^"]+)"(?: in API group "([^"]*)")?'
                  r'(?: in the namespace "([^"]+)"| at the cluster scope)?', text)
    if m or "forbidden" in text.lower() and "pod security" not in text.lower():
        if m:
            who, verb, res, group, ns = m.group(2), m.group(3), m.group(4), m.group(5), m.group(6)
            full = f"{res}.{group}" if group else res
            scope = f" in namespace {ns}" if ns else " at cluster scope"
            return (f"permission denied: {who} may not {verb} {full}{scope} ({where}): ask a cluster admin for an "
                    "RBAC role that allows it, or use another --context")
        return f"permission denied ({where}): {_first_error(text)}; ask a cluster admin for RBAC rights"
    return f"kubectl failed ({where}): {_first_error(text)}"


def _first_error(text: str) -> str:
    text = re.sub(r"^(error: |Error from server(?: \([A-Za-z]+\))?: )", "", text.strip())
    return text[:400] if text else "no error output"


class KubernetesBackend(Backend):
    """Server-side apply through kubectl: dry run everything, apply, prune what left the stack, wait."""

    name = "kubernetes"

    def __init__(self, context: str | None = None, namespace_prefix: str = "", kubeconfig: str | None = None,
                 load: bool = True, progress: Callable[[str], None] | None = None, **options: Any) -> None:
        super().__init__(context=context, namespace_prefix=namespace_prefix, kubeconfig=kubeconfig, **options)
        self.context = context
        self.namespace_prefix = namespace_prefix
        self.kubeconfig = kubeconfig
        self.load = load   # load local images into kind nodes (and check other clusters' nodes have them)
        self.progress: Callable[[str], None] = progress or (lambda line: None)
        self._api: Any = None
        self._kubectl_path: str | None = None
        self._resources: set[str] | None = None
        self._namespaced: list[str] | None = None

    # --- kubectl ----------------------------------------------------------------------------------------

    @property
    def where(self) -> str:
        return f"context {self.context}" if self.context else "the current kubeconfig context"

    def kubectl_command(self, *args: str) -> list[str]:
        if self._kubectl_path is None:
            self._kubectl_path = find_kubectl()
        cmd = [self._kubectl_path]
        if self.kubeconfig:
            cmd.append(f"--kubeconfig={self.kubeconfig}")
        if self.context:
            cmd.append(f"--context={self.context}")
        return cmd + [f"--request-timeout={REQUEST_TIMEOUT}", *args]

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True,
                timeout: float = 120) -> proc.Completed[str]:
        return proc.run(self.kubectl_command(*args), what=f"kubectl {args[0]} ({self.where})", timeout=timeout,
                        check=check, input_text=stdin, env=self._env(), missing=KUBECTL_MISSING,
                        explain=lambda err: explain_kubectl_error(err, self.where))

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # a stray KUBECTL_* setting must not change what apply means
        env.pop("KUBECTL_APPLYSET", None)
        return env

    def get_json(self, *args: str) -> list[dict[str, Any]]:
        out = self.kubectl("get", *args, "-o", "json").stdout
        data = json.loads(out) if out.strip() else {}
        return list(data.get("items", [data] if data.get("kind") else []))

    def available_resources(self) -> set[str]:
        """Our KINDS the cluster serves (a cluster without KubeVirt has no virtualmachines.kubevirt.io)."""
        if self._resources is None:
            out = self.kubectl("api-resources", "-o", "name").stdout
            served = set(out.split())
            self._resources = {res for _, res in KINDS if res in served}
        return self._resources

    # --- apply ------------------------------------------------------------------------------------------

    def up(self, plan: Plan, rendered: Rendered, *, wait: bool = True, timeout: float = 300) -> list[WorkloadStatus]:
        docs = _ordered(rendered.documents)
        stack = plan.stack.name
        if self.load:
            self.prepare_images(plan, docs)
        created = self._ensure_namespaces(docs)
        try:
            self._dry_run(docs)
        except BackendError:
            self._remove_namespaces(created)
            raise
        self.kubectl("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "--force-conflicts", "-f", "-",
                     stdin=_stream(docs), timeout=max(120, timeout))
        self.prune(stack, {ObjectRef.of(d) for d in docs})
        if wait:
            return self.wait_ready(plan, timeout)
        return self.status(plan)

    def check(self, rendered: Rendered) -> None:
        """Server-side dry run of every object, leaving the cluster as it was; raises ApplyRejected."""
        docs = _ordered(rendered.documents)
        created = self._ensure_namespaces(docs)
        try:
            self._dry_run(docs)
        finally:
            self._remove_namespaces(created)

    def _ensure_namespaces(self, docs: list[dict[str, Any]]) -> list[str]:
        """Create the stack's missing namespaces so the dry run can check the objects inside them.

        The API server refuses even a dry-run create in a namespace that does not exist; the namespaces
        created here are removed again if the dry run rejects anything."""
        wanted = [d for d in docs if d.get("kind") == "Namespace"]
        if not wanted:
            return []
        existing = {item["metadata"]["name"] for item in self.get_json("namespaces")}
        missing = [d for d in wanted if d["metadata"]["name"] not in existing]
        if missing:
            self.kubectl("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-",
                         stdin=_stream(missing))
        return [d["metadata"]["name"] for d in missing]

    def _remove_namespaces(self, names: list[str]) -> None:
        # waits until they are gone: a namespace still terminating would refuse the next apply
        self._delete([ObjectRef("Namespace", "", n) for n in names])

    def _dry_run(self, docs: list[dict[str, Any]]) -> None:
        done = self.kubectl("apply", "--server-side", "--dry-run=server", f"--field-manager={FIELD_MANAGER}",
                            "--force-conflicts", "-f", "-", stdin=_stream(docs), check=False)
        if done.returncode == 0:
            return
        problems = _rejections(done.stderr, docs)
        if not problems:
            raise BackendError(explain_kubectl_error(done.stderr or done.stdout, self.where))
        raise ApplyRejected(problems)

    def diff(self, rendered: Rendered) -> str:
        """kubectl diff of the rendered objects against the cluster (empty when nothing would change)."""
        done = self.kubectl("diff", "--server-side", f"--field-manager={FIELD_MANAGER}", "--force-conflicts",
                            "-f", "-", stdin=_stream(rendered.documents), check=False)
        if done.returncode > 1:
            raise BackendError(explain_kubectl_error(done.stderr, self.where))
        return done.stdout

    # --- finding our objects ----------------------------------------------------------------------------

    def owned_objects(self, stack: str) -> list[dict[str, Any]]:
        """Every object of the stack (its labels) among the kinds we render, except controller-made ones."""
        resources = [res for _, res in KINDS if res in self.available_resources()]
        items = self.get_json(",".join(resources), "--all-namespaces", "-l", selector(stack))
        # PVCs of a StatefulSet or DataVolumes of a VM carry our labels too, but their owner manages them
        return [i for i in items if not i["metadata"].get("ownerReferences")
                and i["metadata"].get("labels", {}).get(LABEL_STACK) == stack]

    def prune(self, stack: str, keep: set[ObjectRef]) -> list[str]:
        """Delete the stack's objects that are no longer rendered; namespaces last. Data (claims, DataVolumes)
        is never pruned: only `delete --delete-data` removes it."""
        stale = [ObjectRef.of(o) for o in self.owned_objects(stack)
                 if ObjectRef.of(o) not in keep and o.get("kind") not in DATA_KINDS]
        if not stale:
            return []
        # a pruned StatefulSet's claims, or a pruned tenant's namespace with data or a user's objects, are kept
        return list(self.remove_objects(stack, self._unshared(stack, stale), delete_data=False).removed)

    def _unshared(self, stack: str, refs: list[ObjectRef]) -> list[ObjectRef]:
        """Leave out RuntimeClasses that workloads outside this stack still name.

        A RuntimeClass is cluster-wide: several stacks apply the same one, and the last apply owns its labels."""
        classes = {r.name for r in refs if r.kind == "RuntimeClass"}
        if not classes:
            return refs
        used = set()
        for o in self.get_json("deployments.apps,statefulsets.apps", "--all-namespaces"):
            if o["metadata"].get("labels", {}).get(LABEL_STACK) != stack:
                used.add(((o.get("spec") or {}).get("template") or {}).get("spec", {}).get("runtimeClassName"))
        return [r for r in refs if not (r.kind == "RuntimeClass" and r.name in used)]

    def _delete(self, refs: Iterable[ObjectRef], timeout: float = 120) -> list[str]:
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
            self.kubectl(*args, *[f"{r.resource}/{r.name}" for r in group])
        self._wait_gone(refs, timeout)
        return [str(r) for r in refs]

    def _wait_gone(self, refs: list[ObjectRef], timeout: float) -> None:
        pending = list(refs)

        def gone() -> bool:
            nonlocal pending
            left = []
            for ns in sorted({r.namespace for r in pending}):
                group = [r for r in pending if r.namespace == ns]
                args = ["get", "--ignore-not-found", "-o", "name"] + (["-n", ns] if ns else [])
                out = self.kubectl(*args, *[f"{r.resource}/{r.name}" for r in group]).stdout
                still = {line.split("/", 1)[-1] for line in proc.lines(out)}
                left += [r for r in group if r.name in still]
            pending = left
            return not pending

        if not proc.wait_until(gone, timeout, poll=0.5):
            names = ", ".join(str(r) for r in pending[:3])
            raise BackendError(f"{names} still exist {timeout:.0f}s after deletion: check their finalizers "
                               "with kubectl get -o yaml")

    # --- status and waiting ---------------------------------------------------------------------------

    def _workload_objects(self, stack: str) -> list[dict[str, Any]]:
        """The stack's Deployments, StatefulSets and VirtualMachines, read through the kubernetes client."""
        from kubernetes import client

        from hybridorch.backends.kubewatch import explain_api_error, list_json

        apps = client.AppsV1Api(self.api_client())
        out: list[dict[str, Any]] = []
        try:
            for kind, call in (("Deployment", apps.list_deployment_for_all_namespaces),
                               ("StatefulSet", apps.list_stateful_set_for_all_namespaces)):
                out += [dict(o, kind=kind) for o in list_json(call, label_selector=selector(stack)).get("items") or []]
        except Exception as err:  # noqa: BLE001 - ApiException and urllib3's connection errors alike
            raise BackendError(explain_api_error(err, self.where)) from None
        return out + self._vm_objects(stack)

    def kubevirt_present(self) -> bool:
        """A KubeVirt installation reports phase Deployed; CRDs alone (no controller) do not."""
        if "kubevirts.kubevirt.io" not in self.kubectl("api-resources", "-o", "name").stdout.split():
            return False
        items = self.get_json("kubevirts.kubevirt.io", "--all-namespaces")
        return any((i.get("status") or {}).get("phase") == "Deployed" for i in items)

    def status(self, plan: Plan) -> list[WorkloadStatus]:
        objects = self._workload_objects(plan.stack.name)
        has_vms = any(o.get("kind") == "VirtualMachine" for o in objects)
        return self._statuses(plan, objects, controller=self.kubevirt_present() if has_vms else None)

    def _statuses(self, plan: Plan, objects: list[dict[str, Any]], controller: bool | None) -> list[WorkloadStatus]:
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
            ns = objs[0]["metadata"].get("namespace", "")
            age = _age(objs[0])
            # in-cluster ports (the Service's); nothing is published on this machine
            ports = tuple(f"{x.port}/{x.protocol.lower()}" for x in p.workload.ports)
            out.append(WorkloadStatus(p.name, p.runtime, state, ports=ports, uptime_seconds=age, detail=detail,
                                      extra={"namespace": ns,
                                             "objects": [f"{o['kind']}/{o['metadata']['name']}" for o in objs]}))
        return out

    def wait_ready(self, plan: Plan, timeout: float) -> list[WorkloadStatus]:
        """Watch the stack's pods, Deployments/StatefulSets and Warning events until every workload is ready (VMs:
        accepted, or ready where KubeVirt runs); one progress line per workload as its state changes. A pod that
        cannot get ready by waiting (image pull, crash loop, bad config, unschedulable) or a controller that
        cannot make pods fails at once with the pod's own reason and its last log lines."""
        from hybridorch.backends.kubewatch import StackWatch, event_failure, explain_api_error, pod_failure

        stack = plan.stack.name
        namespaces = sorted({f"{self.namespace_prefix}{p.workload.tenant}" for p in plan.placements})
        vms = [p for p in plan.placements if p.runtime in ("vm", "nested")]
        controller = self.kubevirt_present() if vms else None
        pods_of = {(f"{self.namespace_prefix}{p.workload.tenant}", p.name): p.name for p in plan.placements
                   if p.runtime not in ("vm", "nested")}
        since = time.time()
        deadline = time.monotonic() + timeout
        watch = StackWatch(self.api_client(), namespaces, selector(stack))
        watch.start()
        shown: dict[str, str] = {}
        vm_objects: list[dict[str, Any]] = []
        next_vm_read = 0.0
        try:
            while True:
                try:
                    kind, change, obj = watch.updates.get(timeout=max(0.05, min(1.0, deadline - time.monotonic())))
                    if kind == "error":
                        raise BackendError(explain_api_error(obj["error"], self.where))
                    watch.apply(kind, change, obj)
                    while not watch.updates.empty():   # fold everything already queued before deciding
                        kind, change, obj = watch.updates.get_nowait()
                        if kind == "error":
                            raise BackendError(explain_api_error(obj["error"], self.where))
                        watch.apply(kind, change, obj)
                except queue.Empty:
                    pass
                if vms and time.monotonic() >= next_vm_read:
                    vm_objects = self._vm_objects(stack)
                    next_vm_read = time.monotonic() + 2
                statuses = self._statuses(plan, list(watch.objects.values()) + vm_objects, controller)
                for st in statuses:
                    if st.state == State.ABSENT:
                        continue   # just applied: the watch has not delivered it yet
                    line = f"{st.name}: {'accepted' if st.detail == ACCEPTED else st.state}" + \
                        (f" ({st.detail})" if st.detail and st.detail != ACCEPTED else "")
                    if shown.get(st.name) != line:
                        shown[st.name] = line
                        self.progress(line)
                if all(_settled(st) for st in statuses):
                    return statuses
                failures = [f for f in map(pod_failure, watch.pods.values()) if f and
                            (f.namespace, f.workload) in pods_of] + \
                    [f for f in (event_failure(e, pods_of, since) for e in watch.events) if f]
                failed = [st for st in statuses if st.state == State.FAILED]
                if failures:
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

    # --- the kubernetes client, images -----------------------------------------------------------------

    def api_client(self) -> Any:
        if self._api is None:
            from hybridorch.backends.kubewatch import api_client

            self._api = api_client(self.kubeconfig, self.context)
        return self._api

    def _vm_objects(self, stack: str) -> list[dict[str, Any]]:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        from hybridorch.backends.kubewatch import explain_api_error, list_json

        try:
            data = list_json(client.CustomObjectsApi(self.api_client()).list_cluster_custom_object, group="kubevirt.io",
                             version="v1", plural="virtualmachines", label_selector=selector(stack))
        except ApiException as err:
            if err.status == 404:
                return []   # no KubeVirt CRDs: nothing of the kind can exist
            raise BackendError(explain_api_error(err, self.where)) from None
        except Exception as err:  # noqa: BLE001 - urllib3 connection errors and the like
            raise BackendError(explain_api_error(err, self.where)) from None
        return [dict(o, kind="VirtualMachine") for o in data.get("items") or []]

    def current_context(self) -> str | None:
        """The context kubectl uses: --context, else the kubeconfig's current-context."""
        if self.context:
            return self.context
        done = self.kubectl("config", "current-context", check=False)
        return done.stdout.strip() or None

    def prepare_images(self, plan: Plan, docs: list[dict[str, Any]]) -> list[str]:
        """Make the stack's locally built images available to the nodes before anything is applied: on a kind
        cluster, build the missing ones and load them into every node; on any other cluster, fail in one line when
        a node that may run a pod lacks one (nodes report the images they hold; kwok's fake nodes pull nothing)."""
        wanted = pod_images(docs)
        local = {ref: where for ref, where in wanted.items() if images.is_local(ref)}
        if not local:
            return []
        nodes = self.get_json("nodes")
        from hybridorch.backends.kind import kind_cluster_name, load_images

        cluster = kind_cluster_name(self.current_context(), [(n.get("spec") or {}).get("providerID", "")
                                                             for n in nodes])
        if cluster is not None:
            self._build_images(plan, list(local))
            return load_images(cluster, list(local), self.progress)
        for ref, (workload, node_selector) in local.items():
            eligible = [n for n in nodes if _matches(node_selector, (n.get("metadata") or {}).get("labels") or {})]
            lacking = [n["metadata"]["name"] for n in eligible if not _node_has(n, ref)]
            if lacking:
                name = ref[len(images.LOCAL_REGISTRY) + 1:]
                raise BackendError(
                    f"image {ref} (workload {workload}) was built on this machine and node {lacking[0]} of "
                    f"{self.where} cannot pull it: push it (`docker tag {ref} REGISTRY/{name} && docker push "
                    f"REGISTRY/{name}`, then use that image in the stack) or load it into every node, then apply "
                    "again (--no-load skips this check); nothing was applied")
        return []

    def _build_images(self, plan: Plan, refs: list[str]) -> None:
        """Build missing content-tagged images from their recipes, through the Docker backend's builder."""
        from hybridorch.backends.base import get_backend

        dirs = images.image_dirs(plan.stack.file)
        sources = {images.content_ref(p.workload.image, dirs): p.workload.image for p in plan.placements
                   if p.workload.image and images.is_local(p.workload.image)}
        missing = [sources.get(ref, ref) for ref in refs]
        builder: Any = get_backend("docker")
        builder.ensure_images(missing, plan.stack.file)

    # --- logs and delete --------------------------------------------------------------------------------

    def logs(self, plan: Plan, workload: str, *, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        objs = [o for o in self._workload_objects(plan.stack.name)
                if o["metadata"].get("labels", {}).get(LABEL_WORKLOAD) == workload]
        if not objs:
            raise BackendError(f"workload {workload} is not in the cluster: apply the stack first")
        ns = objs[0]["metadata"]["namespace"]
        args = ["logs", "-n", ns, "-l", f"{selector(plan.stack.name)},{LABEL_WORKLOAD}={workload}",
                "--all-containers", "--prefix", f"--tail={tail if tail is not None else -1}"]
        if follow:
            args.append("--follow")
        if not follow:
            yield from self.kubectl(*args).stdout.splitlines()
            return
        yield from proc.stream(self.kubectl_command(*args), what=f"kubectl logs ({self.where})", env=self._env(),
                               missing=KUBECTL_MISSING, explain=lambda err: explain_kubectl_error(err, self.where))

    def down(self, plan: Plan, *, delete_data: bool = False) -> Removal:
        """Delete the stack's objects. Like Helm, a namespace that holds objects hybridorch did not make is kept
        (and named with what kept it); claims and DataVolumes are kept unless `delete_data`, and with them
        their namespace."""
        stack = plan.stack.name
        refs = [ObjectRef.of(o) for o in self.owned_objects(stack)]
        # a shared RuntimeClass carries the labels of whichever stack applied it last, so the last stack to go
        # must also take the ones labelled for a stack that is already gone (_unshared keeps those still in use)
        if "runtimeclasses.node.k8s.io" in self.available_resources():
            for o in self.get_json("runtimeclasses.node.k8s.io", "-l", f"{LABEL_MANAGED}={MANAGED_BY}"):
                ref = ObjectRef.of(o)
                if ref not in refs:
                    refs.append(ref)
        return self.remove_objects(stack, self._unshared(stack, refs), delete_data)

    def remove_objects(self, stack: str, refs: list[ObjectRef], delete_data: bool) -> Removal:
        """Delete `refs`, except namespaces holding foreign objects or kept data; data in the namespaces
        involved is deleted with `delete_data`, else cut loose from its owners and kept."""
        doomed = {r for r in refs if r.kind not in DATA_KINDS}
        namespaces = sorted({r.name for r in refs if r.kind == "Namespace"} |
                            {r.namespace for r in refs if r.namespace})
        kept: list[Kept] = []
        keep_namespaces: set[str] = set()
        for ns in namespaces:
            contents = self.namespace_contents(ns)
            data = data_objects(contents, stack)
            if delete_data:
                refs += [r for r in map(ObjectRef.of, data) if r not in refs]
            else:
                self._release(contents, doomed)
                refs = [r for r in refs if r.kind not in DATA_KINDS]
                kept += [Kept(str(ObjectRef.of(o)), DATA_KEPT, self._delete_command(ObjectRef.of(o))) for o in data]
            foreign = sorted(str(ObjectRef.of(o)) for o in foreign_objects(contents, stack))
            if foreign or (data and not delete_data):
                keep_namespaces.add(ns)
                if any(r.kind == "Namespace" and r.name == ns for r in refs):
                    why = (f"it holds objects hybridorch did not make: {_listing(foreign)}" if foreign else
                           "it holds the data kept above")
                    kept.append(Kept(f"Namespace {ns}", why, self._delete_command(ObjectRef("Namespace", "", ns))))
        refs = [r for r in refs if not (r.kind == "Namespace" and r.name in keep_namespaces)]
        return Removal(tuple(self._delete(refs)), tuple(kept))

    def _delete_command(self, ref: ObjectRef) -> str:
        where = (f" --context {self.context}" if self.context else "") + \
            (f" --kubeconfig {self.kubeconfig}" if self.kubeconfig else "")
        scope = f" -n {ref.namespace}" if ref.namespace else ""
        return f"kubectl{where} delete {ref.resource}{scope} {ref.name}"

    def namespace_contents(self, namespace: str) -> list[dict[str, Any]]:
        """Every object in the namespace, of every namespaced kind the cluster lists (events aside)."""
        if self._namespaced is None:
            out = self.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name").stdout
            self._namespaced = [r for r in out.split() if r not in IGNORED_RESOURCES]
        done = self.kubectl("get", ",".join(self._namespaced), "-n", namespace, "-o", "json", check=False)
        if done.returncode == 0:
            return list((json.loads(done.stdout or "{}")).get("items", []))
        # one kind failed (an aggregated API that is down...): list kind by kind, and refuse to guess about the
        # kinds that cannot be listed, since deleting the namespace would delete whatever they hold
        items: list[dict[str, Any]] = []
        for res in self._namespaced:
            one = self.kubectl("get", res, "-n", namespace, "-o", "json", check=False)
            if one.returncode != 0:
                if "NotFound" in one.stderr or "could not find the requested resource" in one.stderr:
                    continue
                raise BackendError(f"cannot list {res} in namespace {namespace} ({explain_kubectl_error(one.stderr, self.where)}); "
                                   "nothing was deleted, since the namespace may hold objects hybridorch did not make")
            items += json.loads(one.stdout or "{}").get("items", [])
        return items

    def _await_observed(self, namespace: str, name: str, generation: int, timeout: float = 10) -> None:
        """Wait (briefly) until the StatefulSet controller has seen a new spec: one still acting on the old
        retention policy would put back the owner references about to be removed from the claims. Without a
        controller nothing acts on the old policy either, so the wait just ends."""
        def observed() -> bool:
            st = self.get_json("statefulsets.apps", name, "-n", namespace, "--ignore-not-found")
            return not st or (st[0].get("status") or {}).get("observedGeneration", 0) >= generation

        proc.wait_until(observed, timeout, poll=0.2)

    def _release(self, contents: list[dict[str, Any]], doomed: set[ObjectRef]) -> None:
        """Cut the ties of the data in `contents` to the objects about to be deleted, so the garbage collector
        keeps it: a doomed StatefulSet whose claims go with it (whenDeleted: Delete) is told to retain them, and
        a claim or DataVolume drops its owner references to doomed objects."""
        doomed_uids = {o["metadata"].get("uid") for o in contents if ObjectRef.of(o) in doomed}
        for o in contents:
            policy = (o.get("spec") or {}).get("persistentVolumeClaimRetentionPolicy") or {}
            if o.get("kind") == "StatefulSet" and o["metadata"].get("uid") in doomed_uids \
                    and policy.get("whenDeleted") == "Delete":
                ns, name = o["metadata"]["namespace"], o["metadata"]["name"]
                patched = json.loads(self.kubectl(
                    "patch", "statefulsets.apps", name, "-n", ns, "--type=merge", "-o", "json", "-p",
                    json.dumps({"spec": {"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain"}}})).stdout)
                self._await_observed(ns, name, patched["metadata"].get("generation", 0))
        for o in contents:
            refs = o["metadata"].get("ownerReferences") or []
            left = [r for r in refs if r.get("uid") not in doomed_uids]
            if o.get("kind") in DATA_KINDS and len(left) != len(refs):
                ref = ObjectRef.of(o)
                self.kubectl("patch", ref.resource, ref.name, "-n", ref.namespace, "--type=merge", "-p",
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


# --- helpers ------------------------------------------------------------------------------------------------

def _ordered(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(docs, key=lambda d: KIND_ORDER.get(d.get("kind", ""), len(KINDS)))


def _stream(docs: Iterable[dict[str, Any]]) -> str:
    # JSON is YAML; one document per line keeps kubectl's "error when ..." messages easy to attribute
    return "".join("---\n" + json.dumps(d) + "\n" for d in docs)


_REJECTION = re.compile(r'(?:Error from server \((?P<reason>\w+)\): )?(?:error when [^:]+: )?'
                        r'(?:(?:The )?(?P<kind>[A-Za-z]+)(?:\.[a-z0-9.]+)? "(?P<name>[^"]+)" '
                        r'is (?:invalid|forbidden): )?'
                        r'(?P<message>.+)')


_TYPED_PATCH = re.compile(r'Error from server(?: \(\w+\))?: failed to create typed patch object '
                          r'\((?:([^/;]+)/)?([^;]+); [^,]+, Kind=(\w+)\): (?:errors: ?)?(.+)')


def _rejections(stderr: str, docs: list[dict[str, Any]]) -> list[str]:
    """One line per object the server rejected: 'Kind namespace/name rejected: reason'."""
    out: list[str] = []
    names: dict[tuple[str, str], ObjectRef] = {}
    for d in docs:
        named = ObjectRef.of(d)
        names.setdefault((named.kind, named.name), named)
    # an error starts a line; the indented lines after it (schema errors of one object) belong to it
    blocks: list[str] = []
    for raw in stderr.splitlines():
        if raw.startswith("Warning:") or re.match(r"[IWE]\d{4} ", raw):
            continue  # admission warnings and client-go log lines are not rejections
        if raw.strip() and not raw[:1].isspace():
            blocks.append(raw.strip())
        elif blocks and raw[:1].isspace() and raw.strip():
            blocks[-1] += ("; " if not blocks[-1].endswith(":") else " ") + raw.strip()
    for line in blocks:
        if any(s in line for s in ("no matches for kind", "Unable to connect", "connection refused",
                                   "could not find the requested resource", "was refused")):
            return []  # not about one object: explain_kubectl_error says what to do
        typed = _TYPED_PATCH.match(line)
        if typed:  # a schema (structural) error found while building the server-side apply patch
            ns, name, kind, message = typed.groups()
            found = names.get((kind, name))
            what = str(found) if found else f"{kind} {ns}/{name}"
            out.append(f"{what} rejected by the API server: {message.strip()}")
            continue
        m = _REJECTION.match(line)
        assert m is not None  # the pattern's tail matches any text
        kind, name, message = m.group("kind"), m.group("name"), m.group("message")
        ref: ObjectRef | None = names.get((kind or "", name or ""))
        if ref is None and kind is None:
            # "namespaces \"x\" not found" style messages still name the object in the text
            ref = next((r for (k, n), r in names.items() if f'"{n}"' in line), None)
        what = str(ref) if ref else (f"{kind} {name}" if kind else "an object")
        out.append(f"{what} rejected by the API server: {message.strip()}")
    return out


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
        printable = st.get("printableStatus")
        if st.get("ready"):
            return State.READY, printable or "Running"
        if spec.get("runStrategy") == "Halted" or spec.get("running") is False:
            return State.STOPPED, printable or "Halted"
        if printable in ("CrashLoopBackOff", "ErrorUnschedulable", "ErrImagePull", "ImagePullBackOff",
                         "ErrorPvcNotFound", "DataVolumeError"):
            return State.FAILED, printable
        if controller is False and not printable:
            # no KubeVirt controller in this cluster: the API server accepting the object is all there is
            return State.PENDING, ACCEPTED
        return State.PENDING, printable or "waiting for KubeVirt"
    return State.RUNNING, ""


def _settled(status: WorkloadStatus) -> bool:
    """Done waiting: ready, deliberately stopped, or a VM the API server accepted where nothing will run it."""
    return status.state in (State.READY, State.RUNNING, State.STOPPED) or status.detail == ACCEPTED


def _age(obj: dict[str, Any]) -> float | None:
    stamp = obj["metadata"].get("creationTimestamp")
    if not stamp:
        return None
    return max(0.0, time.time() - calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))


def pod_images(docs: Iterable[dict[str, Any]]) -> dict[str, tuple[str, dict[str, str]]]:
    """Every image the pod templates of `docs` run -> (its workload, the pod's nodeSelector)."""
    out: dict[str, tuple[str, dict[str, str]]] = {}
    for d in docs:
        if d.get("kind") not in ("Deployment", "StatefulSet"):
            continue
        pod = ((d.get("spec") or {}).get("template") or {}).get("spec") or {}
        for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
            if c.get("image"):
                out.setdefault(c["image"], ((d.get("metadata") or {}).get("name", ""), pod.get("nodeSelector") or {}))
    return out


def _matches(node_selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in node_selector.items())


def _node_has(node: dict[str, Any], ref: str) -> bool:
    """A node can run `ref` when it reports holding it, or when it is one of kwok's fake nodes (which run nothing)."""
    if ((node.get("metadata") or {}).get("annotations") or {}).get("kwok.x-k8s.io/node") == "fake":
        return True
    names = {n for img in (node.get("status") or {}).get("images") or [] for n in img.get("names") or []}
    return ref in names or f"docker.io/{ref}" in names
