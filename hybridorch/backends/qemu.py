"""Local VMs: `vm` and `nested` placements, and `sandboxed` ones that run in their own VM (no gVisor/Kata runtime
in Docker, or the policy's localSandbox: vm), as libvirt domains. The domain XML rendered from
templates/libvirt (render --target local) is exactly the file this backend defines and starts; KVM or TCG comes
from a real probe, port forwards and the console log live in that template.

Beside each domain, <state>/<stack>/<workload>/ holds what it boots (initramfs, or a qcow2 overlay on a cached
containerDisk, its kernel and cloud-init seed), the rendered domain.xml, the console log, the QEMU pid and a spec
hash, so `up` leaves unchanged VMs alone. `down` removes the domains that carry the stack's labels. A run killed
while a VM was defined or booting leaves a pending record (see _left_booting): the next `up` adopts that VM when it
is the wanted one and waits for it as for its own, or replaces it.

Replicas: a workload with N replicas boots N domains, replica i > 0 in <state>/<stack>/<workload>.<i>/. Only
replica 0 forwards the host ports (two VMs cannot listen on one host port); the others are identical but
reachable from nowhere, and ready when their console shows the ready marker. `logs` shows replica 0's console.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from hybridorch import proc
from hybridorch.errors import BackendError
from hybridorch.core.runtime import VM_RUNTIMES, Runtime
from hybridorch.vm.guestimage import load_guest
from hybridorch.vm.initramfs import GuestProgram, build_initrd
from hybridorch.core.labels import LABEL_REPLICA, LABEL_STACK, LABEL_WORKLOAD, replica_dir, replica_path, replica_title
from hybridorch.vm import disks, libvirt
from hybridorch.vm.boot import GuestVM, check_port_free, run_guest
from hybridorch.render.domain import AUTO_PORT, MACHINES, Forward, forwards_in, workload_forwards
from hybridorch.vm.host import accelerator_for, local_facts, qemu_binary, read_pid, read_state, state_root
from hybridorch.vm.image_export import DOCKER_PREFIX, materialize
from hybridorch.vm.programs import program_for
from hybridorch.backends import qemu_inventory, qemu_snapshots
from hybridorch.backends.qemu_status import replicas_status, sandbox_reason, wait_vm_ready
from hybridorch.backends.base import (Backend, LiveFacts, Managed, Removal, Snapshot, WorkloadStatus,
                                      record_count)
from hybridorch.backends.events import Event, EventKind

if TYPE_CHECKING:
    from hybridorch.core.plan import Plan
    from hybridorch.core.policy import Placement
    from hybridorch.render.writer import Rendered

__all__ = ["QemuBackend", "run_guest", "state_root", "qemu_binary", "MACHINES", "Forward",
           "program_for", "materialize", "accelerator_for"]
_forwards = workload_forwards


# --- the backend -------------------------------------------------------------------------------------

@dataclass
class _Desired:
    placement: Placement
    program: GuestProgram
    forwards: tuple[Forward, ...]
    digest: str = ""
    workdir: Path = field(default_factory=Path)
    replica: int = 0
    xml: str = ""
    seed: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return vm_label(self.placement.name, self.replica)


vm_label = replica_title   # a VM replica in messages


def _of_replica(replica: int) -> str:
    """What an event's detail adds for replica i > 0 (the workload's progress line is shared by its replicas)."""
    return f" (replica {replica})" if replica else ""


# --- the state record beside each replica ---------------------------------------------------------------------
# Written before libvirt defines the domain, marked pending (as Helm marks a release pending) and completed with
# the QEMU pid once it runs: a run killed at any point leaves either no domain or a record naming it and its spec.
# The next `up` adopts a domain a killed run left booting when it is exactly the wanted one (and waits for it as
# for its own), or replaces it; `down` and `gc` find domains by their labels, record or not.

def _record(workdir: Path) -> dict[str, Any]:
    """A replica's state record, complete or only the one written before its domain was defined."""
    return read_state(workdir) or {}


def _write_record(workdir: Path, state: dict[str, Any]) -> None:
    # written aside, then renamed over: a run killed mid-write leaves the old record or the new one
    part = workdir / "state.json.part"
    part.write_text(json.dumps(state, indent=2) + "\n")
    part.replace(workdir / "state.json")


