"""Local guests built from Debian packages: fetch a kernel, busybox-static and runc of an arch into a cache,
and build initramfs images (a Python cpio "newc" writer) whose /init runs httpd, a command or runc containers.

Fetching is a setup step (`python3 -m hybridorch.guest fetch amd64 arm64`); at run time nothing is downloaded.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Iterable, Mapping

from .errors import BackendError, HybridorchError

READY_MARKER = "@@HYB READY"
RESULT_PREFIX = "@@HYB"          # every line the guest prints for the host starts with this
DEBIAN_ARCHES = ("amd64", "arm64")


@dataclass(frozen=True)
class GuestArch:
    """What differs between guest architectures, as far as packages and the guest userland go."""

    arch: str
    kernel_package: str       # Debian meta-package naming the current kernel
    triplet: str              # multiarch library directory
    loader: str               # ELF interpreter path runc is linked against
    uname: str                # `uname -m` inside the guest
    modules: tuple[str, ...]  # modules the guest loads (deps added from modules.dep)


ARCHES: dict[str, GuestArch] = {
    "amd64": GuestArch("amd64", "linux-image-cloud-amd64", "x86_64-linux-gnu", "/lib64/ld-linux-x86-64.so.2",
                       "x86_64", ("virtio_pci", "virtio_net")),
    "arm64": GuestArch("arm64", "linux-image-arm64", "aarch64-linux-gnu", "/lib/ld-linux-aarch64.so.1",
                       "aarch64", ("virtio_pci", "virtio_mmio", "virtio_net")),
}


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hybridorch"


def guest_dir(arch: str) -> Path:
    override = os.environ.get("HYBRIDORCH_GUEST_DIR")
    return (Path(override) if override else cache_root() / "guests") / arch


def check_arch(arch: str) -> GuestArch:
    if arch not in ARCHES:
        if arch == "riscv64":
            raise BackendError("riscv64 guests are not supported: Debian 12 ships no riscv64 packages "
                               "(use amd64 or arm64)")
        raise BackendError(f"unknown guest arch {arch!r}: use one of {', '.join(ARCHES)}")
    return ARCHES[arch]


# --- the cached guest ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Guest:
    """A fetched guest: kernel image plus the files every initramfs of this arch carries."""

    arch: str
    root: Path
    kernel_version: str
    packages: Mapping[str, str]
    modules: tuple[str, ...]      # load order, file names under <root>/modules

    @property
    def kernel(self) -> Path:
        return self.root / "vmlinuz"

    @property
    def base_initramfs(self) -> Path:
        return self.root / "base.cpio.gz"

    @property
    def busybox(self) -> Path:
        return self.root / "busybox"


def load_guest(arch: str) -> Guest:
    """The cached guest of `arch`; a missing one is a one-line error naming the command that fetches it."""
    check_arch(arch)
    root = guest_dir(arch)
    try:
        meta = json.loads((root / "guest.json").read_text())
    except (OSError, ValueError):
        raise BackendError(f"no {arch} guest in {root}: fetch it with `python3 -m hybridorch.guest fetch {arch}`"
                           " (or run e2e/setup.sh)") from None
    guest = Guest(arch, root, meta["kernelVersion"], meta["packages"], tuple(meta["modules"]))
    if not guest.kernel.exists() or not guest.base_initramfs.exists():
        raise BackendError(f"the {arch} guest in {root} is incomplete: re-fetch it with "
                           f"`python3 -m hybridorch.guest fetch {arch}`")
    return guest


# --- fetching (setup time only) --------------------------------------------------------------------

class _Apt:
    """apt-get for one architecture with private lists and cache, so the host's dpkg config is untouched."""

    def __init__(self, arch: str, work: Path):
        self.arch = arch
        self.lists = work / "lists"
        self.cache = work / "cache"
        (self.lists / "partial").mkdir(parents=True, exist_ok=True)
        (self.cache / "archives" / "partial").mkdir(parents=True, exist_ok=True)

    def _opts(self) -> list[str]:
        return [f"-oAPT::Architecture={self.arch}", f"-oAPT::Architectures={self.arch}",
                f"-oDir::State::Lists={self.lists}", f"-oDir::Cache={self.cache}", "-oDebug::NoLocking=1"]

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        proc = subprocess.run([tool, *self._opts(), *args], cwd=cwd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise BackendError(f"{tool} {' '.join(args)} failed for {self.arch}: {last}")
        return proc.stdout

    def update(self) -> None:
        self.run("apt-get", "-q", "update")

    def resolve(self, package: str) -> str:
        """A meta-package (linux-image-arm64) to the concrete package it depends on."""
        for line in self.run("apt-cache", "depends", package).splitlines():
            line = line.strip()
            if line.startswith("Depends:") and "linux-image-" in line:
                return line.split(":", 1)[1].strip()
        return package

    def version(self, package: str) -> str:
        for line in self.run("apt-cache", "policy", package).splitlines():
            if line.strip().startswith("Candidate:"):
                return line.split(":", 1)[1].strip()
        return "?"

    def download(self, package: str, dest: Path) -> Path:
        before = set(dest.glob("*.deb"))
        self.run("apt-get", "-q", "download", package, cwd=dest)
        new = sorted(set(dest.glob("*.deb")) - before) or sorted(dest.glob(f"{package.split(':')[0]}_*.deb"))
        if not new:
            raise BackendError(f"apt-get download {package} ({self.arch}) produced no .deb")
        return new[-1]


def _extract(deb: Path, dest: Path) -> None:
    proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BackendError(f"dpkg-deb -x {deb.name} failed: {proc.stderr.strip()}")


def modinfo_depends(ko: bytes) -> list[str]:
    """The `depends=` of a kernel module, read from its ELF .modinfo section (Debian ships no modules.dep:
    depmod makes it at install time, and we never install)."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2:
        raise ValueError("not a 64-bit ELF module")
    order = "<" if ko[5] == 1 else ">"
    shoff, = struct.unpack_from(order + "Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", ko, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _t, _f, _a, off, size = struct.unpack_from(order + "IIQQQQ", ko, shoff + i * shentsize)
        return name, off, size

    _, str_off, _ = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        if ko[str_off + name: ko.index(b"\0", str_off + name)] == b".modinfo":
            for entry in ko[off: off + size].split(b"\0"):
                if entry.startswith(b"depends="):
                    return [d for d in entry[len(b"depends="):].decode().split(",") if d]
    return []


def module_closure(wanted: Iterable[str], modules: Mapping[str, list[str]]) -> list[str]:
    """Module names to load, dependencies first. `modules` maps every module of the kernel to its depends;
    a wanted module absent from it is built into the kernel and skipped."""
    order: list[str] = []

    def visit(name: str, seen: tuple[str, ...]) -> None:
        if name in order or name in seen or name not in modules:
            return
        for dep in modules[name]:
            visit(dep.replace("-", "_"), seen + (name,))
        order.append(name)

    for name in wanted:
        visit(name.replace("-", "_"), ())
    return order


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        data = lzma.decompress(data)
    return data


def _module_name(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".ko.xz", ".ko"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return base.replace("-", "_")


def fetch_guest(arch: str, *, log: BinaryIO | None = None) -> Guest:
    """Download (apt-get download, never install) and unpack the guest packages of `arch` into the cache."""
    info = check_arch(arch)
    out = log or sys.stderr.buffer
    root = guest_dir(arch)
    apt = _Apt(arch, cache_root() / "apt" / arch)
    out.write(f"guest {arch}: apt-get update (private lists)\n".encode())
    out.flush()
    apt.update()
    kernel_pkg = apt.resolve(info.kernel_package)
    packages = [kernel_pkg, "busybox-static", "runc", "libc6", "libseccomp2"]
    with tempfile.TemporaryDirectory(prefix=f"hybridorch-guest-{arch}-") as tmp:
        work = Path(tmp)
        (work / "debs").mkdir()
        versions: dict[str, str] = {}
        for pkg in packages:
            out.write(f"guest {arch}: apt-get download {pkg}\n".encode())
            out.flush()
            deb = apt.download(pkg, work / "debs")
            versions[pkg] = apt.version(pkg)
            _extract(deb, work / "x")
        x = work / "x"
        new = Path(str(root) + ".new")
        shutil.rmtree(new, ignore_errors=True)
        (new / "modules").mkdir(parents=True)
        vmlinuz = sorted((x / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise BackendError(f"{kernel_pkg} has no /boot/vmlinuz-*")
        kver = vmlinuz[-1].name[len("vmlinuz-"):]
        shutil.copy2(vmlinuz[-1], new / "vmlinuz")
        files = {_module_name(str(p)): p for p in (x / "lib" / "modules" / kver).rglob("*.ko*")}
        # only the drivers we may want are opened; their deps are looked up lazily by name
        deps: dict[str, list[str]] = {}
        todo = [m.replace("-", "_") for m in info.modules]
        while todo:
            name = todo.pop()
            if name in deps or name not in files:
                continue
            deps[name] = modinfo_depends(_read_module(files[name]))
            todo += [d.replace("-", "_") for d in deps[name]]
        names = []
        for name in module_closure(info.modules, deps):
            (new / "modules" / f"{name}.ko").write_bytes(_read_module(files[name]))  # busybox insmod: plain .ko
            names.append(f"{name}.ko")
        shutil.copy2(x / "bin" / "busybox", new / "busybox")
        shutil.copy2(x / "usr" / "sbin" / "runc", new / "runc")
        libs = new / "lib"
        libs.mkdir()
        # runc's only DT_NEEDED libraries (checked with ldd): glibc and libseccomp
        for pattern in ("ld-linux*", "libc.so.6", "libseccomp.so.2"):
            for lib_src in (x / "lib" / info.triplet, x / "usr" / "lib" / info.triplet):
                for src in lib_src.glob(pattern):
                    shutil.copy2(src, libs / src.name, follow_symlinks=True)
        meta = {"arch": arch, "kernelVersion": kver, "packages": versions, "modules": names}
        (new / "guest.json").write_text(json.dumps(meta, indent=2) + "\n")
        guest = Guest(arch, new, kver, versions, tuple(names))
        buf = io.BytesIO()
        write_base_initramfs(guest, buf)
        (new / "base.cpio.gz").write_bytes(gzip.compress(buf.getvalue(), compresslevel=6, mtime=0))
        shutil.rmtree(root, ignore_errors=True)
        new.rename(root)
    return load_guest(arch)


# --- cpio newc --------------------------------------------------------------------------------------

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


def init_script(program: GuestProgram) -> str:
    """The guest's /init: base system, then the program; every line for the host starts with @@HYB."""
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
                  "ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2"]
    for k, v in program.env.items():
        lines.append(f"export {k}={shlex.quote(v)}")
    lines.append(f"echo '{RESULT_PREFIX} BOOTED' $(cut -d' ' -f1 /proc/uptime) $(uname -m)")
    if program.http_ports and not program.command and not program.containers:
        page = f"<html><body><h1>{program.title}</h1><p>hybridorch VM workload {program.title}</p></body></html>\n"
        lines += ["mkdir -p /srv/www", f"echo {shlex.quote(page)} > /srv/www/index.html"]
        lines += [f"httpd -p {p} -h /srv/www" for p in program.http_ports]
    if program.command:
        lines.append(f"( {_q(program.command)} ) 2>&1 &")
    if program.containers:
        lines += _container_lines(program)
    else:
        lines.append(f"echo '{READY_MARKER}'")
    if program.services:
        lines.append("while true; do sleep 3600; done")
    else:
        lines.append(f"echo '{RESULT_PREFIX} DONE'")
        lines.append("sync; poweroff -f")
    return "\n".join(lines) + "\n"


