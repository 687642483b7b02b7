"""The busybox guest's initramfs: a cpio "newc" writer, the base archive every guest of an arch shares
(busybox, runc and its libraries, kernel modules), and the per-VM archive: /init and the OCI bundles of the
containers it runs. Several archives concatenated unpack one after the other, so base + program is one initrd."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shlex
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Iterable, Mapping

from hybridorch.errors import BackendError
from hybridorch.core.runtime import ARCHES, GUEST_DHCP_ARG
from hybridorch.vm import console

if TYPE_CHECKING:
    from hybridorch.vm.guestimage import Guest


class CpioWriter:
    """Writes a cpio archive in the "newc" format the kernel unpacks as an initramfs.

    Several archives concatenated (each with its trailer) unpack one after the other, later files winning;
    that is how a cached base archive and a small per-VM archive become one initrd."""

    def __init__(self, out: IO[bytes]):
        self.out = out
        self.ino = 300000
        self.written: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               mtime: int = 0) -> None:
        name = name.strip("/") or "."
        self.ino += 1
        encoded = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, mtime, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0]
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.out.write(header + encoded + b"\0" * (-(len(header) + len(encoded)) % 4))
        self.out.write(data + b"\0" * (-len(data) % 4))
        self.written.add(name)

    def mkdir(self, name: str, mode: int = 0o755) -> None:
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub and sub not in self.written:
                self._entry(sub, stat.S_IFDIR | (mode if i == len(parts) else 0o755))

    def _parent(self, name: str) -> None:
        parent = os.path.dirname(name.strip("/"))
        if parent:
            self.mkdir(parent)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._parent(name)
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._parent(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._parent(name)
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def add_tree(self, prefix: str, src: Path) -> None:
        """A directory tree from disk (a container rootfs) under `prefix`."""
        self.mkdir(prefix)
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            rel = os.path.relpath(dirpath, src)
            base = prefix if rel == "." else f"{prefix}/{rel}"
            for name in sorted(dirnames + filenames):
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                dest = f"{base}/{name}"
                if stat.S_ISLNK(st.st_mode):
                    self.symlink(dest, os.readlink(path))
                elif stat.S_ISDIR(st.st_mode):
                    self._entry(dest, stat.S_IFDIR | stat.S_IMODE(st.st_mode))
                elif stat.S_ISREG(st.st_mode):
                    self.file(dest, Path(path).read_bytes(), stat.S_IMODE(st.st_mode))

    def add_tar(self, prefix: str, tar: tarfile.TarFile) -> None:
        """A `docker export` tarball under `prefix` (device nodes are skipped: runc creates /dev)."""
        self.mkdir(prefix)
        for member in tar:
            name = member.name.lstrip("./").rstrip("/")
            if not name or name.startswith("dev/"):
                continue
            dest = f"{prefix}/{name}"
            if member.isdir():
                self.mkdir(dest, member.mode & 0o7777)
            elif member.issym():
                self.symlink(dest, member.linkname)
            elif member.islnk():
                src = tar.extractfile(member.linkname.lstrip("./"))
                self.file(dest, src.read() if src else b"", member.mode & 0o7777)
            elif member.isreg():
                fh = tar.extractfile(member)
                self.file(dest, fh.read() if fh else b"", member.mode & 0o7777)

    def close(self) -> None:
        self._entry("TRAILER!!!", 0)


def busybox_rootfs(writer: CpioWriter, prefix: str, busybox: bytes) -> None:
    """A minimal container root: busybox-static plus the applet links a shell command needs."""
    writer.file(f"{prefix}/bin/busybox", busybox, 0o755)
    for applet in ("sh", "echo", "cat", "uname", "sleep", "ls", "true", "false", "httpd", "env", "id", "grep",
                   "hostname", "ps", "wc", "head", "date", "mount", "seq", "yes", "dd", "md5sum", "sha256sum"):
        writer.symlink(f"{prefix}/bin/{applet}", "busybox")
    for d in ("proc", "sys", "dev", "tmp", "etc", "root"):
        writer.mkdir(f"{prefix}/{d}")
    writer.file(f"{prefix}/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    writer.file(f"{prefix}/etc/group", b"root:x:0:\n")


def write_base_initramfs(guest: Guest, out: IO[bytes]) -> None:
    """The part shared by every guest of an arch: busybox, runc with its libraries, kernel modules."""
    w = CpioWriter(out)
    for d in ("bin", "sbin", "proc", "sys", "dev", "run", "tmp", "etc", "root", "lib/hyb", "containers", "var"):
        w.mkdir(d)
    w.chardev("dev/console", 5, 1)
    w.chardev("dev/null", 1, 3, 0o666)
    w.file("bin/busybox", guest.busybox.read_bytes(), 0o755)
    w.symlink("bin/sh", "busybox")
    w.file("sbin/runc", (guest.root / "runc").read_bytes(), 0o755)
    info = ARCHES[guest.arch]
    for lib in sorted((guest.root / "lib").iterdir()):
        w.file(f"lib/{info.triplet}/{lib.name}", lib.read_bytes(), 0o755)
    loader = info.loader.strip("/")
    w.symlink(loader, f"/lib/{info.triplet}/{os.path.basename(loader)}")
    for name in guest.modules:
        w.file(f"lib/hyb/{name}", (guest.root / "modules" / name).read_bytes())
    w.file("lib/hyb/modules.order", "".join(f"{m}\n" for m in guest.modules).encode())
    w.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    w.file("etc/group", b"root:x:0:\n")
    w.close()


# --- what a guest runs -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ContainerRun:
    """One container the guest runs with runc."""

    name: str
    command: tuple[str, ...]
    rootfs: str                       # "busybox" (busybox-static of the guest arch), a directory, or a .tar
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: int = 0                  # seconds; 0 = no limit (a service)
    host_network: bool = False        # share the guest's network (ports forwarded to the guest reach it)
    read_only: bool = False           # a read-only root (its /tmp is a tmpfs either way): core.runtime.read_only_root


@dataclass(frozen=True)
class GuestProgram:
    """What /init does after the base system is up."""

    title: str
    http_ports: tuple[int, ...] = ()             # busybox httpd serving a page naming the workload
    command: tuple[str, ...] | None = None        # a shell command run in the guest instead of httpd
    containers: tuple[ContainerRun, ...] = ()
    services: bool = True                         # keep running (vm/nested) or power off after tests
    network: bool = True
    env: Mapping[str, str] = field(default_factory=dict)


def _q(args: Iterable[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


# udhcpc's script: apply the lease it got (busybox ships none)
_DHCP_SCRIPT = """#!/bin/sh
case "$1" in bound|renew)
  ip addr flush dev "$interface"; ip addr add "$ip/${mask:-24}" dev "$interface"
  [ -n "$router" ] && ip route add default via "${router%% *}" ;;