def _new_record(d: _Desired, plan: Plan, accel: str) -> dict[str, Any]:
    w = d.placement.workload
    return {"stack": plan.stack.name, "workload": w.name, "replica": d.replica, "domain": libvirt.name_in(d.xml),
            "runtime": d.placement.runtime, "arch": w.arch, "accelerator": accel, "cpus": w.vcpus,
            "memoryMib": w.resources.memory_bytes // 2**20, "guest": "disk" if _boots_disk(d) else "busybox",
            "disk": disks.disk_image(w), "forwards": _forwards_of(d.forwards),
            "digest": d.digest, "started": time.time(), "owner": w.owner, "ttl": w.ttl, "tenant": w.tenant,
            "sandbox": sandbox_reason(plan) if d.placement.runtime is Runtime.SANDBOXED else "",
            # until the run that started it is done with it (waited for it, or was told not to wait)
            "pending": True}


def _forwards_of(forwards: tuple[Forward, ...]) -> list[list[Any]]:
    return [[f.host_addr, f.host_port, f.guest_port] for f in forwards]


def _forwards_read(value: Any) -> tuple[Forward, ...] | None:
    """The forwards a record names ([[address, host port, guest port], ...]), or None when they are not that."""
    if not isinstance(value, list):
        return None
    out = []
    for f in value:
        if not (isinstance(f, list) and len(f) == 3 and isinstance(f[0], str)):
            return None
        host, guest = record_count(f[1], 65535), record_count(f[2], 65535)
        if host is None or guest is None:
            return None
        out.append(Forward(f[0], host, guest))
    return tuple(out)


def _boots_disk(d: _Desired) -> bool:
    """The rendered domain decides: a disk boot, or the busybox guest (no disk named)."""
    return "/disk.qcow2" in d.xml


def _keep_booted(workdir: Path, vm: GuestVM, state: dict[str, Any]) -> None:
    """Complete the record of a domain that runs: the host ports as bound (an automatic one is the port QEMU
    picked: status and readiness use it), then the pid that makes the record complete."""
    _write_record(workdir, {**state, "forwards": _forwards_of(vm.forwards)})
    (workdir / "qemu.pid").write_text(f"{vm.pid}\n")


def _left_booting(d: _Desired) -> GuestVM | None:
    """The domain a killed run defined for this replica and did not live to record: adopted when the record it
    wrote first names this very spec, the domain file beside it is the rendered one, and libvirt runs that
    definition (same name, labels, boot files, size and forwards); None otherwise (the caller replaces it)."""
    state, name = _record(d.workdir), libvirt.name_in(d.xml)
    if not name or state.get("digest") != d.digest or state.get("domain") != name:
        return None
    try:
        if (d.workdir / "domain.xml").read_text() != d.xml:
            return None
    except OSError:
        return None
    dom = libvirt.get(name)
    if dom is None or not dom.running or not libvirt.same_boot(d.xml, dom.xml):
        return None
    vm = GuestVM.adopt(name, d.workdir / "console.log", d.forwards)
    if vm is not None:
        _keep_booted(d.workdir, vm, state)
    return vm


def _settle(workdir: Path) -> None:
    """The run that started (or adopted) this VM is done with it: the next `up` leaves it alone."""
    state = _record(workdir)
    if state.get("pending"):
        _write_record(workdir, {**state, "pending": False})


