"""Local VMs: `vm` and `nested` placements as qemu-system processes (KVM when it really works, else TCG),
plus the one-shot guest runs `soc-test` uses. The only module that starts QEMU.

State of each VM (pid, console log, spec hash) lives in <state>/<stack>/<workload>/, so `down` finds exactly
the processes it started, and `up` leaves unchanged VMs alone.

Replicas: a workload with N replicas boots N VMs, replica i > 0 in <state>/<stack>/<workload>.<i>/ (a DNS-label
workload name has no '.', so no collision). As in the Docker backend only replica 0 forwards the host ports (two
VMs cannot listen on one host port); the others are identical but reachable from nowhere, and ready when their
console shows the ready marker. `logs` shows replica 0's console.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..errors import BackendError
from ..guest import (READY_MARKER, RESULT_PREFIX, ContainerRun, Guest, GuestProgram, build_initrd, cache_root,
                     check_arch, load_guest)
from .base import Backend, Removal, WorkloadStatus

if TYPE_CHECKING:
    from ..plan import Plan
    from ..policy import Placement
    from ..render import Rendered
    from ..spec import Workload


@dataclass(frozen=True)
class Machine:
    """How QEMU emulates one guest arch."""

    binary: str
    package: str              # the Debian package that provides the binary
    machine: str
    console: str              # kernel console device of the machine's first serial port
    cpu: str | None = None    # TCG CPU model


MACHINES: dict[str, Machine] = {
    "amd64": Machine("qemu-system-x86_64", "qemu-system-x86", "q35", "ttyS0"),
    # cortex-a57 boots faster under TCG than `max` (no SVE/pointer-auth emulation)
    "arm64": Machine("qemu-system-aarch64", "qemu-system-arm", "virt", "ttyAMA0", "cortex-a57"),
}
HOST_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "")
KVM_PROBE_TIMEOUT = 6.0   # a KVM guest boots to /init in well under a second; TCG takes ~2.5 s


def qemu_binary(arch: str) -> str:
    """The qemu-system binary for `arch`; HYBRIDORCH_QEMU_BINARY overrides (tests point it at nothing)."""
    machine = MACHINES[check_arch(arch).arch]
    wanted = os.environ.get("HYBRIDORCH_QEMU_BINARY") or machine.binary
    found = shutil.which(wanted)
    if not found:
        raise BackendError(f"QEMU is not installed ({wanted} not found): apt-get install {machine.package}")
    return found


def state_root() -> Path:
    override = os.environ.get("HYBRIDORCH_STATE_DIR")
    return Path(override) if override else cache_root() / "state"


# --- KVM probe ---------------------------------------------------------------------------------------

def _kvm_api_ok() -> bool:
    """/dev/kvm opens and answers KVM_GET_API_VERSION with 12: necessary, not sufficient."""
    import fcntl

    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, 0xAE00) == 12  # KVM_GET_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)


def kvm_usable(guest: Guest | None = None) -> bool:
    """Whether KVM can run our guests, cached per host kernel in ~/.cache/hybridorch/kvm-probe.json.

    /dev/kvm can exist and pass the ioctl while guests hang (nested virtualisation), so the probe boots the
    amd64 guest's kernel under KVM with a short timeout and checks that /init printed its marker."""
    if HOST_ARCH != "amd64" or os.environ.get("HYBRIDORCH_ACCEL") == "tcg":
        return False
    cache = cache_root() / "kvm-probe.json"
    kernel = platform.release()
    try:
        verdicts = json.loads(cache.read_text())
    except (OSError, ValueError):
        verdicts = {}
    if kernel in verdicts:
        return bool(verdicts[kernel]["kvm"])
    ok, why = False, "/dev/kvm missing or KVM_GET_API_VERSION failed"
    if _kvm_api_ok():
        guest = guest or load_guest("amd64")
        ok, why = _probe_boot(guest)
    verdicts[kernel] = {"kvm": ok, "why": why, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(verdicts, indent=2) + "\n")
    return ok


