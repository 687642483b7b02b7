"""The small interface every backend implements, and the registry that finds backends by name.

Backends are imported lazily by name so that commands which do not touch a runtime never pay for the
docker or kubernetes SDK import.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator

from hybridorch.core.runtime import Named, Runtime, State
from hybridorch.backends.events import EventSink, ignore
from hybridorch.errors import BackendError

if TYPE_CHECKING:
    from hybridorch.core.plan import Plan
    from hybridorch.render.writer import Rendered
    from hybridorch.vm.boot import GuestRun
    from hybridorch.vm.initramfs import GuestProgram

# target name -> "module:Class"; adding a backend is a new module plus one line here
REGISTRY: dict[str, str] = {
    "local": "hybridorch.backends.local:LocalBackend",
    "docker": "hybridorch.backends.docker:DockerBackend",
    "qemu": "hybridorch.backends.qemu:QemuBackend",
    "kubernetes": "hybridorch.backends.kubernetes:KubernetesBackend",
}


@dataclass(frozen=True)
class WorkloadStatus:
    name: str
    runtime: Runtime
    state: State                    # running | ready | pending | stopped | failed | absent
    ports: tuple[str, ...] = ()     # e.g. "127.0.0.1:8080->8080/tcp"
    accelerator: str | None = None  # kvm | tcg for VMs
    uptime_seconds: float | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        # plain strings: YAML (safe_dump) cannot represent the enums
        out = {"name": self.name, "runtime": str(self.runtime), "state": str(self.state), "ports": list(self.ports),
               "accelerator": self.accelerator,
               "uptimeSeconds": None if self.uptime_seconds is None else round(self.uptime_seconds, 1),
               "detail": self.detail}
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class Kept:
    """Something `down`/`delete` left in place on purpose: what, why, and the exact command that removes it."""

    what: str          # e.g. "PersistentVolumeClaim shop/data-db-0", "volume hybridorch-shop-db-0-data"
    reason: str        # e.g. "data (kept without --delete-data)"
    remove: str        # a command a user can paste

    def __str__(self) -> str:
        return f"kept {self.what}: {self.reason}; remove it with: {self.remove}"


@dataclass(frozen=True)
class Removal:
    """What `down`/`delete` removed, and what it kept (data without --delete-data, namespaces holding objects
    hybridorch did not make)."""

    removed: tuple[str, ...] = ()
    kept: tuple[Kept, ...] = ()

    def __add__(self, other: Removal) -> Removal:
        return Removal(self.removed + other.removed, self.kept + other.kept)

    @property
    def data_kept(self) -> bool:
        return any(k.reason.startswith("data") for k in self.kept)

    def lines(self) -> list[str]:
        """What was removed, then one "kept ..." line per thing left in place."""
        return list(self.removed) + [str(k) for k in self.kept]


# --- what `inventory` reports: everything hybridorch made on a target ------------------------------------------

class Made(Named):
    """What a local engine made (a cluster's items carry the object's own kind: Deployment, VirtualMachine...)."""

    CONTAINER = "container"
    VM = "vm"


# what runs may carry anything: a state record edited by hand or written by another version, a label someone else
# set. These read one field or say it is unknown (None), never raise; LATEST_TIME (the year 2242) bounds a start time
LATEST_TIME = 2.0**33


def record_time(value: object) -> float | None:
    """A start time (epoch seconds) as recorded, or None when it is not a plausible one (text, NaN, 1e400, < 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0 <= value < LATEST_TIME else None   # NaN fails both comparisons


def record_ttl(value: object) -> int | None:
    """A ttl's seconds, or None when it is not a duration this version reads (a number, 5,000 digits...)."""
    from hybridorch.core.durations import is_duration, parse_duration
    from hybridorch.errors import HybridorchError

    if not isinstance(value, str) or len(value) > 63 or not is_duration(value):   # a ttl is a label value: <= 63
        return None
    try:
        return parse_duration(value)
    except (ValueError, HybridorchError):
        return None


def record_count(value: object, high: int = 2**31 - 1) -> int | None:
    """A whole number in [0, high] as recorded (a replica index, a CPU count, a port), or None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= high else None


@dataclass(frozen=True)
class Managed:
    """One thing hybridorch made that runs a workload: a container, a local VM or a cluster workload object.

    Fields read from what runs are checked on construction: a start time, ttl or owner that is not what it should
    be becomes unknown and is named in `unreadable` (shown as "?"); an unknown ttl or start never expires."""

    target: str                 # local | kubernetes
    kind: str                   # a Made, or the cluster object's kind: Deployment | StatefulSet | VirtualMachine
    name: str
    namespace: str
    stack: str
    workload: str
    runtime: Runtime | None
    owner: str | None
    ttl: str | None
    created: float | None       # start time (containers, VMs) or creationTimestamp
    unreadable: tuple[str, ...] = ()   # "started", "ttl", "owner": present but not readable as written

    def __post_init__(self) -> None:
        checks = (("started", "created", self.created is None or record_time(self.created) is not None),
                  ("ttl", "ttl", self.ttl is None or self.ttl == "" or record_ttl(self.ttl) is not None),
                  ("owner", "owner", self.owner is None or isinstance(self.owner, str)))
        bad = [(what, attr) for what, attr, ok in checks if not ok]
        for _, attr in bad:
            object.__setattr__(self, attr, None)   # frozen: set once, here, before anyone reads it
        if bad:
            object.__setattr__(self, "unreadable", tuple(dict.fromkeys(self.unreadable + tuple(w for w, _ in bad))))

    def age(self, now: float) -> float | None:
        return None if self.created is None else max(0.0, now - self.created)

    def expired(self, now: float) -> bool:
        """Past its ttl; never when the ttl or the start time is unknown (gc must not remove what it cannot read)."""
        age, ttl = self.age(now), record_ttl(self.ttl)
        return ttl is not None and age is not None and age > ttl

    def shown(self, what: str, value: str | None) -> str:
        """A field as `ps` shows it: "?" when unreadable, "-" when absent."""
        return "?" if what in self.unreadable else value or "-"

    def to_dict(self, now: float) -> dict[str, Any]:
        age = self.age(now)
        return {"target": self.target, "kind": str(self.kind), "name": self.name, "namespace": self.namespace,
                "stack": self.stack, "workload": self.workload,
                "runtime": "" if self.runtime is None else str(self.runtime), "owner": self.owner,
                "ttl": self.ttl, "ageSeconds": None if age is None else round(age, 1),
                "expired": self.expired(now), "unreadable": list(self.unreadable)}


# --- what `live_facts` reports: what runs of one stack, as plain data the live audit rules read ---------------

@dataclass(frozen=True)
class LiveContainer:
    workload: str
    attrs: dict[str, Any]           # the engine's inspect document (Config, HostConfig, State, Mounts, ...)
    image_created: float | None     # None: the image is gone, its age unknown


@dataclass(frozen=True)
class LiveVM:
    workload: str
    state: dict[str, Any]           # the record the VM engine keeps beside a running VM


@dataclass(frozen=True)
class LiveFacts:
    containers: tuple[LiveContainer, ...] = ()
    vms: tuple[LiveVM, ...] = ()
    objects: tuple[dict[str, Any], ...] = ()   # cluster objects of the stack, then the snapshots of its VMs

    def __add__(self, other: LiveFacts) -> LiveFacts:
        return LiveFacts(self.containers + other.containers, self.vms + other.vms, self.objects + other.objects)


# --- snapshots of VM workloads ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Snapshot:
    name: str
    vm: str                   # the libvirt domain, or NAMESPACE/VM on a cluster
    created: float            # epoch seconds
    size: int | None = None   # bytes of saved VM state (local); None where the engine does not say
    state: str = ""           # local: running | shutoff (what a restore brings back); cluster: the phase

    def to_dict(self, now: float) -> dict[str, Any]:
        return {"name": self.name, "vm": self.vm, "created": self.created, "ageSeconds": round(now - self.created),
                "size": self.size, "state": self.state}


# --- soc-test boards on an engine that runs them elsewhere (a cluster) -----------------------------------------

@dataclass(frozen=True)
class Board:
    """One soc-test plan as an engine runs it: the emulated machine and the guest program (the same on every
    target), and `timeout` seconds for boot plus every test."""

    name: str
    arch: str
    machine: str
    cpus: int
    memory_mib: int
    timeout: int
    program: GuestProgram


@dataclass(frozen=True)
class BoardRun:
    """What came back of one board: the guest's console (None when it never ran, and `error` says why), where it
    ran, and how long each phase took (seconds: pending, start, boot, tests)."""

    board: str
    run: GuestRun | None
    error: str = ""
    node: str = ""
    phases: dict[str, float] = field(default_factory=dict)


# --- one run per stack at a time: who holds a stack's lock, and what a second run is told ----------------------

# sysexits' EX_TEMPFAIL: the stack is busy, not broken; the same command later (or without --no-wait-lock) works
LOCK_HELD_EXIT = 75


@dataclass(frozen=True)
class LockHolder:
    """The run that holds a stack's lock, as recorded in the lock (a file's record, a Lease's holderIdentity)."""

    pid: int | None         # None: the record is unreadable (being written, or from another version)
    command: str            # e.g. "hybridorch up"
    started: float | None   # epoch seconds
    host: str = ""

    def describe(self) -> str:
        import socket
        import time

        who = f"pid {self.pid}" if self.pid is not None else "another run"
        if self.host and self.host != socket.gethostname():   # a pid means little on another machine without it
            who += f" on {self.host}"
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started)) if self.started else "at an unknown time"
        return f"{who} ({self.command or 'hybridorch'}, started {when})"