class QemuBackend(Backend):
    """vm and nested placements as libvirt domains, and the sandboxed ones the local backend hands over (a
    sandboxed placement given to this backend runs in its own VM)."""

    name = "qemu"
    RUNTIMES = VM_RUNTIMES | {Runtime.SANDBOXED}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._started: list[tuple[GuestVM, Path]] = []

    # -- state ---------------------------------------------------------------------------------------
    def _stack_dir(self, plan: Plan) -> Path:
        return state_root() / plan.stack.name

    @staticmethod
    def _load(workdir: Path) -> tuple[GuestVM | None, dict[str, Any]]:
        """A replica's running VM and its complete record; (None, {}) when either is missing or is not what this
        version writes (a record edited by hand: its VM is then found by its domain's labels, as without one)."""
        state, pid = read_state(workdir), read_pid(workdir)
        forwards = _forwards_read(state.get("forwards")) if state is not None else None
        if state is None or forwards is None or pid is None or not isinstance(state.get("domain"), str) \
                or not state["domain"]:
            return None, {}
        return GuestVM(state["domain"], workdir / "console.log", forwards, pid), state

    def _mine(self, plan: Plan) -> list[Placement]:
        return [p for p in plan.placements if p.runtime in self.RUNTIMES and p.workload.replicas > 0]

    @staticmethod
    def exported_images(placements: list[Placement]) -> list[str]:
        """The local Docker images these VMs run inside (exported into the guest): the local target builds them
        like its containers' own before any VM starts."""
        return [c.rootfs[len(DOCKER_PREFIX):] for p in placements for c in program_for(p.workload, p.runtime).containers
                if c.rootfs.startswith(DOCKER_PREFIX)]

    # -- up ------------------------------------------------------------------------------------------
    def up(self, plan: Plan, rendered: Rendered | None = None, *, wait: bool = True,
           timeout: float = 300) -> list[WorkloadStatus]:
        self._started = []
        stack_dir = self._stack_dir(plan)
        wanted = self._mine(plan)
        if wanted:
            libvirt.check_daemon()
        if rendered is None or rendered.target != "local":
            from hybridorch.render.stack import render_plan
            rendered = render_plan(plan, "local", local=local_facts(sandboxes=plan.has_runtime(Runtime.SANDBOXED)))
        try:
            desired = [self._desire(p, stack_dir, rendered) for p in wanted]
            # VMs of this stack whose workload left the plan (or moved to a container), and replicas beyond the
            # wanted count, are ours to remove
            names = {d.workdir.name for replicas in desired for d in replicas}
            if stack_dir.is_dir():
                for old in sorted(stack_dir.iterdir()):
                    if old.is_dir() and old.name not in names:
                        self._remove(old)
            waited: set[str] = set()
            for replicas in desired:
                started = self._apply(replicas, plan, wait, timeout)
                if wait:
                    waited |= started
        except BaseException:
            self.rollback()
            if stack_dir.is_dir() and not any(stack_dir.iterdir()):
                stack_dir.rmdir()
            raise
        # what was just waited for is not probed again
        return self._status(plan, waited)

    def rollback(self) -> list[str]:
        """Remove every domain the last `up` started (a failed or interrupted run leaves nothing)."""
        removed = []
        for vm, workdir in reversed(self._started):
            vm.stop()
            shutil.rmtree(workdir, ignore_errors=True)
            removed.append(f"vm {workdir.name}")
        self._started = []
        return removed

    def _desire(self, p: Placement, stack_dir: Path, rendered: Rendered) -> list[_Desired]:
        """One entry per replica, with its rendered domain; each digest covers that replica's own domain XML, so a
        changed hostPort replaces replica 0 only."""
        w = p.workload
        guest = load_guest(w.arch)
        out = []
        for i in range(w.replicas):
            program = program_for(w, p.runtime, stack_dir.name, i)   # the state dir is named after the stack
            where = replica_path(w.name, i)
            try:
                xml = rendered.file(f"{where}/domain.xml").content
            except KeyError:
                raise BackendError(f"the local rendering has no domain for {vm_label(w.name, i)}") from None
            workdir = stack_dir / replica_dir(w.name, i)
            if f"{workdir}/console.log" not in xml:
                raise BackendError(f"the domain rendered for {vm_label(w.name, i)} does not point at {workdir} "
                                   "(rendered for another machine?)")
            seed = {}
            for name in ("user-data", "meta-data"):
                try:
                    seed[name] = rendered.file(f"{where}/{name}").content
                except KeyError:
                    pass
            key = {"xml": xml, "program": repr(program), "kernel": guest.kernel_version,
                   "packages": dict(guest.packages), "ready": repr(w.ready), "seed": seed}
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
            # the rendered domain decides (the stack-wide host ports: runtime.assign_host_ports)
            out.append(_Desired(p, program, forwards_in(xml), digest, workdir, i, xml, seed))
        return out

    def _running(self, d: _Desired) -> tuple[GuestVM | None, bool]:
        """The replica's VM when it runs with the wanted spec (None: boot it), and whether it is pending: left
        booting by a run that was killed, recorded or not, so this run finishes its boot."""
        vm, state = self._load(d.workdir)
        if vm is not None and vm.owns() and state.get("digest") == d.digest:
            return vm, bool(state.get("pending"))
        adopted = _left_booting(d) if vm is None else None
        return adopted, adopted is not None

    def _apply(self, replicas: list[_Desired], plan: Plan, wait: bool, timeout: float) -> set[str]:
        """Start every replica that does not run with the same spec already, adopt those a killed run left
        booting, then wait for both alike; the names of the state dirs of the replicas (re)started or adopted."""
        found = [(d, *self._running(d)) for d in replicas]
        stale = [d for d, vm, _ in found if vm is None]
        booting = [(vm, d) for d, vm, pending in found if vm is not None and pending]
        if not stale and not booting:   # unchanged and running: idempotent
            self.events(Event(replicas[0].placement.name, EventKind.UNCHANGED, "already running"))
            return set()
        w = replicas[0].placement.workload
        for vm, d in booting:
            self._started.append((vm, d.workdir))   # this run's now: a failed or interrupted `up` removes it
            self.events(Event(w.name, EventKind.BOOTING, f"libvirt domain {vm.name}, "
                              f"{_record(d.workdir).get('accelerator')}; adopted from an interrupted run"
                              + _of_replica(d.replica)))
        if stale:
            booting += zip(self._boot(stale, plan), stale)
        booting.sort(key=lambda vm_d: vm_d[1].replica)
        if wait:
            for vm, d in booting:
                wait_vm_ready(vm, w, timeout, self.events, d.label, booted_disk=_boots_disk(d))
        for _, d in booting:
            _settle(d.workdir)
        return {d.workdir.name for _, d in booting}

    def _boot(self, stale: list[_Desired], plan: Plan) -> list[GuestVM]:
        """Replace the given replicas: whatever runs under their names goes, their boot files are built and
        their domains defined and started (not waited for)."""
        w = stale[0].placement.workload
        for d in stale:
            # a domain of this name that no complete record names (a killed run's) goes too: it holds the ports
            self._remove(d.workdir, libvirt.name_in(d.xml))
        guest = load_guest(w.arch)
        qemu_binary(w.arch)  # fail before building anything when QEMU is missing
        for d in stale:
            for f in d.forwards:
                if f.host_port != AUTO_PORT:   # an automatic one is free by definition
                    check_port_free(f.host_addr, f.host_port)
        disk = disks.disk_image(w) if _boots_disk(stale[0]) else None
        base: disks.BaseDisk | None = disks.base_disk(disk, w.arch) if disk else None
        initrd: Path | None = None
        built: GuestProgram | None = None     # the program `initrd` was built for
        exported: GuestProgram | None = None  # the first replica's program with its images exported (tarballs)
        vms = []
        try:
            for d in stale:
                d.workdir.mkdir(parents=True, exist_ok=True)
                what = "preparing its disk" if base is not None else "building its initramfs"
                self.events(Event(w.name, EventKind.CREATED, what + _of_replica(d.replica)))
                try:
                    if base is not None:
                        disks.prepare(base, d.workdir, d.seed)
                    elif initrd is None or d.program != built:
                        if exported is None:
                            # a sandboxed container's args go to its image's entrypoint, as with `docker run`
                            args = {w.name: tuple(w.args or ())} if d.placement.runtime is Runtime.SANDBOXED else None
                            exported = materialize(d.program, w.arch, d.workdir, args)
                        # a replica's own env (a sandbox's HYBRIDORCH_REPLICA) over the exported image's
                        own = tuple(replace(e, env={**e.env, **c.env})
                                    for e, c in zip(exported.containers, d.program.containers))
                        program = replace(exported, containers=own)
                        build_initrd(guest, program, d.workdir / "initrd.img")
                        initrd, built = d.workdir / "initrd.img", d.program
                    else:
                        # replicas that run the same program share one build (and one export of its images)
                        shutil.copyfile(initrd, d.workdir / "initrd.img")
                except BaseException:
                    shutil.rmtree(d.workdir, ignore_errors=True)
                    raise
                vms.append(self._start(d, plan))
        finally:
            for tar in stale[0].workdir.glob("*.rootfs.tar"):
                tar.unlink()  # copied into the initramfs images
        return vms

    def _start(self, d: _Desired, plan: Plan) -> GuestVM:
        xml_file = d.workdir / "domain.xml"
        xml_file.write_text(d.xml)
        accel = "kvm" if '<domain type="kvm"' in d.xml else "tcg"
        state = _new_record(d, plan, accel)
        _write_record(d.workdir, state)     # before libvirt knows the domain (see _left_booting)
        try:
            vm = GuestVM.start(xml_file, d.workdir / "console.log", d.forwards)
        except BaseException:
            shutil.rmtree(d.workdir, ignore_errors=True)
            raise
        self._started.append((vm, d.workdir))
        _keep_booted(d.workdir, vm, state)
        self.events(Event(d.placement.name, EventKind.BOOTING, f"libvirt domain {vm.name}, {accel}"
                          + _of_replica(d.replica)))
        return vm

    # -- status / logs / down ---------------------------------------------------------------------------
    def status(self, plan: Plan) -> list[WorkloadStatus]:
        return self._status(plan, set())

    def _status(self, plan: Plan, known_ready: set[str]) -> list[WorkloadStatus]:
        """One row per workload; `known_ready` names the replica state dirs `up` just waited for."""
        out = []
        for p in self._mine(plan):
            loaded = []
            for i in range(p.workload.replicas):
                workdir = self._stack_dir(plan) / replica_dir(p.name, i)
                vm, state = self._load(workdir)
                if vm is not None:
                    loaded.append((i, workdir.name, vm, state))
            out.append(replicas_status(plan, p, loaded, known_ready))
        return out

    def logs(self, plan: Plan, workload: str, *, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        """Replica 0's console (the one with the forwarded ports); replica i's is <workload>.<i>/console.log
        in the stack's state dir."""
        workdir = self._stack_dir(plan) / workload
        vm, _ = self._load(workdir)
        if vm is None:
            raise BackendError(f"VM {workload} of stack {plan.stack.name} is not running here (run `hybridorch up`)")
        return _follow(vm, tail, follow)

    def _remove(self, workdir: Path, domain: str = "") -> bool:
        """A replica's VM and state dir; the domain its record names (complete or not) or `domain` goes too."""
        vm, _ = self._load(workdir)
        stopped = vm.stop() if vm is not None else False
        for name in {domain, str(_record(workdir).get("domain") or "")} - {"", vm.name if vm else ""}:
            stopped = libvirt.remove(name) or stopped
        shutil.rmtree(workdir, ignore_errors=True)
        return stopped

    # -- inventory and live facts (qemu_inventory.py), snapshots (qemu_snapshots.py) --------------------------
    def inventory(self) -> list[Managed]:
        return qemu_inventory.managed_vms()

    def remove(self, items: list[Managed], *, keep_data: bool = True) -> Removal:
        return qemu_inventory.remove_vms(items)   # a local VM holds no data: its overlay is rebuilt on start

    def live_facts(self, plan: Plan) -> LiveFacts:
        return qemu_inventory.live_vms(plan.stack.name)

    def snapshot_create(self, plan: Plan, workload: str, name: str) -> list[Snapshot]:
        return qemu_snapshots.local_create(plan.stack.name, workload, name)

    def snapshot_list(self, plan: Plan, workload: str) -> list[Snapshot]:
        return qemu_snapshots.local_list(plan.stack.name, workload)

    def snapshot_restore(self, plan: Plan, workload: str, name: str | None) -> list[Snapshot]:
        return qemu_snapshots.local_restore(plan.stack.name, workload, name)

    def snapshot_prune(self, plan: Plan, workload: str, doomed: list[Snapshot]) -> None:
        qemu_snapshots.local_delete(plan.stack.name, workload, doomed)

    def down(self, plan: Plan, *, delete_data: bool = False) -> Removal:
        """Every domain carrying the stack's label, whatever the plan says now (a workload removed from the stack
        must not leave its VM behind), and the stack's state dir. A local VM holds no data to keep: its overlay
        and initramfs are rebuilt on every start, so `delete_data` changes nothing here."""
        removed = []
        found = libvirt.domains(**{LABEL_STACK: plan.stack.name}) if shutil.which("virsh") else []
        for dom in sorted(found, key=lambda x: x.name):
            libvirt.remove(dom.name)
            removed.append(f"vm {vm_label(dom.labels.get(LABEL_WORKLOAD, dom.name), int(dom.labels.get(LABEL_REPLICA) or 0))}")
            self.events(Event(dom.labels.get(LABEL_WORKLOAD, dom.name), EventKind.REMOVED, f"libvirt domain {dom.name}"))
        stack_dir = self._stack_dir(plan)
        if stack_dir.is_dir():
            shutil.rmtree(stack_dir, ignore_errors=True)
        return Removal(tuple(removed))


def _follow(vm: GuestVM, tail: int | None, follow: bool) -> Iterator[str]:
    """A VM's console lines (the last `tail`), then with `follow` what it writes while its QEMU runs."""
    lines = vm.console().split("\n")
    partial = lines.pop()
    if tail is not None:
        lines = lines[-tail:] if tail > 0 else []
    yield from lines
    if not follow:
        if partial:
            yield partial
        return
    size = vm.console_log.stat().st_size - len(partial.encode())
    splitter = proc.LineSplitter()
    while vm.owns():
        with open(vm.console_log, "rb") as fh:
            fh.seek(size)
            chunk = fh.read()
        size += len(chunk)
        yield from splitter.feed(chunk)
        time.sleep(0.2)
