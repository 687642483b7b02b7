"""soc-test boards as Kubernetes Jobs (the kubernetes backend's `run_boards`).

Each board becomes one Job whose pod boots the board's QEMU (TCG: a pod has no /dev/kvm) on the same guest program
the local path boots; the serial console is the pod's log, read back through the API with kubelet's timestamps and
handed to the same console protocol code. The images travel as `apply`'s do: built here (vm/board_image.py) and
loaded into a kind cluster's nodes, never pulled from a registry. The scheduler spreads the pods by their requests;
a board that fits on no node fails at once with the scheduler's reason, one whose node is only busy waits. Jobs
carry the stack labels and a ttl (ps and gc see them); an interrupted run deletes every Job and pod it made.
"""
from __future__ import annotations

import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from hybridorch import proc
from hybridorch.core.durations import parse_duration, parse_time
from hybridorch.core.labels import LABEL_TTL, LABEL_WORKLOAD, object_labels
from hybridorch.core.runtime import Runtime
from hybridorch.core.schema import parse_quantity
from hybridorch.errors import BackendError, InputError
from hybridorch.backends.base import Board, BoardRun
from hybridorch.backends.events import Event, EventKind
from hybridorch.vm import console
from hybridorch.vm.host import HOST_ARCH

if TYPE_CHECKING:
    from hybridorch.backends.kubernetes import KubernetesBackend
    from hybridorch.vm.board_image import QemuImage

NAMESPACE = "hybridorch-soc"
LABEL_RUN = "hybridorch.dev/soc-run"            # every Job and pod of one soc-test run
START_SLACK = 15      # s of a pod's deadline for its init container and QEMU's start (the local timeout has neither)
JOB_SLACK = 120       # s the Job's own deadline adds: a backstop for a pod that never starts
NO_POD_AFTER = 60.0   # s: a Job that made no pod by then never will (quota, admission)
POLL = 0.5            # s between looks at the run's pods
IMAGE_MISSING = frozenset({"ErrImageNeverPull", "ErrImagePull", "ImagePullBackOff", "InvalidImageName"})
CANNOT_START = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                          "CrashLoopBackOff"})


# --- pure pieces -------------------------------------------------------------------------------------------------

def job_name(board: str, run_id: str) -> str:
    """soc-<board>-<run>: at most 63 characters (the pods' job-name label), unique per run."""
    return f"soc-{board[:46].rstrip('-')}-{run_id}"


def pod_memory_mib(board: Board) -> int:
    """The QEMU container's memory request and limit (vm/board_image.py: guest RAM, TCG's cache, QEMU's own)."""
    from hybridorch.vm.board_image import container_memory_mib

    return container_memory_mib(board.memory_mib)


def parse_log_line(line: str) -> tuple[float | None, str]:
    """A `timestamps=true` log line as (epoch seconds, text); (None, line) when it carries no timestamp."""
    stamp, sep, text = line.partition(" ")
    when = parse_time(stamp) if sep or stamp else None
    return (when, text) if when is not None else (None, line)


def _quantity(text: Any) -> Decimal:
    value = parse_quantity(str(text)) if text is not None else None
    return value if value is not None else Decimal(0)


def fits_nowhere(cpus: int, memory_mib: int, arch: str, nodes: list[dict[str, Any]]) -> str | None:
    """Why no node could ever run the board, even empty (the largest node's allocatable, its arch and taints), or
    None when one could: then an Unschedulable pod only waits for a node to free up."""
    best = ""
    for n in nodes:
        if not _schedulable(n, arch):
            continue
        meta, alloc = n.get("metadata") or {}, (n.get("status") or {}).get("allocatable") or {}
        cpu, mem = _quantity(alloc.get("cpu")), _quantity(alloc.get("memory"))
        if cpu >= cpus and mem >= memory_mib * 2**20:
            return None
        best = best or f"node {meta.get('name')} has {alloc.get('cpu')} CPUs and {int(mem) // 2**20}Mi allocatable"
    if not best:
        return f"no schedulable untainted node of arch {arch}"
    return f"it needs {cpus} CPUs and {memory_mib}Mi; {best}"


def _schedulable(n: dict[str, Any], arch: str) -> bool:
    spec = n.get("spec") or {}
    return ((n.get("metadata") or {}).get("labels") or {}).get("kubernetes.io/arch") == arch and \
        not spec.get("unschedulable") and \
        not any(t.get("effect") in ("NoSchedule", "NoExecute") for t in spec.get("taints") or [])


