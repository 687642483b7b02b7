"""The cached busybox guest of an arch, built from Debian packages: a kernel, busybox-static and runc with its
libraries. Fetching (apt-get download into a private cache, dpkg-deb -x, kernel modules picked by their ELF
.modinfo dependencies) is a setup step; at run time `load_guest` only reads the cache, nothing is downloaded."""
from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from hybridorch import proc
from hybridorch.errors import BackendError, InputError
from hybridorch.core.runtime import LOCAL_ARCHES, Arch, cache_root, guest_refusal, local_arch
from hybridorch.vm.host import read_json
from hybridorch.vm.initramfs import write_base_initramfs

DEBIAN_ARCHES = LOCAL_ARCHES


def guest_dir(arch: str) -> Path:
    override = os.environ.get("HYBRIDORCH_GUEST_DIR")
    return (Path(override) if override else cache_root() / "guests") / arch


def check_arch(arch: str) -> Arch:
    info = local_arch(arch)
    if info is None:
        refusal = guest_refusal(arch)
        if refusal:
            raise BackendError(refusal)
        raise BackendError(f"unknown guest arch {arch!r}: use one of {', '.join(LOCAL_ARCHES)}")
    return info


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
    """The cached guest of `arch`; a missing or damaged one is a one-line error naming the command that fetches it."""
    check_arch(arch)
    root = guest_dir(arch)
    fetch = f"`python3 -m hybridorch.vm.guest fetch {arch}`"
    if not os.path.lexists(root / "guest.json"):   # False too when the guest dir is a file or unreadable
        raise BackendError(f"no {arch} guest in {root}: fetch it with {fetch} (or run e2e/setup.sh)")
    guest = _guest_of(arch, root, read_json(root / "guest.json"))
    if guest is None:
        # a directory the user pointed HYBRIDORCH_GUEST_DIR at is their input; the default cache is ours
        kind = InputError if os.environ.get("HYBRIDORCH_GUEST_DIR") else BackendError
        raise kind(f"the {arch} guest image at {root} is damaged (guest.json is not a guest record): "
                   f"rebuild it with {fetch}")
    if not guest.kernel.exists() or not guest.base_initramfs.exists():
        raise BackendError(f"the {arch} guest in {root} is incomplete: re-fetch it with {fetch}")
    return guest


def _guest_of(arch: str, root: Path, meta: Any) -> Guest | None:
    """The guest a guest.json describes, or None when it is not the record fetch_guest writes (read_json gives
    None for a FIFO, a huge or deeply nested file, or one that is not JSON)."""
    if not isinstance(meta, dict):
        return None
    kver, packages, modules = meta.get("kernelVersion"), meta.get("packages"), meta.get("modules")
    if not isinstance(kver, str) or not kver or not isinstance(packages, dict) or not isinstance(modules, list):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in packages.items()):
        return None
    # module names become paths under <root>/modules: a plain file name, nothing that climbs out
    if not all(isinstance(m, str) and m and "/" not in m and m not in (".", "..") for m in modules):
        return None
    return Guest(arch, root, kver, packages, tuple(modules))


# --- fetching (setup time only) --------------------------------------------------------------------

class Apt:
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
        return proc.run([tool, *self._opts(), *args], cwd=cwd, timeout=1800, missing="apt-get install apt",
                        what=f"{tool} {' '.join(args)} for {self.arch}").stdout

    def update(self) -> None:
        self.run("apt-get", "-q", "update")

    def resolve(self, package: str) -> str:
        """A meta-package (linux-image-arm64) to the concrete package it depends on."""
        for line in proc.lines(self.run("apt-cache", "depends", package)):
            if line.startswith("Depends:") and "linux-image-" in line:
                return line.split(":", 1)[1].strip()
        return package

    def version(self, package: str) -> str:
        for line in proc.lines(self.run("apt-cache", "policy", package)):
            if line.startswith("Candidate:"):
                return line.split(":", 1)[1].strip()
        return "?"

    def download(self, package: str, dest: Path) -> Path:
        before = set(dest.glob("*.deb"))
        self.run("apt-get", "-q", "download", package, cwd=dest)
        new = sorted(set(dest.glob("*.deb")) - before) or sorted(dest.glob(f"{package.split(':')[0]}_*.deb"))
        if not new:
            raise BackendError(f"apt-get download {package} ({self.arch}) produced no .deb")
        return new[-1]


def extract_deb(deb: Path, dest: Path) -> None:
    proc.run(["dpkg-deb", "-x", str(deb), str(dest)], what=f"dpkg-deb -x {deb.name}", timeout=600)


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


def read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        data = lzma.decompress(data)
    return data


def module_name(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".ko.xz", ".ko"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return base.replace("-", "_")


def fetch_guest(arch: str, *, progress: Callable[[str], None] = lambda line: None) -> Guest:
    """Download (apt-get download, never install) and unpack the guest packages of `arch` into the cache;
    `progress` hears one line per step (the library prints nothing itself)."""
    info = check_arch(arch)
    root = guest_dir(arch)
    apt = Apt(arch, cache_root() / "apt" / arch)
    progress(f"guest {arch}: apt-get update (private lists)")
    apt.update()
    kernel_pkg = apt.resolve(info.kernel_package)
    packages = [kernel_pkg, "busybox-static", "runc", "libc6", "libseccomp2"]
    with tempfile.TemporaryDirectory(prefix=f"hybridorch-guest-{arch}-") as tmp:
        work = Path(tmp)
        (work / "debs").mkdir()
        versions: dict[str, str] = {}
        for pkg in packages:
            progress(f"guest {arch}: apt-get download {pkg}")
            deb = apt.download(pkg, work / "debs")
            versions[pkg] = apt.version(pkg)
            extract_deb(deb, work / "x")
        x = work / "x"
        new = Path(str(root) + ".new")
        shutil.rmtree(new, ignore_errors=True)
        (new / "modules").mkdir(parents=True)
        vmlinuz = sorted((x / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise BackendError(f"{kernel_pkg} has no /boot/vmlinuz-*")
        kver = vmlinuz[-1].name[len("vmlinuz-"):]
        shutil.copy2(vmlinuz[-1], new / "vmlinuz")
        files = {module_name(str(p)): p for p in (x / "lib" / "modules" / kver).rglob("*.ko*")}
        # only the drivers we may want are opened; their deps are looked up lazily by name
        deps: dict[str, list[str]] = {}
        todo = [m.replace("-", "_") for m in info.modules]
        while todo:
            name = todo.pop()
            if name in deps or name not in files:
                continue
            deps[name] = modinfo_depends(read_module(files[name]))
            todo += [d.replace("-", "_") for d in deps[name]]
        names = []
        for name in module_closure(info.modules, deps):
            (new / "modules" / f"{name}.ko").write_bytes(read_module(files[name]))  # busybox insmod: plain .ko
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