def _probe_boot(guest: Guest) -> tuple[bool, str]:
    work = cache_root() / "kvm-probe"
    work.mkdir(parents=True, exist_ok=True)
    initrd = work / "initrd.img"
    build_initrd(guest, GuestProgram("kvm-probe", services=False, network=False), initrd)
    spec = BootSpec(arch="amd64", accel="kvm", cpus=1, memory_mib=128, initrd=initrd, kernel=guest.kernel,
                    console_log=work / "console.log")
    vm = GuestVM.start(spec, work)
    try:
        found = vm.wait_for(lambda text: READY_MARKER in text, KVM_PROBE_TIMEOUT)
    finally:
        vm.stop()
        shutil.rmtree(work, ignore_errors=True)
    if found:
        return True, f"a KVM guest reached /init within {KVM_PROBE_TIMEOUT:.0f}s"
    return False, f"a KVM guest did not reach /init within {KVM_PROBE_TIMEOUT:.0f}s (using TCG)"


def accelerator_for(arch: str, guest: Guest | None = None) -> str:
    if arch == HOST_ARCH and kvm_usable(guest if arch == "amd64" else None):
        return "kvm"
    return "tcg"


# --- one QEMU process ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Forward:
    host_addr: str
    host_port: int
    guest_port: int

    def __str__(self) -> str:
        return f"{self.host_addr}:{self.host_port}->{self.guest_port}/tcp"


@dataclass(frozen=True)
class BootSpec:
    arch: str
    accel: str
    cpus: int
    memory_mib: int
    kernel: Path
    initrd: Path
    console_log: Path
    machine: str | None = None
    forwards: tuple[Forward, ...] = ()
    name: str = "hybridorch"