def waiting_message(stack: str, holder: LockHolder) -> str:
    return f"waiting for the lock of stack {stack} held by {holder.describe()}"


def takeover_message(stack: str, holder: LockHolder) -> str:
    return f"took over the lock of stack {stack} left by {holder.describe()}, which is gone"


class LockHeld(BackendError):
    """Another run holds the stack's lock and this one was told not to wait (--no-wait-lock)."""

    exit_code = LOCK_HELD_EXIT

    def __init__(self, stack: str, holder: LockHolder):
        self.stack, self.holder = stack, holder
        super().__init__(f"stack {stack} is locked by {holder.describe()}: wait for it to finish, or run again "
                         "without --no-wait-lock to wait")


# on_wait hears one line when a run must wait for the lock, or takes over one a killed run left
LockNotice = Callable[[str], None]


class Backend(ABC):
    """up/status/logs/down for one kind of runtime. Each backend owns its SDK and raises only BackendError."""

    name = ""

    def __init__(self, **options: Any) -> None:
        self.options = options
        # progress (backends.events); left in options so the local target hands the sink to both its sides
        self.events: EventSink = options.get("events") or ignore

    @abstractmethod
    def up(self, plan: Plan, rendered: Rendered, *, wait: bool = True, timeout: float = 300) -> list[WorkloadStatus]:
        """Make the plan real; idempotent (unchanged workloads are left alone, changed ones replaced)."""

    @abstractmethod
    def status(self, plan: Plan) -> list[WorkloadStatus]:
        """The state of every workload of the plan (absent ones included)."""

    @abstractmethod
    def logs(self, plan: Plan, workload: str, *, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        """Container logs or VM console lines of one workload."""

    @abstractmethod
    def down(self, plan: Plan, *, delete_data: bool = False) -> Removal:
        """Remove everything this tool created for the stack, and nothing else. Data (volumes, claims, disks)
        outlives it unless `delete_data`; the result says what was removed and what was kept."""

    # --- what runs, across stacks (`ps`, `gc`) and for one stack (`audit --live`) ------------------------------

    @abstractmethod
    def inventory(self) -> list[Managed]:
        """Everything hybridorch made on this target that runs a workload, whatever stack file it came from."""

    @abstractmethod
    def remove(self, items: list[Managed], *, keep_data: bool = True) -> Removal:
        """Remove these items of this target's inventory (only ours: a reused name is left alone); their data
        stays, as `down` keeps it, unless not `keep_data`."""

    @abstractmethod
    def live_facts(self, plan: Plan) -> LiveFacts:
        """What runs of the plan's stack here, as the live audit reads it."""

    # --- one run per stack at a time ------------------------------------------------------------------------

    def lock(self, stack: str, *, command: str, wait: bool = True,
             on_wait: LockNotice | None = None) -> ContextManager[None]:
        """Hold the stack's lock for the duration of a `with`: up, down, gc and snapshot changes of one stack
        serialize. Held by another run: wait (`on_wait` hears why) or, without `wait`, raise LockHeld. A lock
        left by a killed run is taken over. The default is this machine's lock file (local_lock.py), right for
        every engine driven from this machine; a shared target (a cluster) keeps the lock there instead."""
        from hybridorch.backends.local_lock import stack_lock

        return stack_lock(stack, command=command, wait=wait, on_wait=on_wait)

    # --- snapshots of VM workloads: a target without them says so ----------------------------------------------

    def snapshot_create(self, plan: Plan, workload: str, name: str) -> list[Snapshot]:
        """Snapshot every replica of the workload as `name`; the snapshots made."""
        raise self.no_snapshots()

    def snapshot_list(self, plan: Plan, workload: str) -> list[Snapshot]:
        raise self.no_snapshots()

    def snapshot_restore(self, plan: Plan, workload: str, name: str | None) -> list[Snapshot]:
        """Roll every replica back to `name` (None: its newest snapshot); the snapshots restored."""
        raise self.no_snapshots()

    def snapshot_prune(self, plan: Plan, workload: str, doomed: list[Snapshot]) -> None:
        """Delete these snapshots (chosen by the caller's retention rules)."""
        raise self.no_snapshots()

    def no_snapshots(self) -> BackendError:
        return BackendError(f"snapshots are not supported on target {self.name}")

    # --- soc-test boards: a target that cannot run them says so ------------------------------------------------
    def run_boards(self, boards: list[Board], *, parallel: int, ttl: str,
                   on_finished: Callable[[BoardRun], None] | None = None) -> list[BoardRun]:
        """Run every board (at most `parallel` at a time), each on the same guest program the local path boots,
        and return their consoles in `boards` order (`on_finished` hears each as it ends); what this started is
        gone or finished when it returns (Ctrl-C included), finished runs are kept for `ttl`."""
        raise BackendError(f"soc-test does not run on target {self.name}: use --target local or kubernetes")


def get_backend(target: str, **options: Any) -> Backend:
    try:
        module_name, cls_name = REGISTRY[target].split(":")
    except KeyError:
        raise BackendError(f"unknown target {target!r}: use one of {', '.join(sorted(REGISTRY))}") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise BackendError(f"the {target} backend cannot be loaded ({err}); reinstall hybridorch") from err
    backend: Backend = getattr(module, cls_name)(**options)
    return backend