def eligible_nodes(nodes: list[dict[str, Any]], arch: str) -> list[str]:
    """The nodes a board's pod may land on: its arch, schedulable, untainted (its pod tolerates nothing)."""
    return [str((n.get("metadata") or {}).get("name")) for n in nodes if _schedulable(n, arch)]


def waiting_reasons(pod: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(container, reason, message) of every container of the pod kubelet is holding back."""
    status = pod.get("status") or {}
    out = []
    for c in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            out.append((str(c.get("name")), str(waiting["reason"]), str(waiting.get("message") or "")))
    return out


def unschedulable(pod: dict[str, Any]) -> str | None:
    """The scheduler's message when it found no node for the pod."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and \
                cond.get("reason") == "Unschedulable":
            return " ".join(str(cond.get("message") or "no node fits").split())
    return None


def qemu_state(pod: dict[str, Any]) -> dict[str, Any]:
    """The QEMU container's state (running / terminated / waiting), {} before kubelet reports it."""
    for c in (pod.get("status") or {}).get("containerStatuses") or []:
        if c.get("name") == "qemu":
            return dict(c.get("state") or {})
    return {}


def job_manifest(board: Board, job: str, *, run_id: str, namespace: str, qemu: QemuImage, board_image_ref: str,
                 initrd_bytes: int, ttl: str) -> dict[str, Any]:
    """The board's Job, rendered from templates/kubernetes/soc-job.yaml.j2 and checked against the Job schema."""
    import yaml
    from hybridorch.render.sandbox import Templates
    from hybridorch.render import validate
    from hybridorch.vm import board_image

    labels = {**object_labels(board.name, board.name, str(Runtime.NESTED)), LABEL_RUN: run_id, LABEL_TTL: ttl}
    j = {
        "name": job, "namespace": namespace, "labels": labels,
        "pod_deadline": board.timeout + START_SLACK, "job_deadline": board.timeout + START_SLACK + JOB_SLACK,
        "ttl_seconds": int(parse_duration(ttl)), "node_selector": {"kubernetes.io/arch": HOST_ARCH},
        "board_image": board_image_ref, "qemu_image": qemu.ref,
        "copy_command": list(board_image.INIT_COMMAND), "work_dir": board_image.BOARD_INITRD_DIR,
        "uid": board_image.RUN_AS_UID,
        "command": board_image.qemu_args(board.arch, board.machine, board.cpus, board.memory_mib,
                                         qemu.kernels[board.arch], board_image.BOARD_INITRD),
        "cpu": str(board.cpus), "memory": f"{pod_memory_mib(board)}Mi",
        "work_size": f"{initrd_bytes // 2**20 + 16}Mi",   # the initramfs, with room to spare
    }
    doc: dict[str, Any] = yaml.safe_load(Templates().text("kubernetes/soc-job.yaml.j2", j=j))  # our own output
    problems = validate.object_problems(doc)
    if problems:   # our template: a bug, said in one line
        raise BackendError(f"the Job of board {board.name} is invalid: {problems[0]}")
    return doc


# --- one board while it runs ---------------------------------------------------------------------------------------

@dataclass
class _Track:
    board: Board
    job: str
    created: float                       # time.monotonic() of the Job's creation
    node: str = ""
    pod: str = ""
    scheduled: float | None = None       # monotonic, as seen here
    running: float | None = None         # monotonic: QEMU's log opened or kubelet said running
    told_running: bool = False
    told_booted: bool = False
    told_waiting: bool = False
    closing: bool = False
    # what the follower read: (kubelet's timestamp, line); whether the guest said DONE and the log then ended
    lines: list[tuple[float | None, str]] = field(default_factory=list)
    booted_at: float | None = None       # the BOOTED line's timestamp (epoch)
    done: bool = False
    ended: bool = False


class _Run:
    """One soc-test run on a cluster: its Jobs, their pods, and the events about them."""

    def __init__(self, backend: KubernetesBackend, namespace: str, qemu: QemuImage, images: dict[str, str],
                 ttl: str):
        from kubernetes import client

        self.backend = backend
        self.events = backend.events
        api = backend.api_client()
        self.core, self.batch = client.CoreV1Api(api), client.BatchV1Api(api)
        self.namespace = namespace
        self.qemu = qemu
        self.images = images             # board -> its initramfs image
        self.initrd_bytes: dict[str, int] = {}
        self.ttl = ttl
        self.run_id = secrets.token_hex(4)
        self.jobs: list[str] = []
        self.phases: dict[str, float] = {}

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return _call(self.backend, what, fn, *args, **kwargs)

    # --- Jobs ----------------------------------------------------------------------------------------------------

    def create(self, board: Board) -> _Track:
        job = job_name(board.name, self.run_id)
        body = job_manifest(board, job, run_id=self.run_id, namespace=self.namespace, qemu=self.qemu,
                            board_image_ref=self.images[board.name], initrd_bytes=self.initrd_bytes[board.name],
                            ttl=self.ttl)
        self.call(f"creating Job {self.namespace}/{job}", self.batch.create_namespaced_job, self.namespace, body)
        self.jobs.append(job)
        self.events(Event(board.name, EventKind.PENDING, f"Job {self.namespace}/{job} created"))
        return _Track(board, job, time.monotonic())

    def pods(self) -> dict[str, dict[str, Any]]:
        """The run's pods by board (one per Job: nothing is retried)."""
        from hybridorch.backends.kubewatch import list_json

        data = self.call("listing the soc-test pods", list_json, self.core.list_namespaced_pod,
                         namespace=self.namespace, label_selector=f"{LABEL_RUN}={self.run_id}")
        out: dict[str, dict[str, Any]] = {}
        for pod in data.get("items") or []:
            meta = pod.get("metadata") or {}
            if meta.get("deletionTimestamp"):
                continue
            out.setdefault(str((meta.get("labels") or {}).get(LABEL_WORKLOAD)), pod)
        return out

    def delete(self, jobs: list[str], wait: float = 60) -> None:
        """Delete Jobs and their pods now (no grace: a board's QEMU keeps nothing worth flushing)."""
        from kubernetes import client

        for job in jobs:
            try:
                self.batch.delete_namespaced_job(job, self.namespace, grace_period_seconds=0,
                                                 propagation_policy="Background")
            except Exception:   # gone already, or the cluster went away: the pods below are what matters
                pass
        selector = f"job-name={jobs[0]}" if len(jobs) == 1 else f"{LABEL_RUN}={self.run_id}"
        try:
            self.core.delete_collection_namespaced_pod(self.namespace, label_selector=selector,
                                                       grace_period_seconds=0,
                                                       body=client.V1DeleteOptions(grace_period_seconds=0))
        except Exception:
            return
        proc.wait_until(lambda: not self._left(selector), wait, poll=0.5)

    def _left(self, selector: str) -> bool:
        try:
            return bool(self.core.list_namespaced_pod(self.namespace, label_selector=selector).items)
        except Exception:
            return False

    # --- following one board ---------------------------------------------------------------------------------------

    def follow(self, t: _Track) -> None:
        """Stream QEMU's log (the console) from the moment it opens: the booting and booted progress lines, and the
        result as soon as the guest said DONE and QEMU ended, without waiting for kubelet's next status report."""
        def run() -> None:
            while not t.closing:
                try:
                    stream = self.core.read_namespaced_pod_log(t.pod, self.namespace, container="qemu",
                                                               follow=True, timestamps=True, _preload_content=False)
                    break
                except Exception:   # 400 while the init container runs: try again shortly
                    time.sleep(0.2)
            if t.closing:
                return
            t.running = t.running or time.monotonic()
            try:
                for raw in proc.split_stream(stream.stream(4096)):
                    when, line = parse_log_line(raw)
                    t.lines.append((when, line))
                    if t.booted_at is None and console.is_booted(line):
                        t.booted_at = when
                    t.done = t.done or console.is_done(line)
            except Exception:   # the connection broke: the whole log is read when the pod ends
                return
            t.ended = True

        threading.Thread(target=run, name=f"soc-log-{t.board.name}", daemon=True).start()

    def stop_following(self, t: _Track) -> None:
        """Stop waiting for the log to open. An open stream is left to its daemon thread, which ends with the pod:
        closing it from here blocks on the reader's socket (seconds), and handing its connection back to the pool
        mid-stream would stall the next API call that gets it."""
        t.closing = True

    def step(self, t: _Track, pod: dict[str, Any] | None, nodes: list[dict[str, Any]]) -> BoardRun | None:
        """Look at one board's pod: say what changed; its result once it ended (or can never start)."""
        now = time.monotonic()
        b = t.board
        if pod is None:
            if now - t.created > NO_POD_AFTER:
                return self.failed(t, f"Job {self.namespace}/{t.job} made no pod in {NO_POD_AFTER:.0f}s "
                                      f"(`kubectl -n {self.namespace} describe job {t.job}` says why)")
            return None
        t.pod = str((pod.get("metadata") or {}).get("name"))
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        if node and not t.node:
            t.node, t.scheduled = node, now
            self.events(Event(b.name, EventKind.SCHEDULED, f"pod {t.pod} on node {node}"))
            self.follow(t)
        if not node:
            return self.unscheduled(t, pod, nodes)
        held = self.held(t, pod, node)
        if held is not None:
            return held
        state = qemu_state(pod)
        if t.running is None and ("running" in state or "terminated" in state):
            t.running = now
        if t.running is not None and not t.told_running:
            t.told_running = True
            self.events(Event(b.name, EventKind.BOOTING, f"QEMU {b.arch} (tcg) on node {node}"))
        if t.booted_at is not None and not t.told_booted:
            t.told_booted = True
            start = self._started(t, state)
            after = f"{t.booted_at - start:.1f}s after QEMU started" if start is not None else "guest /init runs"
            self.events(Event(b.name, EventKind.BOOTED, after))
        if t.done and t.ended:   # the whole console is here: no need to wait for the pod's phase
            self.stop_following(t)
            return self.finished(t, pod, list(t.lines))
        if t.running is not None and now - t.running > b.timeout:
            # the board's timeout counts from QEMU's start, as locally; the pod's deadline (with the start's
            # slack) stays the cluster's own backstop should this run die
            self.stop_following(t)
            self.call(f"stopping pod {t.pod}", self.core.delete_namespaced_pod, t.pod, self.namespace,
                      grace_period_seconds=0)
            return self.finished(t, pod, list(t.lines), timed_out=True)
        phase = (pod.get("status") or {}).get("phase")
        if phase not in ("Succeeded", "Failed"):
            return None
        self.stop_following(t)
        try:
            text = self.core.read_namespaced_pod_log(t.pod, self.namespace, container="qemu", timestamps=True)
        except Exception as err:
            from hybridorch.backends.kubewatch import explain_api_error

            return self.failed(t, f"its console could not be read: {explain_api_error(err, self.backend.where)}")
        return self.finished(t, pod, [parse_log_line(raw) for raw in str(text or "").splitlines()])

    def unscheduled(self, t: _Track, pod: dict[str, Any], nodes: list[dict[str, Any]]) -> BoardRun | None:
        """A pod without a node: a board no node could ever hold fails now (its Job deleted); one that waits for
        a busy node is said once and waits."""
        why = unschedulable(pod)
        if why:
            never = fits_nowhere(t.board.cpus, pod_memory_mib(t.board), HOST_ARCH, nodes)
            if never:
                self.delete([t.job], wait=10)
                return self.failed(t, f"cannot be scheduled: {never} ({why})")
            if not t.told_waiting:
                t.told_waiting = True
                self.events(Event(t.board.name, EventKind.PENDING, f"waiting for a node: {why}"))
        return None

    def held(self, t: _Track, pod: dict[str, Any], node: str) -> BoardRun | None:
        """Containers kubelet cannot start: a missing image ends the run (bad input, exit 2), anything else
        this board."""
        for name, reason, message in waiting_reasons(pod):
            if reason in IMAGE_MISSING:
                image = self.qemu.ref if name == "qemu" else self.images[t.board.name]
                raise InputError(f"image {image} is not on node {node} of {self.backend.where}: soc-test pods run "
                                 "images built here, never pulled (imagePullPolicy Never); load it into every node "
                                 f"(`kind load docker-image {image}`) or drop --no-load; nothing was left running")
            if reason in CANNOT_START:
                self.delete([t.job], wait=10)
                return self.failed(t, f"container {name} cannot start on node {node}: {reason}"
                                      f"{': ' + message if message else ''}")
        return None

    @staticmethod
    def _started(t: _Track, state: dict[str, Any]) -> float | None:
        """When QEMU started (epoch): kubelet's startedAt (whole seconds, so times after it read up to 1 s long),
        else the first console line's timestamp."""
        stamp = parse_time(((state.get("running") or state.get("terminated") or {}).get("startedAt")))
        return stamp if stamp is not None else next((when for when, _ in t.lines if when is not None), None)

    def failed(self, t: _Track, error: str) -> BoardRun:
        """A board that never ran (the caller's on_finished says so, as for any board that ended)."""
        return BoardRun(t.board.name, None, error, t.node, self._phases(t, None))

    def finished(self, t: _Track, pod: dict[str, Any], stamped: list[tuple[float | None, str]],
                 timed_out: bool = False) -> BoardRun:
        """The board's GuestRun from its console lines (kubelet's timestamps) and the pod's end."""
        from hybridorch.vm.boot import ConsoleLine, GuestRun, last_lines

        b = t.board
        status = pod.get("status") or {}
        state = qemu_state(pod)
        term = state.get("terminated") or {}
        started = self._started(t, state)
        stamps = [when for when, _ in stamped if when is not None]
        ended = parse_time(term.get("finishedAt")) or (stamps[-1] if stamps else None)
        lines = [ConsoleLine(max((when - started) if when is not None and started is not None else 0.0, 0.0),
                             line.rstrip("\r")) for when, line in stamped]
        texts = "\n".join(ln.text for ln in lines)
        booted = any(console.is_booted(ln.text) for ln in lines)
        done = any(console.is_done(ln.text) for ln in lines)
        timed_out = (timed_out or status.get("reason") == "DeadlineExceeded") and not done
        seconds = (ended - started) if started is not None and ended is not None else time.monotonic() - t.created
        if timed_out:
            seconds = max(seconds, float(b.timeout))
        run = GuestRun(b.arch, "tcg", tuple(lines), booted, done, timed_out, max(seconds, 0.0), last_lines(texts))
        boot_at = next((ln.at for ln in lines if console.is_booted(ln.text)), None)
        error = ""
        if term.get("reason") == "OOMKilled":
            error = (f"QEMU was killed for memory on node {t.node} (its limit is the board's memory plus TCG's "
                     f"cache and QEMU's own); last console lines: {last_lines(texts)}")
        elif not booted:
            if timed_out:
                error = (f"the {b.arch} guest did not boot within {b.timeout}s (tcg); last console lines: "
                         f"{last_lines(texts)}")
            else:
                qemu_said = str(term.get("message") or "").strip().splitlines()
                why = f" (QEMU exit code {term.get('exitCode')}{': ' + qemu_said[-1] if qemu_said else ''})"
                error = f"the {b.arch} guest stopped before booting{why}; last console lines: {last_lines(texts)}"
        phases = self._phases(t, boot_at)
        if boot_at is not None:
            phases["tests"] = max(run.seconds - boot_at, 0.0)
        return BoardRun(b.name, None if error and not booted else run, error, t.node, phases)

    def _phases(self, t: _Track, boot_at: float | None) -> dict[str, float]:
        out = dict(self.phases)
        if t.scheduled is not None:
            out["pending"] = t.scheduled - t.created
            if t.running is not None:
                out["start"] = max(t.running - t.scheduled, 0.0)
        if boot_at is not None:
            out["boot"] = boot_at
        return out


# --- the run ---------------------------------------------------------------------------------------------------------

def run_boards(backend: KubernetesBackend, boards: list[Board], *, parallel: int, ttl: str,
               namespace: str = NAMESPACE, on_finished: Callable[[BoardRun], None] | None = None) -> list[BoardRun]:
    """Every board as a Job, at most `parallel` at a time; their results in `boards` order."""
    from hybridorch.backends.kubewatch import list_json

    try:
        api = backend.api_client()
    except BackendError as err:   # no kubeconfig, no such context: what the user pointed at is not there
        raise InputError(str(err)) from None
    from kubernetes import client

    nodes = _call(backend, "listing the nodes", list_json, client.CoreV1Api(api).list_node).get("items") or []
    qemu, images, sizes, phases = _images(backend, boards, nodes)
    run = _Run(backend, namespace, qemu, images, ttl)
    run.phases, run.initrd_bytes = phases, sizes
    _ensure_namespace(run)
    queue = list(boards)
    active: dict[str, _Track] = {}
    done: dict[str, BoardRun] = {}
    try:
        while queue or active:
            while queue and len(active) < max(1, parallel):
                b = queue.pop(0)
                active[b.name] = run.create(b)
            pods = run.pods()
            for name, t in list(active.items()):
                result = run.step(t, pods.get(name), nodes)
                if result is not None:
                    done[name] = result
                    del active[name]
                    if on_finished:
                        on_finished(result)
            if active:
                time.sleep(POLL)
    except BaseException:
        for t in active.values():
            run.stop_following(t)
        # Ctrl-C, a lost cluster, an image the nodes lack: nothing of this run stays behind
        run.delete(list(run.jobs))
        raise
    return [done[b.name] for b in boards]


def _call(backend: KubernetesBackend, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One API call; its failure (ApiException, urllib3 errors) as one line."""
    from hybridorch.backends.kubewatch import explain_api_error

    try:
        return fn(*args, **kwargs)
    except Exception as err:
        raise BackendError(f"{what}: {explain_api_error(err, backend.where)}") from None


def _images(backend: KubernetesBackend, boards: list[Board],
            nodes: list[dict[str, Any]]) -> tuple[QemuImage, dict[str, str], dict[str, int], dict[str, float]]:
    """Build the QEMU image and one initramfs image per board here, and load them into a kind cluster's nodes."""
    from hybridorch.backends.kind import kind_cluster_name, load_images
    from hybridorch.vm import board_image
    from hybridorch.vm.boot import build_board_initrd

    started = time.monotonic()
    try:
        qemu = board_image.qemu_image(_image_arches(boards))
    except BackendError as err:   # no emulator for a plan's arch on this machine: the image cannot have one
        raise InputError(f"the QEMU image cannot be built: {err}") from None
    if not any((n.get("metadata") or {}).get("labels", {}).get("kubernetes.io/arch") == HOST_ARCH
               for n in nodes):
        raise InputError(f"{backend.where} has no node of arch {HOST_ARCH}, the arch of the QEMU image built "
                         "here: run soc-test against a cluster with such nodes, or with --target local")
    images: dict[str, str] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="hybridorch-soc-") as tmp:
        for b in boards:
            initrd = build_board_initrd(b.arch, b.program, Path(tmp) / b.name)
            sizes[b.name] = initrd.stat().st_size
            images[b.name] = board_image.board_image(b.name, initrd)
    phases = {"images": time.monotonic() - started}
    cluster = kind_cluster_name(backend.current_context(),
                                [(n.get("spec") or {}).get("providerID", "") for n in nodes])
    if backend.load and cluster is not None:
        started = time.monotonic()
        # only where a board's pod may run: a tainted control plane never gets one
        load_images(cluster, [qemu.ref, *images.values()], backend.events, only=eligible_nodes(nodes, HOST_ARCH))
        phases["load"] = time.monotonic() - started
    return qemu, images, sizes, phases


def _image_arches(boards: list[Board]) -> list[str]:
    """The boards' arches, and every other arch this machine can emulate and has a guest for: one QEMU image for
    every run, loaded once, instead of one per combination of arches."""
    from hybridorch.render.domain import MACHINES
    from hybridorch.vm.guestimage import guest_dir
    from hybridorch.vm.host import qemu_binary

    wanted = {b.arch for b in boards}
    for arch in MACHINES:
        if arch in wanted or not (guest_dir(arch) / "guest.json").exists():
            continue
        try:
            qemu_binary(arch)
        except BackendError:
            continue
        wanted.add(arch)
    return sorted(wanted)


def _ensure_namespace(run: _Run) -> None:
    """The run's namespace, made (labelled as ours) when it is missing."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from hybridorch.core.labels import LABEL_MANAGED, MANAGED_BY

    def read() -> bool:
        try:
            run.core.read_namespace(run.namespace)
            return True
        except ApiException as err:
            if err.status == 404:
                return False
            raise

    def create() -> None:
        body = client.V1Namespace(metadata=client.V1ObjectMeta(name=run.namespace,
                                                               labels={LABEL_MANAGED: MANAGED_BY}))
        try:
            run.core.create_namespace(body)
        except ApiException as err:
            if err.status != 409:   # 409: made meanwhile by another run
                raise

    if not run.call(f"reading namespace {run.namespace}", read):
        run.call(f"creating namespace {run.namespace}", create)
