"""Local VMs: `vm` and `nested` placements, and `sandboxed` ones that run in their own VM (no gVisor/Kata runtime
in Docker, or the policy's localSandbox: vm), as libvirt domains. The domain XML rendered from
templates/libvirt (render --target local) is exactly the file this backend defines and starts; KVM or TCG comes
from a real probe, port forwards and the console log live in that template.

Beside each domain, <state>/<stack>/<workload>/ holds what it boots (initramfs, or a qcow2 overlay on a cached
containerDisk, its kernel and cloud-init seed), the rendered domain.xml, the console log, the QEMU pid and a spec
hash, so `up` leaves unchanged VMs alone. `down` removes the domains that carry the stack's labels.

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
from hybridorch.core.runtime import State, container_env, readiness_port
from hybridorch.vm import console
from hybridorch.vm.guestimage import load_guest
from hybridorch.vm.initramfs import ContainerRun, GuestProgram, build_initrd
from hybridorch.core.labels import LABEL_STACK, LABEL_WORKLOAD
from hybridorch.vm import disks, libvirt
from hybridorch.vm.boot import GuestVM, check_port_free, last_lines, port_answers, run_guest, service_answers
from hybridorch.render.domain import (LABEL_REPLICA, MACHINES, Forward, replica_dir, replica_forwards, workload_forwards)
from hybridorch.vm.host import accelerator_for, local_facts, qemu_binary, state_root
from hybridorch.vm.image_export import DOCKER_PREFIX, inner_rootfs, materialize
from hybridorch.backends.base import Backend, Removal, WorkloadStatus

if TYPE_CHECKING:
    from hybridorch.core.plan import Plan
    from hybridorch.core.policy import Placement
    from hybridorch.render.stack import Rendered
    from hybridorch.core.spec import Workload

__all__ = ["QemuBackend", "run_guest", "state_root", "qemu_binary", "MACHINES", "Forward",
           "program_for", "materialize", "accelerator_for"]
_forwards = workload_forwards


# --- the backend -------------------------------------------------------------------------------------

def ready_forward(w: Workload, forwards: tuple[Forward, ...]) -> Forward | None:
    """The forward of the port a readiness probe connects to (runtime.readiness_port)."""
    port = readiness_port(w)
    return next((f for f in forwards if f.guest_port == port), None) if port else None


def program_for(w: Workload, runtime: str, stack: str = "", replica: int = 0) -> GuestProgram:
    """What the guest of a vm/nested workload runs: inner containers, the workload's command, or httpd; a
    sandboxed workload's guest runs its container image with runc on the guest's own kernel, with the spec's
    command (args go to the image's entrypoint: see materialize) and env, as Docker would."""
    if runtime == "sandboxed":
        assert w.image is not None   # the spec loader requires an image for container runtimes
        env = container_env(w, stack, replica)
        argv = tuple(w.command or ()) + tuple(w.args or ()) if w.command is not None else ()
        run = ContainerRun(w.name, argv, inner_rootfs(w.image), env, timeout=0, host_network=True)
        return GuestProgram(w.name, containers=(run,), env=dict(w.env))
    if runtime == "nested":
        containers = []
        for c in w.containers:
            rootfs = inner_rootfs(c.image)
            if not c.command and not rootfs.startswith(DOCKER_PREFIX):
                raise BackendError(f"{w.name}: inner container {c.name} needs a command (the guest runs it with runc)")
            containers.append(ContainerRun(c.name, tuple(c.command or ()), rootfs, dict(c.env),
                                           timeout=0, host_network=True))
        return GuestProgram(w.name, containers=tuple(containers), env=dict(w.env))
    command = tuple(w.command or ()) + tuple(w.args or ()) or None
    if w.runtime == "auto" and w.image and not (w.vm.disk_image or w.vm.disk_pvc):
        # a container image the policy moved into a VM (own kernel, escape surface, ...): the guest runs it with
        # runc on its own kernel, as the KubeVirt rendering runs it with podman; an image named by an explicit
        # `runtime: vm` is a boot disk instead, which the local busybox guest stands in for
        env = {"HYBRIDORCH_WORKLOAD": w.name, **w.env}
        run = ContainerRun(w.name, command or (), inner_rootfs(w.image), env, timeout=0, host_network=True)
        return GuestProgram(w.name, containers=(run,), env=dict(w.env))
    ports = tuple(p.port for p in w.ports if p.protocol == "TCP")
    return GuestProgram(w.name, http_ports=ports, command=command, env=dict(w.env))


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


def sandbox_reason(plan: Plan) -> str:
    """Why a sandboxed placement runs in its own VM here (this backend gets one only when it does)."""
    if plan.profile.local_sandbox == "vm":
        return "the policy's localSandbox: vm"
    return "no gVisor/Kata runtime in Docker"


def vm_label(workload: str, replica: int) -> str:
    return workload if replica == 0 else f"{workload} replica {replica}"


class QemuBackend(Backend):
    """vm and nested placements as libvirt domains, and the sandboxed ones the local backend hands over (a
    sandboxed placement given to this backend runs in its own VM)."""

    name = "qemu"
    RUNTIMES = ("vm", "nested", "sandboxed")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._started: list[tuple[GuestVM, Path]] = []

    # -- state ---------------------------------------------------------------------------------------
    def _stack_dir(self, plan: Plan) -> Path:
        return state_root() / plan.stack.name

    @staticmethod
    def _load(workdir: Path) -> tuple[GuestVM | None, dict[str, Any]]:
        try:
            state = json.loads((workdir / "state.json").read_text())
            pid = int((workdir / "qemu.pid").read_text().strip())
        except (OSError, ValueError):
            return None, {}
        return GuestVM(state["domain"], workdir / "console.log", tuple(Forward(*f) for f in state["forwards"]),
                       pid), state

    def _mine(self, plan: Plan) -> list[Placement]:
        return [p for p in plan.placements if p.runtime in self.RUNTIMES and p.workload.replicas > 0]

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
            rendered = render_plan(plan, "local", local=local_facts(sandboxes=plan.has_runtime("sandboxed")))
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
            where = w.name if i == 0 else f"{w.name}-{i}"
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
            out.append(_Desired(p, program, replica_forwards(workload_forwards(w), i), digest, workdir, i, xml, seed))
        return out

    def _current(self, d: _Desired) -> bool:
        vm, state = self._load(d.workdir)
        return vm is not None and vm.owns() and state.get("digest") == d.digest

    def _apply(self, replicas: list[_Desired], plan: Plan, wait: bool, timeout: float) -> set[str]:
        """Start every replica that does not run with the same spec already, then wait for them; the names of
        the state dirs of the (re)started replicas."""
        stale = [d for d in replicas if not self._current(d)]  # unchanged and running: idempotent
        if not stale:
            return set()
        w = stale[0].placement.workload
        for d in stale:
            if d.workdir.exists():
                self._remove(d.workdir)
        guest = load_guest(w.arch)
        qemu_binary(w.arch)  # fail before building anything when QEMU is missing
        for d in stale:
            for f in d.forwards:
                check_port_free(f.host_addr, f.host_port)
        # the rendered domain decides: a disk boot, or the busybox guest (no disk named)
        disk = disks.disk_image(w) if "/disk.qcow2" in stale[0].xml else None
        base: disks.BaseDisk | None = disks.base_disk(disk, w.arch) if disk else None
        initrd: Path | None = None
        built: GuestProgram | None = None     # the program `initrd` was built for
        exported: GuestProgram | None = None  # the first replica's program with its images exported (tarballs)
        vms = []
        try:
            for d in stale:
                d.workdir.mkdir(parents=True, exist_ok=True)
                try:
                    if base is not None:
                        disks.prepare(base, d.workdir, d.seed)
                    elif initrd is None or d.program != built:
                        if exported is None:
                            # a sandboxed container's args go to its image's entrypoint, as with `docker run`
                            args = {w.name: tuple(w.args or ())} if d.placement.runtime == "sandboxed" else None
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
        if wait:
            for vm, d in zip(vms, stale):
                self._wait_ready(vm, w, timeout, d.label, booted_disk=base is not None)
        return {d.workdir.name for d in stale}

    def _start(self, d: _Desired, plan: Plan) -> GuestVM:
        w = d.placement.workload
        xml_file = d.workdir / "domain.xml"
        xml_file.write_text(d.xml)
        accel = "kvm" if '<domain type="kvm"' in d.xml else "tcg"
        try:
            vm = GuestVM.start(xml_file, d.workdir / "console.log", d.forwards)
        except BaseException:
            shutil.rmtree(d.workdir, ignore_errors=True)
            raise
        self._started.append((vm, d.workdir))
        (d.workdir / "qemu.pid").write_text(f"{vm.pid}\n")
        state = {"stack": plan.stack.name, "workload": w.name, "replica": d.replica, "domain": vm.name,
                 "runtime": d.placement.runtime, "arch": w.arch, "accelerator": accel, "cpus": w.vcpus,
                 "memoryMib": w.resources.memory_bytes // 2**20,
                 "guest": "disk" if "/disk.qcow2" in d.xml else "busybox",
                 "disk": disks.disk_image(w), "forwards": [[f.host_addr, f.host_port, f.guest_port] for f in d.forwards],
                 "digest": d.digest, "started": time.time(), "owner": w.owner, "ttl": w.ttl,
                 "tenant": w.tenant, "sandbox": sandbox_reason(plan) if d.placement.runtime == "sandboxed" else ""}
        (d.workdir / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        return vm

    def _wait_ready(self, vm: GuestVM, w: Workload, timeout: float, label: str | None = None,
                    booted_disk: bool = False) -> None:
        limit = float(w.ready.timeout) if w.ready else timeout
        label = label or w.name
        if proc.wait_until(lambda: self._is_ready(vm, w, booted_disk), limit, poll=0.05,
                           abort=lambda: not vm.running()):
            return
        if not vm.running():
            error = vm.qemu_error()
            vm.stop()
            raise BackendError(f"VM {label} exited during boot: "
                               f"{error or 'last console lines: ' + last_lines(vm.console())}")
        vm.stop()
        raise BackendError(f"VM {label} was not ready within {limit:.0f}s (stopped it); last console "
                           f"lines: {last_lines(vm.console())}")

    def _is_ready(self, vm: GuestVM, w: Workload, booted_disk: bool = False) -> bool:
        """The busybox guest prints the ready marker; a booted disk's OS is ready only when its own service
        answers on the forwarded ready port (or its console shows the spec's marker)."""
        text = vm.console()
        marker = w.ready.marker if w.ready and w.ready.marker else None
        if marker and marker not in text:
            return False
        if not marker and not booted_disk and not console.shows_ready(text):
            return False
        port = ready_forward(w, vm.forwards)
        if booted_disk and port is None and not marker:
            return vm.running()
        # a disk's own OS brings its network up after boot: only a reply shows its service is there
        answers = service_answers if booted_disk and not marker else port_answers
        return port is None or answers(port.host_port, port.host_addr)

    # -- status / logs / down ---------------------------------------------------------------------------
    def status(self, plan: Plan) -> list[WorkloadStatus]:
        return self._status(plan, set())

    def _status(self, plan: Plan, known_ready: set[str]) -> list[WorkloadStatus]:
        """One row per workload; `known_ready` names the replica state dirs `up` just waited for."""
        out = []
        for p in self._mine(plan):
            w = p.workload
            loaded = []
            for i in range(w.replicas):
                workdir = self._stack_dir(plan) / replica_dir(p.name, i)
                vm, state = self._load(workdir)
                if vm is not None:
                    loaded.append((i, workdir.name, vm, state))
            if not loaded:
                out.append(WorkloadStatus(p.name, p.runtime, State.ABSENT, detail="not created: run `hybridorch up`"))
                continue
            ports = tuple(str(Forward(*f)) for *_, state in loaded for f in state.get("forwards", []))
            state0 = loaded[0][3]
            accel = state0.get("accelerator")
            booted_disk = state0.get("guest") == "disk"
            what_boots = (f"its own disk {state0.get('disk')}" if state0.get("guest") == "disk" else
                          "the busybox guest (no disk or image named)")
            alive = [(i, name, vm) for i, name, vm, _ in loaded if vm.owns()]
            counts = f"{len(alive)}/{w.replicas} replicas running"
            dead = [(i, vm) for i, _, vm, _ in loaded if not vm.owns()]
            if dead:
                i, vm = dead[0]
                what = "domain " + vm.name
                out.append(WorkloadStatus(p.name, p.runtime, State.FAILED, ports, accel,
                                          detail=f"{counts}; {what} is not running; last console lines: "
                                                 f"{last_lines(vm.console(), 3)}"))
                continue
            pids = [vm.pid for _, _, vm in alive]
            domains = ', '.join(vm.name for _, _, vm in alive)
            if p.runtime == "sandboxed":
                # the words `status` users and tests look for: where the sandbox is, and why
                detail = f"{counts}; sandboxed in its own VM ({state0.get('sandbox') or sandbox_reason(plan)}): " \
                         f"libvirt domain {domains} ({state0['arch']}) runs image {w.image} with runc on the " \
                         "guest's kernel; pid " + ", ".join(str(pid) for pid in pids)
            else:
                detail = f"{counts}; libvirt domain {domains} ({state0['arch']}) boots {what_boots}; pid " + \
                    ", ".join(str(pid) for pid in pids)
            if len(alive) < w.replicas:
                phase = State.PENDING
            else:
                ready = all(name in known_ready or self._is_ready(vm, w, booted_disk) for _, name, vm in alive)
                phase = State.READY if ready else State.RUNNING
            started = min(st["started"] for *_, st in loaded)
            out.append(WorkloadStatus(p.name, p.runtime, phase, ports, accel,
                                      uptime_seconds=time.time() - started, detail=detail,
                                      extra={"pid": pids[0], "pids": pids, "domain": alive[0][2].name,
                                             "guest": state0.get("guest", "busybox"),
                                             **({"sandbox": "vm"} if p.runtime == "sandboxed" else {})}))
        return out

    def logs(self, plan: Plan, workload: str, *, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        """Replica 0's console (the one with the forwarded ports); replica i's is <workload>.<i>/console.log
        in the stack's state dir."""
        workdir = self._stack_dir(plan) / workload
        vm, _ = self._load(workdir)
        if vm is None:
            raise BackendError(f"VM {workload} of stack {plan.stack.name} is not running here (run `hybridorch up`)")
        return self._follow(vm, tail, follow)

    @staticmethod
    def _follow(vm: GuestVM, tail: int | None, follow: bool) -> Iterator[str]:
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

    def _remove(self, workdir: Path) -> bool:
        vm, _ = self._load(workdir)
        stopped = vm.stop() if vm is not None else False
        shutil.rmtree(workdir, ignore_errors=True)
        return stopped

    @staticmethod
    def remove_vm(workdir: Path) -> bool:
        """One replica's VM, by its state dir (what `gc` removes): the domain is destroyed and undefined and the
        state dir goes, as `down` does for the whole stack. False when no such VM was recorded."""
        try:
            state = json.loads((workdir / "state.json").read_text())
        except (OSError, ValueError):
            return False
        libvirt.remove(str(state.get("domain", "")))
        shutil.rmtree(workdir, ignore_errors=True)
        return True

    def down(self, plan: Plan, *, delete_data: bool = False) -> Removal:
        """Every domain carrying the stack's label, whatever the plan says now (a workload removed from the stack
        must not leave its VM behind), and the stack's state dir. A local VM holds no data to keep: its overlay
        and initramfs are rebuilt on every start, so `delete_data` changes nothing here."""
        removed = []
        found = libvirt.domains(**{LABEL_STACK: plan.stack.name}) if shutil.which("virsh") else []
        for dom in sorted(found, key=lambda x: x.name):
            libvirt.remove(dom.name)
            removed.append(f"vm {vm_label(dom.labels.get(LABEL_WORKLOAD, dom.name), int(dom.labels.get(LABEL_REPLICA) or 0))}")
        stack_dir = self._stack_dir(plan)
        if stack_dir.is_dir():
            shutil.rmtree(stack_dir, ignore_errors=True)
        return Removal(tuple(removed))