esac
exit 0"""


def init_script(program: GuestProgram) -> str:
    """The guest's /init: base system, then the program; every line for the host is a console.py message."""
    lines = [
        "#!/bin/sh",
        "/bin/busybox --install -s /bin",
        "export PATH=/bin:/sbin HOME=/root",
        "mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev",
        "mkdir -p /dev/pts /dev/shm /run/runc; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm",
        "mount -t cgroup2 cgroup2 /sys/fs/cgroup",
        "for m in $(cat /lib/hyb/modules.order); do insmod /lib/hyb/$m 2>/dev/null; done",
        "hostname " + shlex.quote(program.title[:63] or "guest"),
        "ip link set lo up",
    ]
    if program.network:
        lines += ["n=0; while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done",
                  "ip link set eth0 up",
                  # QEMU's user network locally (fixed addresses); DHCP where the kernel command line asks for it
                  # (KubeVirt's masquerade binding hands out its own address)
                  f"if grep -qw {GUEST_DHCP_ARG} /proc/cmdline; then",
                  f"  printf '%s\\n' {shlex.quote(_DHCP_SCRIPT)} > /run/dhcp.sh; chmod 755 /run/dhcp.sh",
                  "  udhcpc -i eth0 -n -q -t 20 -s /run/dhcp.sh >/dev/null 2>&1 || echo 'guest: no DHCP lease on eth0'",
                  "else ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2; fi"]
    for k, v in program.env.items():
        lines.append(f"export {k}={shlex.quote(v)}")
    lines.append(console.say_booted())
    if program.http_ports and not program.command and not program.containers:
        page = f"<html><body><h1>{program.title}</h1><p>hybridorch VM workload {program.title}</p></body></html>\n"
        lines += ["mkdir -p /srv/www", f"echo {shlex.quote(page)} > /srv/www/index.html"]
        lines += [f"httpd -p {p} -h /srv/www" for p in program.http_ports]
    if program.command:
        lines.append(f"( {_q(program.command)} ) 2>&1 &")
    if program.containers:
        lines += _container_lines(program)
    else:
        lines.append(console.say_ready())
    if program.services:
        lines.append("while true; do sleep 3600; done")
    else:
        lines.append(console.say_done())
        lines.append("sync; poweroff -f")
    return "\n".join(lines) + "\n"