def qemu_command(spec: BootSpec) -> list[str]:
    m = MACHINES[spec.arch]
    cmd = [qemu_binary(spec.arch), "-name", spec.name, "-machine", spec.machine or m.machine,
           "-accel", spec.accel, "-smp", str(spec.cpus), "-m", str(spec.memory_mib),
           "-nodefaults", "-display", "none", "-no-reboot", "-monitor", "none",
           "-serial", f"file:{spec.console_log}",
           "-kernel", str(spec.kernel), "-initrd", str(spec.initrd),
           "-append", f"console={m.console} quiet loglevel=3 panic=-1"]
    if spec.accel == "kvm":
        cmd += ["-cpu", "host"]
    elif m.cpu:
        cmd += ["-cpu", m.cpu]
    netdev = "user,id=n0"
    for f in spec.forwards:
        netdev += f",hostfwd=tcp:{f.host_addr}:{f.host_port}-:{f.guest_port}"
    # romfile= skips the iPXE option ROM: nothing network-boots, and it saves a second of TCG boot
    cmd += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile="]
    return cmd


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class GuestVM:
    """A started qemu-system process, its console log and how to find it again (pid + cmdline)."""

    def __init__(self, pid: int, spec: BootSpec, proc: subprocess.Popen[bytes] | None = None,
                 stderr_path: Path | None = None):
        self.pid = pid
        self.spec = spec
        self.proc = proc
        self.stderr_path = stderr_path

    @classmethod
    def start(cls, spec: BootSpec, workdir: Path) -> "GuestVM":
        cmd = qemu_command(spec)
        spec.console_log.write_bytes(b"")
        err_path = workdir / "qemu.err"
        with open(err_path, "wb") as err:
            # own session: a Ctrl-C in the terminal reaches us, and we decide what to stop
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
        (workdir / "qemu.pid").write_text(f"{proc.pid}\n")
        return cls(proc.pid, spec, proc, err_path)

    def owns(self) -> bool:
        """The pid is still our QEMU: its cmdline names our console log (pids get reused)."""
        cmd = _cmdline(self.pid)
        return _alive(self.pid) and f"file:{self.spec.console_log}" in cmd

    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.owns()

    def console(self) -> str:
        try:
            return self.spec.console_log.read_bytes().decode(errors="replace").replace("\r", "")
        except OSError:
            return ""

    def qemu_error(self) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace").strip() if self.stderr_path else ""
        except OSError:
            text = ""
        lines = [ln for ln in text.splitlines() if "warning:" not in ln]
        return lines[-1] if lines else ""

    def wait_for(self, check: Callable[[str], bool], timeout: float, poll: float = 0.1) -> bool:
        """Poll the console until `check(text)` holds; False on timeout or if QEMU exits."""
        deadline = time.monotonic() + timeout
        while True:
            if check(self.console()):
                return True
            if not self.running() or time.monotonic() >= deadline:
                return check(self.console())
            time.sleep(poll)

    def _gone(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is not None
        if _alive(self.pid):
            return False
        try:  # our own child from an earlier call in this process: reap it so no zombie stays behind
            os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return True

    def stop(self, grace: float = 3.0) -> bool:
        """SIGTERM then SIGKILL, only if the pid is still ours; True if something was stopped."""
        if self.proc is not None:
            if self.proc.poll() is not None:
                return False
        elif not self.owns():
            self._gone()
            return False
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self._gone():
                return True
            time.sleep(0.05)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc is not None:
            self.proc.wait()
        else:
            while not self._gone():
                time.sleep(0.05)
        return True


def last_lines(text: str, n: int = 5) -> str:
    """The console's last lines on one line; a kernel panic's own line first, since the trace after it
    says less than its reason."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "(console is empty)"
    panic = [ln for ln in lines if "Kernel panic" in ln]
    tail = lines[-n:]
    return " | ".join(([panic[0]] if panic and panic[0] not in tail else []) + tail)


def check_port_free(addr: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # QEMU's user network binds with SO_REUSEADDR too: a TIME_WAIT left by an old client is no conflict
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((addr, port))
        sock.listen(1)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise BackendError(f"port {addr}:{port} is already in use: stop what listens there or set a different "
                               "hostPort") from None
        raise BackendError(f"cannot use port {addr}:{port}: {err.strerror}") from None
    finally:
        sock.close()


def port_answers(port: int, addr: str = "127.0.0.1", wait: float = 0.25) -> bool:
    """A forwarded port answers when the connection stays open or sends data: QEMU's user network accepts
    every connection to a forwarded port and closes it at once when nothing listens in the guest."""
    host = "127.0.0.1" if addr == "0.0.0.0" else addr
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.settimeout(wait)
            try:
                return sock.recv(1) != b""
            except socket.timeout:
                return True
    except OSError:
        return False


# --- one-shot runs (soc-test) ------------------------------------------------------------------------

@dataclass(frozen=True)
class ConsoleLine:
    at: float         # seconds since QEMU was started
    text: str


@dataclass(frozen=True)
class GuestRun:
    arch: str
    accelerator: str
    lines: tuple[ConsoleLine, ...]
    booted: bool
    finished: bool       # the guest printed DONE and powered off
    timed_out: bool
    seconds: float
    console_tail: str = ""


def run_guest(arch: str, program: GuestProgram, *, workdir: Path, cpus: int = 1, memory_mib: int = 256,
              machine: str | None = None, boot_timeout: float = 120, timeout: float = 600,
              on_line: Callable[[ConsoleLine], None] | None = None,
              cancel: threading.Event | None = None) -> GuestRun:
    """Boot a guest that runs `program` and powers off; the console is read as it grows (so results have
    host-side timestamps). The VM is always gone when this returns, Ctrl-C included."""
    guest = load_guest(arch)
    accel = accelerator_for(arch, guest)
    workdir.mkdir(parents=True, exist_ok=True)
    initrd = workdir / "initrd.img"
    build_initrd(guest, materialize(program, arch, workdir), initrd)
    spec = BootSpec(arch=arch, accel=accel, cpus=cpus, memory_mib=memory_mib, kernel=guest.kernel, initrd=initrd,
                    console_log=workdir / "console.log", machine=machine,
                    name=f"hybridorch-soc-{workdir.name}")
    started = time.monotonic()
    vm = GuestVM.start(spec, workdir)
    lines: list[ConsoleLine] = []
    booted = finished = timed_out = False
    pos = 0
    partial = b""
    try:
        with open(spec.console_log, "rb") as fh:
            while True:
                chunk = fh.read()
                now = time.monotonic() - started
                if chunk:
                    partial += chunk
                    *complete, partial = partial.split(b"\n")
                    for raw in complete:
                        line = ConsoleLine(now, raw.decode(errors="replace").strip("\r"))
                        lines.append(line)
                        booted = booted or line.text.startswith(f"{RESULT_PREFIX} BOOTED")
                        finished = finished or line.text == f"{RESULT_PREFIX} DONE"
                        if on_line:
                            on_line(line)
                    pos += len(chunk)
                    continue
                if not vm.running():
                    break
                if cancel is not None and cancel.is_set():
                    raise KeyboardInterrupt  # another thread was interrupted: stop this VM too
                if (not booted and now > boot_timeout) or now > timeout:
                    timed_out = True
                    break
                time.sleep(0.05)
    finally:
        vm.stop()
    seconds = time.monotonic() - started
    if not booted:
        error = vm.qemu_error()
        if timed_out:
            raise BackendError(f"the {arch} guest did not boot within {boot_timeout:.0f}s ({accel}); last console "
                               f"lines: {last_lines(vm.console())}")
        code = vm.proc.returncode if vm.proc is not None else None
        raise BackendError(f"the {arch} guest stopped before booting (QEMU exited with code {code}"
                           f"{': ' + error if error else ''}); last console lines: {last_lines(vm.console())}")
    return GuestRun(arch, accel, tuple(lines), booted, finished, timed_out, seconds, last_lines(vm.console()))


# --- the backend -------------------------------------------------------------------------------------

def _memory_mib(w: Workload) -> int:
    # the initramfs (busybox, runc, container roots) lives in RAM: below 128 MiB the guest cannot unpack it
    return max(128, w.resources.memory_bytes // 2**20)


def _forwards(w: Workload) -> tuple[Forward, ...]:
    ports = list(w.ports) + [p for c in w.containers for p in c.ports]
    seen: dict[int, Forward] = {}
    for p in ports:
        if p.protocol == "TCP" and p.published not in seen:
            seen[p.published] = Forward("0.0.0.0" if p.public else "127.0.0.1", p.published, p.port)
    return tuple(seen.values())


def ready_forward(w: Workload, forwards: tuple[Forward, ...]) -> Forward | None:
    """The forward a readiness probe connects to: ready.port, else (without a ready marker) the first one."""
    by_guest = {f.guest_port: f for f in forwards}
    if w.ready and w.ready.port:
        return by_guest.get(w.ready.port)
    if w.ready and w.ready.marker:
        return None
    return next(iter(by_guest.values()), None)


def _inner_rootfs(image: str) -> str:
    """`busybox` (or a path) needs no engine; anything else is a local Docker image to export."""
    if image == "busybox" or image.startswith("busybox:"):
        return "busybox"
    if image.startswith("/") or image.startswith("./"):
        return image
    return f"docker:{image}"


def _docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["docker", *args], capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise BackendError("a Docker image is used inside a VM but the docker CLI is missing: apt-get install "
                           "docker.io (or use `image: busybox` / `rootfs: DIR`)") from None


def export_image(image: str, arch: str, dest: Path) -> Path:
    """A local Docker image's filesystem as a tarball (docker create + export; no registry is asked).

    The image must be built for the guest arch: the guest runs its binaries natively."""
    inspect = _docker("image", "inspect", "-f", "{{.Architecture}}", image)
    if inspect.returncode != 0:
        raise BackendError(f"image {image!r} is not in the local Docker engine: build it first "
                           "(or use `image: busybox` for busybox-static of the guest arch)")
    image_arch = inspect.stdout.decode().strip()
    if image_arch and image_arch != arch:
        raise BackendError(f"image {image!r} is {image_arch} but the guest is {arch}: build it for {arch}, or use "
                           "`image: busybox` (busybox-static of the guest arch)")
    made = _docker("create", image, "/bin/true")
    if made.returncode != 0:
        raise BackendError(f"cannot export image {image!r}: {made.stderr.decode().strip().splitlines()[-1:]}")
    cid = made.stdout.decode().strip()
    try:
        with open(dest, "wb") as fh:
            exported = subprocess.run(["docker", "export", cid], stdout=fh, stderr=subprocess.PIPE, timeout=300)
        if exported.returncode != 0:
            raise BackendError(f"docker export of {image!r} failed: {exported.stderr.decode().strip()}")
    finally:
        _docker("rm", "-f", cid)
    return dest


def image_config(image: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """What a local Docker image runs by default (entrypoint + cmd) and its environment, which runc in the
    guest does not know about: `docker export` keeps only the filesystem."""
    out = _docker("image", "inspect", "-f", "{{json .Config.Entrypoint}}\n{{json .Config.Cmd}}\n{{json .Config.Env}}",
                  image)
    if out.returncode != 0:
        raise BackendError(f"image {image!r} is not in the local Docker engine: build it first")
    entry, cmd, env = (json.loads(part) or [] for part in out.stdout.decode().splitlines()[:3])
    return tuple(entry) + tuple(cmd), dict(item.split("=", 1) for item in env if "=" in item)


def materialize(program: GuestProgram, arch: str, workdir: Path) -> GuestProgram:
    """Replace docker:IMAGE roots by exported tarballs in `workdir`, so the guest module needs no engine."""
    containers = []
    for c in program.containers:
        if c.rootfs.startswith("docker:"):
            image = c.rootfs[len("docker:"):]
            default_command, image_env = image_config(image)
            c = replace(c, command=c.command or default_command, env={**image_env, **c.env})
            tar = export_image(image, arch, workdir / f"{c.name}.rootfs.tar")
            c = replace(c, rootfs=str(tar))
        if not c.command:
            raise BackendError(f"{program.title}: container {c.name} needs a command (the guest runs it with runc)")
        containers.append(c)
    return replace(program, containers=tuple(containers))


def program_for(w: Workload, runtime: str) -> GuestProgram:
    """What the guest of a vm/nested workload runs: inner containers, the workload's command, or httpd."""
    if runtime == "nested":
        containers = []
        for c in w.containers:
            rootfs = _inner_rootfs(c.image)
            if not c.command and not rootfs.startswith("docker:"):
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
        run = ContainerRun(w.name, command or (), _inner_rootfs(w.image), env, timeout=0, host_network=True)
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

    @property
    def label(self) -> str:
        return vm_label(self.placement.name, self.replica)


def replica_dir(workload: str, replica: int) -> str:
    """State dir name of one replica; replica 0 keeps the bare workload name, so state from before replicas
    existed is still found."""
    return workload if replica == 0 else f"{workload}.{replica}"


def vm_label(workload: str, replica: int) -> str:
    return workload if replica == 0 else f"{workload} replica {replica}"


def replica_forwards(forwards: tuple[Forward, ...], replica: int) -> tuple[Forward, ...]:
    """Only replica 0 forwards host ports: a second VM on the same host port would fail to start."""
    return forwards if replica == 0 else ()


class QemuBackend(Backend):
    """vm and nested placements as local QEMU processes."""

    name = "qemu"
    RUNTIMES = ("vm", "nested")

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
        spec = BootSpec(arch=state["arch"], accel=state["accelerator"], cpus=state["cpus"],
                        memory_mib=state["memoryMib"], kernel=Path(state["kernel"]), initrd=workdir / "initrd.img",
                        console_log=workdir / "console.log",
                        forwards=tuple(Forward(*f) for f in state["forwards"]))
        return GuestVM(pid, spec, stderr_path=workdir / "qemu.err"), state

    def _mine(self, plan: Plan) -> list[Placement]:
        return [p for p in plan.placements if p.runtime in self.RUNTIMES and p.workload.replicas > 0]

    # -- up ------------------------------------------------------------------------------------------
    def up(self, plan: Plan, rendered: Rendered | None = None, *, wait: bool = True,
           timeout: float = 300) -> list[WorkloadStatus]:
        self._started = []
        stack_dir = self._stack_dir(plan)
        wanted = self._mine(plan)
        try:
            desired = [self._desire(p, stack_dir) for p in wanted]
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
        """Stop and forget every VM the last `up` started (a failed or interrupted run leaves nothing)."""
        removed = []
        for vm, workdir in reversed(self._started):
            vm.stop()
            shutil.rmtree(workdir, ignore_errors=True)
            removed.append(f"vm {workdir.name}")
        self._started = []
        return removed

    def _desire(self, p: Placement, stack_dir: Path) -> list[_Desired]:
        """One entry per replica; each digest covers that replica's own forwards, so a changed hostPort
        replaces replica 0 only."""
        w = p.workload
        program = program_for(w, p.runtime)
        guest = load_guest(w.arch)
        out = []
        for i in range(w.replicas):
            forwards = replica_forwards(_forwards(w), i)
            key = {"arch": w.arch, "machine": w.vm.machine, "cpus": w.vcpus, "memoryMib": _memory_mib(w),
                   "program": repr(program), "forwards": [str(f) for f in forwards],
                   "kernel": guest.kernel_version, "packages": dict(guest.packages), "ready": repr(w.ready)}
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
            out.append(_Desired(p, program, forwards, digest, stack_dir / replica_dir(w.name, i), i))
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
        binary = qemu_binary(w.arch)  # fail before building anything when QEMU is missing
        for d in stale:
            for f in d.forwards:
                check_port_free(f.host_addr, f.host_port)
        accel = accelerator_for(w.arch, guest)
        initrd: Path | None = None
        vms = []
        for d in stale:
            d.workdir.mkdir(parents=True, exist_ok=True)
            try:
                if initrd is None:
                    build_initrd(guest, materialize(d.program, w.arch, d.workdir), d.workdir / "initrd.img")
                    for tar in d.workdir.glob("*.rootfs.tar"):
                        tar.unlink()  # already copied into the initrd
                    initrd = d.workdir / "initrd.img"
                else:
                    # replicas run the same program: build (and export images) once
                    shutil.copyfile(initrd, d.workdir / "initrd.img")
            except BaseException:
                shutil.rmtree(d.workdir, ignore_errors=True)
                raise
            vms.append(self._start(d, plan, guest, accel, binary))
        if wait:
            for vm, d in zip(vms, stale):
                self._wait_ready(vm, w, timeout, d.label)
        return {d.workdir.name for d in stale}

    def _start(self, d: _Desired, plan: Plan, guest: Guest, accel: str, binary: str) -> GuestVM:
        w = d.placement.workload
        name = f"hybridorch-{plan.stack.name}-{w.name}" + (f"-{d.replica}" if d.replica else "")
        spec = BootSpec(arch=w.arch, accel=accel, cpus=w.vcpus, memory_mib=_memory_mib(w), kernel=guest.kernel,
                        initrd=d.workdir / "initrd.img", console_log=d.workdir / "console.log",
                        machine=w.vm.machine, forwards=d.forwards, name=name)
        state = {"stack": plan.stack.name, "workload": w.name, "replica": d.replica,
                 "runtime": d.placement.runtime, "arch": w.arch, "accelerator": accel, "cpus": spec.cpus,
                 "memoryMib": spec.memory_mib, "kernel": str(guest.kernel),
                 "forwards": [[f.host_addr, f.host_port, f.guest_port] for f in d.forwards], "digest": d.digest,
                 "started": time.time(), "binary": binary}
        (d.workdir / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        vm = GuestVM.start(spec, d.workdir)
        self._started.append((vm, d.workdir))
        return vm

    def _wait_ready(self, vm: GuestVM, w: Workload, timeout: float, label: str | None = None) -> None:
        limit = float(w.ready.timeout) if w.ready else timeout
        label = label or w.name
        deadline = time.monotonic() + limit
        while True:
            if self._is_ready(vm, w):
                return
            if not vm.running():
                error = vm.qemu_error()
                vm.stop()
                raise BackendError(f"VM {label} exited during boot: "
                                   f"{error or 'last console lines: ' + last_lines(vm.console())}")
            if time.monotonic() >= deadline:
                vm.stop()
                raise BackendError(f"VM {label} was not ready within {limit:.0f}s (stopped it); last console "
                                   f"lines: {last_lines(vm.console())}")
            time.sleep(0.05)

    def _is_ready(self, vm: GuestVM, w: Workload) -> bool:
        text = vm.console()
        marker = w.ready.marker if w.ready and w.ready.marker else None
        if marker and marker not in text:
            return False
        if not marker and READY_MARKER not in text:
            return False
        # the VM's own forwards: replicas > 0 have none, so the console marker is their readiness
        port = ready_forward(w, vm.spec.forwards)
        return port is None or port_answers(port.host_port, port.host_addr)

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
                out.append(WorkloadStatus(p.name, p.runtime, "absent", detail="not created: run `hybridorch up`"))
                continue
            ports = tuple(str(Forward(*f)) for *_, state in loaded for f in state.get("forwards", []))
            state0 = loaded[0][3]
            accel = state0.get("accelerator")
            alive = [(i, name, vm) for i, name, vm, _ in loaded if vm.owns()]
            counts = f"{len(alive)}/{w.replicas} replicas running"
            dead = [(i, vm) for i, _, vm, _ in loaded if not vm.owns()]
            if dead:
                i, vm = dead[0]
                what = "QEMU" if i == 0 else f"QEMU of replica {i}"
                out.append(WorkloadStatus(p.name, p.runtime, "failed", ports, accel,
                                          detail=f"{counts}; {what} is not running; last console lines: "
                                                 f"{last_lines(vm.console(), 3)}"))
                continue
            pids = [vm.pid for _, _, vm in alive]
            detail = f"{counts}; {state0['arch']} {MACHINES[state0['arch']].binary} pid " + \
                ", ".join(str(pid) for pid in pids)
            if len(alive) < w.replicas:
                phase = "pending"
            else:
                ready = all(name in known_ready or self._is_ready(vm, w) for _, name, vm in alive)
                phase = "ready" if ready else "running"
            started = min(st["started"] for *_, st in loaded)
            out.append(WorkloadStatus(p.name, p.runtime, phase, ports, accel,
                                      uptime_seconds=time.time() - started, detail=detail,
                                      extra={"pid": pids[0], "pids": pids}))
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
        size = vm.spec.console_log.stat().st_size - len(partial.encode())
        while vm.owns():
            with open(vm.spec.console_log, "rb") as fh:
                fh.seek(size)
                chunk = fh.read()
            if b"\n" in chunk:
                done, _ = chunk.rsplit(b"\n", 1)
                size += len(done) + 1
                yield from done.decode(errors="replace").replace("\r", "").split("\n")
            time.sleep(0.2)

    def _remove(self, workdir: Path) -> bool:
        vm, _ = self._load(workdir)
        stopped = vm.stop() if vm is not None else False
        shutil.rmtree(workdir, ignore_errors=True)
        return stopped

    def down(self, plan: Plan, *, delete_data: bool = False) -> Removal:
        """Every VM under the stack's state dir, whatever the plan says now (a workload removed from the
        stack must not leave its VM behind). A local VM holds no data to keep: it boots an initramfs rebuilt
        on every start, and its state dir holds only that, its pid, spec hash and console log, so
        `delete_data` changes nothing here."""
        stack_dir = self._stack_dir(plan)
        removed = []
        if stack_dir.is_dir():
            for workdir in sorted(stack_dir.iterdir()):
                if workdir.is_dir():
                    self._remove(workdir)
                    removed.append(f"vm {workdir.name}")
            shutil.rmtree(stack_dir, ignore_errors=True)
        return Removal(tuple(removed))
