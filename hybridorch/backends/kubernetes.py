"""The kubernetes backend: server-side apply of a rendered stack through kubectl, then wait, prune and delete.

Apply, prune and delete go through the kubectl binary; waiting and status read through the `kubernetes` client
(kubewatch.py, imported lazily). Before applying, the stack's locally built images are loaded into the nodes of a
kind cluster (kind.py), or refused when the nodes of another cluster cannot have them. Failures become one-line
BackendErrors that say what to do. Nothing here prints: progress goes to the `events` sink (backends.events).

This module applies; its helpers do the rest: kube_api (kubectl and its errors), kube_objects (kinds, object
names), kube_images (images for the nodes), kube_status (status, waiting), kube_remove (prune, delete, gc).
"""
from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterable, Iterator

from hybridorch import proc
from hybridorch.errors import BackendError
from hybridorch.core.labels import LABEL_STACK, LABEL_WORKLOAD, selector
from hybridorch.backends import kube_images, kube_remove, kube_status, kubernetes_inventory, kubevirt_snapshots
from hybridorch.backends.base import (Backend, Board, BoardRun, LiveFacts, LockNotice, Managed, Removal, Snapshot,
                                     WorkloadStatus)
from hybridorch.backends.kube_api import KUBECTL_MISSING, REQUEST_TIMEOUT, explain_kubectl_error, find_kubectl
from hybridorch.backends.kubeconfig import check_kubeconfig
from hybridorch.backends.kube_objects import (DATA_KINDS, IGNORED_RESOURCES, KIND_ORDER, KINDS, ObjectRef,
                                              applied_events)

if TYPE_CHECKING:
    from hybridorch.core.plan import Plan
    from hybridorch.render.writer import Rendered

FIELD_MANAGER = "hybridorch"