def _container_lines(program: GuestProgram) -> list[str]:
    """Run every container with runc; tests one after the other with a watchdog, services in the background."""
    out = [
        "runc_one() {  # name timeout: run /containers/$1 in the foreground, killed after $2 s",
        "  cd /containers/$1",
        "  start=$(cut -d' ' -f1 /proc/uptime)",
        "  " + console.say_start("$1", "$start"),
        "  if [ \"$2\" -gt 0 ]; then (sleep $2; touch /run/$1.timeout; runc kill $1 KILL) >/dev/null 2>&1 & wd=$!; "
        "else wd=; fi",
        "  runc run --no-pivot $1 </dev/null >/run/$1.out 2>&1; rc=$?",
        "  [ -n \"$wd\" ] && kill $wd 2>/dev/null",
        "  runc delete -f $1 >/dev/null 2>&1",
        "  end=$(cut -d' ' -f1 /proc/uptime)",
        "  to=0; [ -e /run/$1.timeout ] && to=1",
        "  " + console.say_output("$1", "/run/$1.out"),
        "  " + console.say_result("$1", "$rc", "$to", "$start", "$end"),
        "}",
    ]
    services = [c for c in program.containers if not c.timeout]
    tests = [c for c in program.containers if c.timeout]
    for c in services:
        # a service's output goes to the console, prefixed, so `logs` shows it: line by line through the shell
        # (sed held it in its buffer: a long-running service's first lines never reached the console)
        # ...and its stop is reported, so the host fails at once instead of waiting out the ready timeout
        out.append(f"(cd /containers/{c.name} && {{ runc run --no-pivot {c.name} </dev/null 2>&1; "
                   f"echo $? >/run/{c.name}.rc; }} | while IFS= read -r l; do echo \"[{c.name}] $l\"; done; "
                   + console.say_exited(c.name, f"$(cat /run/{c.name}.rc 2>/dev/null || echo 255)") + ") &")
    if services:
        out.append("sleep 1")
    out.append(console.say_ready())
    for c in tests:
        out.append(f"runc_one {c.name} {c.timeout}")
    return out


def oci_config(c: ContainerRun, arch: str) -> dict[str, object]:
    """A minimal OCI runtime config: own pid/mount/ipc/uts (and net unless host_network) namespaces, a cgroup."""
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "cgroup")]
    if not c.host_network:
        namespaces.append({"type": "network"})
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TERM=dumb"]
    env += [f"{k}={v}" for k, v in c.env.items()]
    caps = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
            "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
            "CAP_AUDIT_WRITE"]
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": list(c.command), "env": env,
                    "cwd": "/", "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
                    "noNewPrivileges": True},
        "root": {"path": "rootfs", "readonly": c.read_only},
        "hostname": c.name,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime",
                                                                                    "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev",
                                                                                   "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
        ],
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": f"/hybridorch/{c.name}",
            "resources": {"pids": {"limit": 1024}},
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def write_program_initramfs(guest: Guest, program: GuestProgram, out: BinaryIO) -> None:
    """The per-VM archive appended to the base: /init, container bundles (rootfs + config.json)."""
    w = CpioWriter(out)
    w.file("init", init_script(program).encode(), 0o755)
    busybox = guest.busybox.read_bytes()
    for c in program.containers:
        prefix = f"containers/{c.name}"
        w.file(f"{prefix}/config.json", json.dumps(oci_config(c, guest.arch), indent=1).encode())
        if c.rootfs == "busybox":
            busybox_rootfs(w, f"{prefix}/rootfs", busybox)
        elif c.rootfs.endswith(".tar"):
            try:
                with tarfile.open(c.rootfs) as tar:
                    w.add_tar(f"{prefix}/rootfs", tar)
            except (OSError, tarfile.TarError) as err:
                raise BackendError(f"container {c.name}: cannot read rootfs tarball {c.rootfs}: {err}") from err
        else:
            src = Path(c.rootfs)
            if not src.is_dir():
                raise BackendError(f"container {c.name}: rootfs {c.rootfs} is not a directory")
            w.add_tree(f"{prefix}/rootfs", src)
    w.close()


def build_initrd(guest: Guest, program: GuestProgram, dest: Path) -> str:
    """Write base + program archives to `dest` (one initrd); returns a hash of what the guest will run."""
    buf = io.BytesIO()
    write_program_initramfs(guest, program, buf)
    extra = gzip.compress(buf.getvalue(), compresslevel=1, mtime=0)
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "wb") as fh:
        with open(guest.base_initramfs, "rb") as base:
            shutil.copyfileobj(base, fh)
        fh.write(extra)
    tmp.replace(dest)
    return hashlib.sha256(extra).hexdigest()[:16]
