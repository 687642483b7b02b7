"""Container images that let a soc-test board run as a Kubernetes Job pod: QEMU boots the busybox guest directly
(no libvirt) with its serial console on stdout, which is the pod's log.

- the QEMU image (`qemu_image`), shared by every plan: FROM scratch, this machine's qemu-system binary of each arch
  with the libraries `ldd` names, the dynamic loader, the TCG accelerator module and the firmware QEMU opens, the
  guest kernel of each arch at /board/<arch>/vmlinuz and a static busybox; tagged with a hash of everything put in,
  so a rebuilt QEMU or kernel makes a new tag and an unchanged machine builds nothing;
- a board image per plan (`board_image`): busybox and the plan's initrd, which an init container copies into an
  emptyDir (`INIT_COMMAND`) where the QEMU container boots it (`qemu_args`);
- beside them, a nested workload's guest image (`guest_image`): the guest kernel and its initrd in a containerDisk's
  kernelBoot layout, which KubeVirt boots.
Both are built with the docker CLI on a temporary context directory, only when the local engine lacks the tag."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from hybridorch import proc
from hybridorch.core.labels import LABEL_MANAGED, MANAGED_BY
from hybridorch.core.runtime import ARCHES, Arch
from hybridorch.errors import BackendError
from hybridorch.render.domain import MACHINES, LocalFacts, guest_domain_context
from hybridorch.vm import host
from hybridorch.vm.guestimage import load_guest

# --- what the images hold, where (the Job template uses these) ----------------------------------------------------

REGISTRY = "hybridorch.local"                    # never pushed anywhere: loaded into the cluster's nodes
QEMU_REPOSITORY = f"{REGISTRY}/soc-qemu"
BOARD_REPOSITORY_PREFIX = f"{REGISTRY}/soc-board-"
LABEL_QEMU_ARCHES = "dev.hybridorch.qemu-arches"
LABEL_SOC_PLAN = "dev.hybridorch.soc-plan"
LABEL_GUEST_CONTENT = "dev.hybridorch.guest-content"   # a guest image's content hash (its tag is render's)
# bump when what goes into the QEMU image changes (not its inputs: those are hashed)
RECIPE_VERSION = 1

BUSYBOX = "/bin/busybox"                         # static, this machine's arch, in both images
QEMU_BIN_DIR = "/usr/bin"                        # QEMU finds firmware and modules relative to its binary (../share)
FIRMWARE_DIR = "/usr/share/qemu"                 # every firmware file, dereferenced; qemu_args passes it as -L
BOARD_DIR = "/board"                             # QEMU image: /board/<arch>/vmlinuz; board image: the initrd
IMAGE_INITRD = f"{BOARD_DIR}/initrd.img"         # the initrd inside a board image
BOARD_INITRD_DIR = "/work"                       # the emptyDir both containers of the pod mount
BOARD_INITRD = f"{BOARD_INITRD_DIR}/initrd.img"  # where the QEMU container boots it from
INIT_COMMAND = (BUSYBOX, "cp", IMAGE_INITRD, f"{BOARD_INITRD_DIR}/")   # the init container's command
RUN_AS_UID = RUN_AS_GID = 65534                  # nobody: QEMU needs no privilege, no capability, no writable root
# TCG translation cache: QEMU's default (1 GiB under system emulation) lets the container grow far beyond the
# guest's RAM. The busybox boards translate less than 256 MiB (peak RSS 311/346 MiB for arm64/amd64 with 512 MiB
# guests, the same as with 1 GiB); 64 MiB saved 60 MiB but cost 1.3-2 s of flushes per run
TB_CACHE_MIB = 256
QEMU_OVERHEAD_MIB = 64   # QEMU's own RSS (its libraries, heap, device state): 38-45 MiB measured before boot

# What QEMU opens besides its libraries when it boots a kernel with qemu_args (strace of QEMU 7.2, Debian 12):
# SeaBIOS and the option ROMs of a direct kernel boot on x86; nothing on arm64 `virt`.
FIRMWARE: Mapping[str, tuple[str, ...]] = {
    "amd64": ("bios-256k.bin", "kvmvapic.bin", "linuxboot_dma.bin"),
    "arm64": (),
}
FIRMWARE_PACKAGE = {"bios-256k.bin": "seabios"}  # any other file: qemu-system-data
FIRMWARE_SEARCH = ("/usr/share/qemu", "/usr/share/seabios")   # after the binary's own ../share/{qemu,seabios}

_NO_DOCKER = "apt-get install docker.io"
_REPO_NAME = re.compile(r"[a-z0-9]+(?:-+[a-z0-9]+)*")        # a plan name is a DNS label: this, at most 63 long


# --- the QEMU command line --------------------------------------------------------------------------------------

def image_binary(arch: str) -> str:
    """The qemu-system binary of `arch` inside the QEMU image."""
    return f"{QEMU_BIN_DIR}/{_machine(arch).binary}"


def image_kernel(arch: str) -> str:
    """The guest kernel of `arch` inside the QEMU image."""
    _machine(arch)
    return f"{BOARD_DIR}/{arch}/vmlinuz"


def qemu_args(arch: str, machine: str, cpus: int, memory_mib: int, kernel: str, initrd: str) -> list[str]:
    """QEMU's whole argv (the binary as inside the QEMU image first) booting the busybox guest under TCG: no
    display, no default devices, no network, the serial console on stdio, QEMU exiting when the guest powers off,
    reboots or panics. Machine, CPU model and kernel command line come from the one domain context the libvirt
    boards use (render/domain.guest_domain_context), so both boot the same board."""
    m = _machine(arch)
    if machine not in m.machines:
        raise BackendError(f"{machine!r} is not a {arch} machine: use {' or '.join(m.machines)}")
    d = guest_domain_context(LocalFacts.placeholder(""), name="board", arch=arch, accel="tcg", cpus=cpus,
                             memory_mib=memory_mib, initrd=initrd, console_log="", machine=machine)
    machine_opts = d["machine"] + ",usb=off" + ("" if d["acpi"] else ",acpi=off")   # what libvirt passes too
    return [
        image_binary(arch),
        "-no-user-config", "-nodefaults",            # no /etc/qemu config, no VGA, NIC, floppy or CD-ROM
        "-machine", machine_opts,
        "-accel", f"tcg,tb-size={TB_CACHE_MIB}",
        *(["-cpu", d["cpu"]] if d["cpu"] else []),
        "-m", str(d["memory_mib"]), "-smp", str(d["vcpus"]),
        "-display", "none", "-nic", "none",
        "-L", FIRMWARE_DIR,
        "-kernel", kernel, "-initrd", initrd, "-append", d["cmdline"],
        # the console is the pod log; signal=off: a ^C on an attached terminal is the guest's, not QEMU's
        "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
        # panic=-1 reboots the guest at once; with -no-reboot that ends QEMU as a poweroff does
        "-no-reboot",
        # QEMU's own seccomp filter, as libvirt runs it
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]


def container_memory_mib(memory_mib: int) -> int:
    """A memory limit the QEMU container of a `memory_mib` guest never reaches: all of the guest's RAM touched, a
    full translation cache and QEMU itself."""
    return memory_mib + TB_CACHE_MIB + QEMU_OVERHEAD_MIB


def _machine(arch: str) -> Arch:
    m = MACHINES.get(arch)
    if m is None:
        raise BackendError(f"unknown guest arch {arch!r}: use one of {', '.join(MACHINES)}")
    return m


# --- recipes: what goes into an image, and its tag ------------------------------------------------------------------

@dataclass(frozen=True)
class QemuImage:
    """The QEMU image of some arches: its reference and where things are inside it."""

    ref: str
    arches: tuple[str, ...]
    binaries: Mapping[str, str] = field(default_factory=dict)   # arch -> qemu-system binary
    kernels: Mapping[str, str] = field(default_factory=dict)    # arch -> guest kernel
    busybox: str = BUSYBOX

    def args(self, arch: str, machine: str, cpus: int, memory_mib: int, initrd: str = BOARD_INITRD) -> list[str]:
        """qemu_args for a board of `arch` booted from this image."""
        if arch not in self.arches:
            raise BackendError(f"the QEMU image {self.ref} has no {arch} emulator (it has {', '.join(self.arches)})")
        return qemu_args(arch, machine, cpus, memory_mib, self.kernels[arch], initrd)


@dataclass(frozen=True)
class ImageRecipe:
    """What an image is built from: in-image path -> (host file, mode), the Dockerfile, and the reference whose tag
    hashes all of it."""

    ref: str
    files: Mapping[str, tuple[Path, int]]
    dockerfile: str


def parse_ldd(binary: str, text: str) -> list[str]:
    """The libraries and the loader `ldd` names for `binary`, in its order; a missing one is an error."""
    out: list[str] = []
    for line in proc.lines(text):
        name, arrow, rest = line.partition("=>")
        target = (rest if arrow else name).strip().split(" (")[0].strip()
        if target == "not found":
            raise BackendError(f"{binary} needs {name.strip()}, which is not installed: reinstall the package of "
                               f"{os.path.basename(binary)}")
        if target.startswith("/"):
            out.append(target)
    return out


def shared_libraries(binary: str) -> list[str]:
    """`ldd binary`: what the dynamic loader maps for it (the loader itself included)."""
    done = proc.run(["ldd", binary], what=f"ldd {binary}", check=False, missing="apt-get install libc-bin")
    if done.returncode != 0 and "not a dynamic executable" not in done.stdout + done.stderr:
        raise BackendError(f"ldd {binary}: {proc.last_line(done.stderr or done.stdout)}")
    return parse_ldd(binary, done.stdout)


def _firmware(name: str, binary: str) -> Path:
    share = Path(binary).resolve().parent.parent / "share"
    dirs = [share / "qemu", share / "seabios", *(Path(d) for d in FIRMWARE_SEARCH)]
    for d in dirs:
        if (d / name).is_file():
            return d / name
    raise BackendError(f"QEMU firmware {name} is not in {', '.join(dict.fromkeys(map(str, dirs)))}: "
                       f"apt-get install {FIRMWARE_PACKAGE.get(name, 'qemu-system-data')}")


def _host_busybox() -> Path:
    arch = host.HOST_ARCH
    if arch not in MACHINES:
        raise BackendError(f"this machine's arch has no busybox guest (only {', '.join(MACHINES)} have): build the "
                           "soc-test images on one of those")
    return load_guest(arch).busybox


def _add(files: dict[str, tuple[Path, int]], dest: str, src: Path | str, executable: bool | None = None) -> None:
    """Put the file `src` names (symlinks followed) at `dest`, readable by anyone; executable as given, else as
    the host file is."""
    real = Path(os.path.realpath(src))
    try:
        st = real.stat()
    except OSError as err:
        raise BackendError(f"cannot read {src}: {err.strerror}") from None
    if executable is None:
        executable = bool(st.st_mode & 0o111)
    mode = 0o755 if executable else 0o644
    if dest in files and files[dest][0] != real:
        raise BackendError(f"two files for {dest} in one image: {files[dest][0]} and {real}")
    files[dest] = (real, mode)


def content_tag(files: Mapping[str, tuple[Path, int]], dockerfile: str) -> str:
    """16 hex of sha256 over the recipe version, the Dockerfile and every file's in-image path, mode and content."""
    digest = hashlib.sha256(f"hybridorch soc image recipe {RECIPE_VERSION}\n{dockerfile}\0".encode())
    for dest in sorted(files):
        src, mode = files[dest]
        digest.update(f"{dest}\0{mode:o}\0".encode())
        with open(src, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _dockerfile(title: str, labels: Mapping[str, str], user: bool) -> str:
    lines = [f"# {title}", "FROM scratch", "COPY rootfs/ /",
             "LABEL " + " ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in labels.items())]
    if user:
        lines.append(f"USER {RUN_AS_UID}:{RUN_AS_GID}")
    return "\n".join(lines) + "\n"


def _arches(arches: Iterable[str]) -> tuple[str, ...]:
    wanted = list(dict.fromkeys(arches))
    for arch in wanted:
        _machine(arch)
    if not wanted:
        raise BackendError("a QEMU image needs at least one arch")
    return tuple(a for a in MACHINES if a in wanted)   # table order: the same image whatever order was asked


def qemu_image_recipe(arches: Iterable[str]) -> ImageRecipe:
    """What `qemu_image` builds, found on this machine (no Docker): each arch's QEMU with its libraries, loader,
    TCG module and firmware, its guest kernel, and the host's static busybox."""
    wanted = _arches(arches)
    files: dict[str, tuple[Path, int]] = {}
    triplet = ARCHES[host.HOST_ARCH].triplet if host.HOST_ARCH in ARCHES else ""
    for arch in wanted:
        binary = host.qemu_binary(arch)    # missing: a one-line error naming the apt package
        kernel = load_guest(arch).kernel
        m = _machine(arch)
        _add(files, image_binary(arch), binary, executable=True)
        # a Debian QEMU that also has KVM loads TCG as a module, from ../lib/<triplet>/qemu beside its binary
        module = Path(binary).resolve().parent.parent / "lib" / triplet / "qemu" / f"accel-tcg-{m.uname}.so"
        loaded = [binary]
        if triplet and module.is_file():
            _add(files, f"/usr/lib/{triplet}/qemu/{module.name}", module, executable=False)
            loaded.append(str(module))
        for path in loaded:
            for lib in shared_libraries(path):
                _add(files, lib, lib)
        for name in FIRMWARE.get(arch, ()):
            _add(files, f"{FIRMWARE_DIR}/{name}", _firmware(name, binary), executable=False)
        _add(files, image_kernel(arch), kernel, executable=False)
    _add(files, BUSYBOX, _host_busybox(), executable=True)
    dockerfile = _dockerfile(f"hybridorch soc-test boards: QEMU for {', '.join(wanted)} (recipe {RECIPE_VERSION})",
                             {LABEL_MANAGED: MANAGED_BY, LABEL_QEMU_ARCHES: ",".join(wanted)}, user=True)
    return ImageRecipe(f"{QEMU_REPOSITORY}:{content_tag(files, dockerfile)}", files, dockerfile)


def board_image_recipe(plan_name: str, initrd: Path) -> ImageRecipe:
    """What `board_image` builds: busybox and the plan's initrd; the tag is the initrd's hash."""
    if len(plan_name) > 63 or not _REPO_NAME.fullmatch(plan_name):
        raise BackendError(f"plan name {plan_name!r} cannot name an image: use a DNS-1123 label")
    files: dict[str, tuple[Path, int]] = {}
    _add(files, BUSYBOX, _host_busybox(), executable=True)
    _add(files, IMAGE_INITRD, initrd, executable=False)
    digest = hashlib.sha256()
    with open(files[IMAGE_INITRD][0], "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    # no USER: the init container's user is the pod's to choose (an emptyDir is writable by anyone)
    dockerfile = _dockerfile(f"hybridorch soc-test board {plan_name}: its initrd",
                             {LABEL_MANAGED: MANAGED_BY, LABEL_SOC_PLAN: plan_name}, user=False)
    return ImageRecipe(f"{BOARD_REPOSITORY_PREFIX}{plan_name}:{digest.hexdigest()[:16]}", files, dockerfile)


# --- building --------------------------------------------------------------------------------------------------------

def _docker(*args: str, what: str, timeout: float = 60, check: bool = False) -> proc.Completed[str]:
    return proc.run(["docker", *args], what=what, timeout=timeout, check=check, missing=_NO_DOCKER)


def _labels(ref: str) -> dict[str, str] | None:
    """The labels of a local image; None when the engine has no such image."""
    out = _docker("image", "inspect", "-f", "{{json .Config.Labels}}", ref, what=f"docker image inspect {ref}")
    if out.returncode != 0:
        if "no such" in (out.stderr + out.stdout).lower():
            return None
        raise BackendError(f"docker image inspect {ref}: {proc.last_line(out.stderr or out.stdout)}")
    labels = json.loads(out.stdout or "null")
    return labels if isinstance(labels, dict) else {}


def image_arches(ref: str) -> tuple[str, ...] | None:
    """The arches a local QEMU image emulates (its label); None when there is no such image or it has no label."""
    labels = _labels(ref)
    value = (labels or {}).get(LABEL_QEMU_ARCHES)
    return tuple(a for a in value.split(",") if a) if value else None


def ensure_image(recipe: ImageRecipe) -> bool:
    """Build the recipe's image unless the local engine has it already; True when it was built."""
    if _labels(recipe.ref) is not None:
        return False
    context = Path(tempfile.mkdtemp(prefix="hybridorch-soc-image-"))
    try:
        rootfs = context / "rootfs"
        rootfs.mkdir()
        for dest, (src, mode) in recipe.files.items():
            target = rootfs / dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
            os.chmod(target, mode)
        # the context's modes are the image's: a private umask must not make directories unreadable for nobody
        for dirpath, _dirs, _files in os.walk(rootfs):
            os.chmod(dirpath, 0o755)
        (context / "Dockerfile").write_text(recipe.dockerfile)
        _docker("build", "-q", "-t", recipe.ref, str(context), what=f"building image {recipe.ref}", timeout=900,
                check=True)
    finally:
        shutil.rmtree(context, ignore_errors=True)
    return True


def guest_image(ref: str, arch: str, initrd: Path) -> bool:
    """A nested workload's busybox guest as an image KubeVirt boots with kernelBoot: the arch's guest kernel and
    `initrd` at the paths of a containerDisk's kernel (runtime.DISK_KERNEL/DISK_INITRD), under the tag render
    chose. Rebuilt when what it holds changed (a label hashes it); True when it was built."""
    from hybridorch.core.runtime import DISK_INITRD, DISK_KERNEL

    files: dict[str, tuple[Path, int]] = {}
    _add(files, DISK_KERNEL, load_guest(arch).kernel, executable=False)
    _add(files, DISK_INITRD, initrd, executable=False)
    content = content_tag(files, "guest")
    labels = {LABEL_MANAGED: MANAGED_BY, LABEL_GUEST_CONTENT: content}
    # KubeVirt's kernelBoot init container copies the files out as its own (non-root) user: readable by anyone
    recipe = ImageRecipe(ref, files, _dockerfile(f"hybridorch busybox guest ({arch})", labels, user=False))
    if (_labels(ref) or {}).get(LABEL_GUEST_CONTENT) == content:
        return False
    _docker("image", "rm", "-f", ref, what=f"docker image rm {ref}")
    return ensure_image(recipe)


def qemu_image(arches: Iterable[str]) -> QemuImage:
    """The QEMU image for boards of `arches` in the local Docker engine, built if it is not there yet."""
    wanted = _arches(arches)
    recipe = qemu_image_recipe(wanted)
    ensure_image(recipe)
    return QemuImage(recipe.ref, wanted, {a: image_binary(a) for a in wanted}, {a: image_kernel(a) for a in wanted})


def board_image(plan_name: str, initrd: Path) -> str:
    """The board image of one plan's initrd in the local Docker engine, built if it is not there yet."""
    recipe = board_image_recipe(plan_name, Path(initrd))
    ensure_image(recipe)
    return recipe.ref
