"""Booting guests through libvirt: one domain's handle (start, console, pid, stop), readiness probes, the
one-shot guest runs `soc-test` uses (transient domains) and the KVM probe."""
from __future__ import annotations

import errno
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from hybridorch import proc
from hybridorch.errors import BackendError
from hybridorch.vm import console, libvirt
from hybridorch.vm.guestimage import load_guest
from hybridorch.vm.initramfs import GuestProgram, build_initrd
from hybridorch.render.domain import AUTO_PORT, Forward, LocalFacts, guest_domain_context


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


class GuestVM:
    """A libvirt domain booted from a rendered file: its name, console log and QEMU pid."""

    def __init__(self, name: str, console_log: Path, forwards: tuple[Forward, ...] = (), pid: int | None = None):
        self.name = name
        self.console_log = console_log
        self.forwards = forwards
        self.pid = pid or 0

    @classmethod
    def start(cls, xml_file: Path, console_log: Path, forwards: tuple[Forward, ...] = (), *,
              transient: bool = False) -> "GuestVM":
        console_log.parent.mkdir(parents=True, exist_ok=True)
        console_log.write_bytes(b"")
        name = (libvirt.create_transient if transient else libvirt.define_and_start)(xml_file)
        vm = cls(name, console_log, forwards, libvirt.Domain(name, {}, True).pid)
        try:
            vm.forwards = _as_bound(name, forwards)
        except BaseException:
            libvirt.remove(name)
            raise
        return vm

    @classmethod
    def adopt(cls, name: str, console_log: Path, forwards: tuple[Forward, ...] = ()) -> "GuestVM | None":
        """The handle of a domain that runs already (started by a run killed before it kept the pid); None when
        no QEMU of that name runs."""
        vm = cls(name, console_log, forwards, libvirt.Domain(name, {}, True).pid)
        if not vm.owns():
            return None
        vm.forwards = _as_bound(name, forwards)
        return vm

    def owns(self) -> bool:
        """The pid is still this domain's QEMU: its command line names the domain (pids get reused)."""
        return bool(self.pid) and _alive(self.pid) and f"guest={self.name}," in _cmdline(self.pid)

    def running(self) -> bool:
        return self.owns()

    def console(self) -> str:
        try:
            return self.console_log.read_bytes().decode(errors="replace").replace("\r", "")
        except OSError:
            return ""

    def qemu_error(self) -> str:
        """The last line QEMU wrote to libvirt's log of this domain (why it exited)."""
        try:
            text = Path(f"/var/log/libvirt/qemu/{self.name}.log").read_text(errors="replace")
        except OSError:
            return ""
        lines = [ln for ln in text.splitlines() if "qemu-system" in ln and "warning:" not in ln
                 and not ln.startswith("/")]
        return lines[-1].split(": ", 1)[-1] if lines else ""

    def wait_for(self, check: Callable[[str], bool], timeout: float) -> bool:
        """Poll the console until `check(text)` holds; False on timeout or if the domain stops."""
        return proc.wait_until(lambda: check(self.console()), timeout, poll=0.05, abort=lambda: not self.running())

    def stop(self) -> bool:
        """Destroy and undefine the domain; True if it was running."""
        return libvirt.remove(self.name)


def _as_bound(name: str, forwards: tuple[Forward, ...]) -> tuple[Forward, ...]:
    """The forwards with each automatic host port replaced by the one QEMU bound for it."""
    if not any(f.host_port == AUTO_PORT for f in forwards):
        return forwards
    bound = libvirt.bound_ports(name)
    return tuple(replace(f, host_port=bound.get(f.guest_port, AUTO_PORT)) if f.host_port == AUTO_PORT else f
                 for f in forwards)


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


def service_answers(port: int, addr: str = "127.0.0.1", wait: float = 1.0) -> bool:
    """A booted disk's service answers when it sends bytes: first unasked (SSH, SMTP), else in reply to an
    HTTP request. An open, silent connection proves nothing there: QEMU's user network accepts it at once
    and holds it while the guest's own network is still coming up."""
    host = "127.0.0.1" if addr == "0.0.0.0" else addr
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.settimeout(wait)
            try:
                return sock.recv(1) != b""
            except socket.timeout:
                pass
            sock.sendall(b"GET / HTTP/1.0\r\nHost: " + host.encode() + b"\r\n\r\n")
            return sock.recv(1) != b""
    except OSError:   # refused, reset, or still silent (socket.timeout is an OSError)
        return False


# --- ad-hoc guests (soc-test boards, the KVM probe): transient domains from the same template ------------