def _container_lines(program: GuestProgram) -> list[str]:
    """Run every container with runc; tests one after the other with a watchdog, services in the background."""
    out = [
        "runc_one() {  # name timeout: run /containers/$1 in the foreground, killed after $2 s",
        "  cd /containers/$1",
        "  start=$(cut -d' ' -f1 /proc/uptime)",
        f"  echo '{RESULT_PREFIX} START' $1 $start",
        "  if [ \"$2\" -gt 0 ]; then (sleep $2; touch /run/$1.timeout; runc kill $1 KILL) >/dev/null 2>&1 & wd=$!; "
        "else wd=; fi",
        "  runc run --no-pivot $1 </dev/null >/run/$1.out 2>&1; rc=$?",
        "  [ -n \"$wd\" ] && kill $wd 2>/dev/null",
        "  runc delete -f $1 >/dev/null 2>&1",
        "  end=$(cut -d' ' -f1 /proc/uptime)",
        "  to=0; [ -e /run/$1.timeout ] && to=1",
        f"  base64 /run/$1.out | sed 's/^/{RESULT_PREFIX} OUT '$1' /'",
        f"  echo '{RESULT_PREFIX} RESULT' $1 $rc $to $start $end",
        "}",
    ]
    services = [c for c in program.containers if not c.timeout]
    tests = [c for c in program.containers if c.timeout]
    for c in services:
        # a service's output goes to the console, prefixed, so `logs` shows it
        out.append(f"(cd /containers/{c.name} && runc run --no-pivot {c.name} </dev/null 2>&1 | "
                   f"sed 's/^/[{c.name}] /') &")
    if services:
        out.append("sleep 1")
    out.append(f"echo '{READY_MARKER}'")
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
        "root": {"path": "rootfs", "readonly": False},
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


# --- command line ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] not in ("fetch", "show"):
        print("usage: python3 -m hybridorch.guest fetch|show ARCH...  (arches: amd64 arm64)", file=sys.stderr)
        return 2
    force = "--force" in args
    try:
        for arch in [a for a in args[1:] if a != "--force"]:
            if args[0] == "fetch":
                try:
                    current = load_guest(arch)
                    if not force:
                        print(f"guest {arch}: cached ({current.kernel_version}) in {current.root}")
                        continue
                except BackendError:
                    pass
                guest = fetch_guest(arch)
            else:
                guest = load_guest(arch)
            print(f"guest {arch}: kernel {guest.kernel_version}, modules {len(guest.modules)}, "
                  f"packages {', '.join(f'{k}={v}' for k, v in guest.packages.items())} in {guest.root}")
    except HybridorchError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