class ApplyRejected(BackendError):
    """The API server rejected some objects of a server-side dry run; nothing was applied."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}; nothing was applied")

    def lines(self) -> list[str]:
        return [f"{p}; nothing was applied" for p in self.problems]


class KubernetesBackend(Backend):
    """Server-side apply through kubectl: dry run everything, apply, prune what left the stack, wait."""

    name = "kubernetes"

    def __init__(self, context: str | None = None, namespace_prefix: str = "", kubeconfig: str | None = None,
                 load: bool = True, **options: Any) -> None:
        super().__init__(context=context, namespace_prefix=namespace_prefix, kubeconfig=kubeconfig, **options)
        self.context = context
        self.namespace_prefix = namespace_prefix
        self.kubeconfig = kubeconfig
        self.load = load   # load local images into kind nodes (and check other clusters' nodes have them)
        self._api: Any = None
        self._kubectl_path: str | None = None
        self._kubeconfig_checked = False
        self._resources: set[str] | None = None
        self._namespaced: list[str] | None = None

    # --- kubectl ----------------------------------------------------------------------------------------

    @property
    def where(self) -> str:
        return f"context {self.context}" if self.context else "the current kubeconfig context"

    def kubectl_command(self, *args: str) -> list[str]:
        if not self._kubeconfig_checked:
            # kubectl would wait forever on a FIFO and quote a broken file in its error: the safe reader goes first
            check_kubeconfig(self.kubeconfig)
            self._kubeconfig_checked = True
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

    def namespaced_resources(self) -> list[str]:
        """Every namespaced resource the cluster lists (events aside): what a namespace may hold."""
        if self._namespaced is None:
            out = self.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name").stdout
            self._namespaced = [r for r in out.split() if r not in IGNORED_RESOURCES]
        return self._namespaced

    # --- apply ------------------------------------------------------------------------------------------

    def up(self, plan: Plan, rendered: Rendered, *, wait: bool = True, timeout: float = 300) -> list[WorkloadStatus]:
        docs = _ordered(rendered.documents)
        stack = plan.stack.name
        if self.load:
            kube_images.prepare_images(self, plan, docs)
        created = self._ensure_namespaces(docs)
        try:
            self._dry_run(docs)
        except BackendError:
            self._remove_namespaces(created)
            raise
        self.kubectl("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "--force-conflicts", "-f", "-",
                     stdin=_stream(docs), timeout=max(120, timeout))
        for event in applied_events(docs):
            self.events(event)
        self.prune(stack, {ObjectRef.of(d) for d in docs})
        if wait:
            return kube_status.wait_ready(self, plan, timeout)
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
        kube_remove.delete(self, [ObjectRef("Namespace", "", n) for n in names])

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
        removal = kube_remove.remove_objects(self, stack, kube_remove.unshared(self, stack, stale), delete_data=False)
        return list(removal.removed)

    # --- status and waiting (kube_status.py) -----------------------------------------------------------

    def status(self, plan: Plan) -> list[WorkloadStatus]:
        return kube_status.stack_status(self, plan)

    def api_client(self) -> Any:
        if self._api is None:
            from hybridorch.backends.kubewatch import api_client

            self._api = api_client(self.kubeconfig, self.context)
        return self._api

    def lock(self, stack: str, *, command: str, wait: bool = True,
             on_wait: LockNotice | None = None) -> ContextManager[None]:
        """The stack's Lease on the cluster (kube_lock.py): runs from any machine serialize there."""
        from hybridorch.backends.kube_lock import stack_lease

        return stack_lease(self.api_client(), stack, command=command, where=self.where, wait=wait, on_wait=on_wait)

    def current_context(self) -> str | None:
        """The context kubectl uses: --context, else the kubeconfig's current-context."""
        if self.context:
            return self.context
        done = self.kubectl("config", "current-context", check=False)
        return done.stdout.strip() or None

    # --- logs; delete (kube_remove.py) -----------------------------------------------------------------

    def logs(self, plan: Plan, workload: str, *, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        objs = [o for o in kube_status.workload_objects(self, plan.stack.name)
                if o["metadata"].get("labels", {}).get(LABEL_WORKLOAD) == workload]
        if not objs:
            raise BackendError(f"workload {workload} is not in the cluster: apply the stack first")
        ns = objs[0]["metadata"]["namespace"]
        # a VM's log is its serial console, which KubeVirt's virt-launcher pod streams in its guest-console-log
        # container (the pod's other containers log libvirt and KubeVirt, not the guest)
        which = ["-c", "guest-console-log"] if objs[0]["kind"] == "VirtualMachine" else ["--all-containers"]
        args = ["logs", "-n", ns, "-l", f"{selector(plan.stack.name)},{LABEL_WORKLOAD}={workload}", *which,
                "--prefix", f"--tail={tail if tail is not None else -1}"]
        if follow:
            args.append("--follow")
        if not follow:
            yield from self.kubectl(*args).stdout.splitlines()
            return
        yield from proc.stream(self.kubectl_command(*args), what=f"kubectl logs ({self.where})", env=self._env(),
                               missing=KUBECTL_MISSING, explain=lambda err: explain_kubectl_error(err, self.where))

    def down(self, plan: Plan, *, delete_data: bool = False) -> Removal:
        return kube_remove.down(self, plan, delete_data=delete_data)

    # --- inventory and live facts (kubernetes_inventory.py), snapshots (kubevirt_snapshots.py) ------------------

    def inventory(self) -> list[Managed]:
        return kubernetes_inventory.managed_workloads(self)

    def remove(self, items: list[Managed], *, keep_data: bool = True) -> Removal:
        return kube_remove.remove(self, items, keep_data=keep_data)

    def live_facts(self, plan: Plan) -> LiveFacts:
        return kubernetes_inventory.live_objects(self, plan.stack.name)

    def run_boards(self, boards: list[Board], *, parallel: int, ttl: str,
                   on_finished: Callable[[BoardRun], None] | None = None) -> list[BoardRun]:
        """Each board as a Job in namespace `soc_namespace` (kube_soc.py)."""
        from hybridorch.backends import kube_soc

        return kube_soc.run_boards(self, boards, parallel=parallel, ttl=ttl, on_finished=on_finished,
                                   namespace=self.options.get("soc_namespace") or kube_soc.NAMESPACE)

    def snapshot_create(self, plan: Plan, workload: str, name: str) -> list[Snapshot]:
        return kubevirt_snapshots.cluster_create(self, plan, workload, name)

    def snapshot_list(self, plan: Plan, workload: str) -> list[Snapshot]:
        return kubevirt_snapshots.cluster_list(self, plan, workload)

    def snapshot_restore(self, plan: Plan, workload: str, name: str | None) -> list[Snapshot]:
        return kubevirt_snapshots.cluster_restore(self, plan, workload, name)

    def snapshot_prune(self, plan: Plan, workload: str, doomed: list[Snapshot]) -> None:
        kubevirt_snapshots.cluster_delete(self, doomed)


# --- helpers of apply -------------------------------------------------------------------------------------------

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