def guest_domain_xml(facts: LocalFacts, *, name: str, arch: str, accel: str, cpus: int, memory_mib: int,
                     initrd: Path, console_log: Path, machine: str | None = None,
                     labels: dict[str, str] | None = None) -> str:
    from hybridorch.render.sandbox import Templates
    from hybridorch.render import validate

    d = guest_domain_context(facts, name=name, arch=arch, accel=accel, cpus=cpus, memory_mib=memory_mib,
                             initrd=str(initrd), console_log=str(console_log), machine=machine, labels=labels)
    xml = Templates().text("libvirt/domain.xml.j2", d=d)
    problem = validate.libvirt_problem(xml)
    if problem:
        raise BackendError(f"domain XML of {name} is invalid: {problem}")
    return xml


def probe_kvm(timeout: float) -> tuple[bool, str]:
    from hybridorch.vm.host import cache_root, local_facts

    work = cache_root() / "kvm-probe"
    work.mkdir(parents=True, exist_ok=True)
    guest = load_guest("amd64")
    build_initrd(guest, GuestProgram("kvm-probe", services=False, network=False), work / "initrd.img")
    facts = local_facts(probe=False)
    xml = work / "domain.xml"
    xml.write_text(guest_domain_xml(facts, name=f"hyb-kvm-probe-{os.getpid()}", arch="amd64", accel="kvm", cpus=1,
                                    memory_mib=128, initrd=work / "initrd.img", console_log=work / "console.log"))
    try:
        vm = GuestVM.start(xml, work / "console.log", transient=True)
    except BackendError as err:
        shutil.rmtree(work, ignore_errors=True)
        return False, f"a KVM domain did not start ({err}); using TCG"
    try:
        found = vm.wait_for(console.shows_ready, timeout)
    finally:
        vm.stop()
        shutil.rmtree(work, ignore_errors=True)
    if found:
        return True, f"a KVM guest reached /init within {timeout:.0f}s"
    return False, f"a KVM guest did not reach /init within {timeout:.0f}s (using TCG)"


@dataclass(frozen=True)
class ConsoleLine:
    at: float         # seconds since the domain was started
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


def build_board_initrd(arch: str, program: GuestProgram, workdir: Path) -> Path:
    """The one initramfs a board boots, on every target: the arch's busybox guest plus `program`, its containers'
    docker:IMAGE roots exported first; written to workdir/initrd.img."""
    from hybridorch.vm.image_export import materialize  # docker:IMAGE roots of a soc-test's containers

    guest = load_guest(arch)
    workdir.mkdir(parents=True, exist_ok=True)
    initrd = workdir / "initrd.img"
    build_initrd(guest, materialize(program, arch, workdir), initrd)
    return initrd


def run_guest(arch: str, program: GuestProgram, *, workdir: Path, cpus: int = 1, memory_mib: int = 256,
              machine: str | None = None, boot_timeout: float = 120, timeout: float = 600,
              on_line: Callable[[ConsoleLine], None] | None = None,
              cancel: threading.Event | None = None) -> GuestRun:
    """Boot a transient domain that runs `program` and powers off; the console is read as it grows (so results
    have host-side timestamps). The domain is always gone when this returns, Ctrl-C included."""
    from hybridorch.vm.host import accelerator_for, local_facts, qemu_binary

    qemu_binary(arch)
    accel = accelerator_for(arch)
    initrd = build_board_initrd(arch, program, workdir)
    console_log = workdir / "console.log"
    xml = workdir / "domain.xml"
    xml.write_text(guest_domain_xml(local_facts(), name=f"hyb-soc-{workdir.name}-{os.getpid()}", arch=arch,
                                    accel=accel, cpus=cpus, memory_mib=memory_mib, initrd=initrd,
                                    console_log=console_log, machine=machine,
                                    labels={"app.kubernetes.io/managed-by": "hybridorch",
                                            "hybridorch.dev/soc-test": workdir.name}))
    started = time.monotonic()
    vm = GuestVM.start(xml, console_log, transient=True)
    lines: list[ConsoleLine] = []
    booted = finished = timed_out = False
    splitter = proc.LineSplitter()
    try:
        with open(console_log, "rb") as fh:
            while True:
                chunk = fh.read()
                now = time.monotonic() - started
                if chunk:
                    for text in splitter.feed(chunk):
                        line = ConsoleLine(now, text)
                        lines.append(line)
                        booted = booted or console.is_booted(line.text)
                        finished = finished or console.is_done(line.text)
                        if on_line:
                            on_line(line)
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
        raise BackendError(f"the {arch} guest stopped before booting{': ' + error if error else ''}; last console "
                           f"lines: {last_lines(vm.console())}")
    return GuestRun(arch, accel, tuple(lines), booted, finished, timed_out, seconds, last_lines(vm.console()))
