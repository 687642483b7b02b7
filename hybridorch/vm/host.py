"""This machine as the local VM engine sees it: the cache root, where VM state lives, the QEMU binaries, and the
KVM probe (a real guest booted under KVM through libvirt, cached per host kernel)."""
from __future__ import annotations

import json
import os
import platform
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from hybridorch.errors import BackendError
from hybridorch.core.runtime import HOST_ARCHES, cache_root
from hybridorch.render.domain import MACHINES, LocalFacts, sandbox_runtime_of

HOST_ARCH = HOST_ARCHES.get(platform.machine(), "")
KVM_PROBE_TIMEOUT = 6.0   # a KVM guest boots to /init in well under a second; TCG takes ~2.5 s


def state_root() -> Path:
    override = os.environ.get("HYBRIDORCH_STATE_DIR")
    return Path(override) if override else cache_root() / "state"


# the files a run keeps beside each VM are small; one that is larger, or not a regular file (a FIFO, /dev/zero
# behind a symlink), is not a record this version wrote: it reads as unreadable, never blocks or fills memory
STATE_LIMIT = 1 << 20
PID_FILE_LIMIT = 64
MAX_PID = 2 ** 22        # the kernel's largest pid_max: a larger pid is not a process


def read_small(path: Path, limit: int) -> str | None:
    """The text of the regular file at `path` if it holds at most `limit` bytes; None for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)   # a FIFO opens without a writer
    except (OSError, ValueError):   # ValueError: a NUL in the path
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        data = os.read(fd, limit + 1)
        return data.decode("utf-8", errors="replace") if len(data) <= limit else None
    except OSError:
        return None
    finally:
        os.close(fd)


def read_json(path: Path, limit: int = STATE_LIMIT) -> Any:
    """The JSON document in a small regular file; None when it is missing, too large, not a file or not JSON
    (nested deeper than the parser recurses included)."""
    text = read_small(path, limit)
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def read_state(workdir: Path) -> dict[str, Any] | None:
    """A VM's state record (state.json), or None when it is unreadable or not an object."""
    state = read_json(workdir / "state.json")
    return state if isinstance(state, dict) else None


def plausible_pid(value: object) -> int | None:
    """A recorded pid (qemu.pid, a stack lock's holder) that could name a process, else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < MAX_PID else None


def read_pid(workdir: Path) -> int | None:
    """The QEMU pid recorded beside a VM (qemu.pid), or None when it is unreadable or not a plausible pid."""
    text = read_small(workdir / "qemu.pid", PID_FILE_LIMIT)
    try:
        return plausible_pid(int(text.strip())) if text is not None else None
    except ValueError:
        return None


def running_vm_states(stack: str = "*") -> list[tuple[Path, dict]]:
    """(workdir, state record) of every local VM whose QEMU process is alive, for one stack or all ("*"): what
    the backend records beside each VM it starts, read by `ps`, `gc` and the live audit."""
    root = state_root()
    out: list[tuple[Path, dict]] = []
    for state_file in sorted(root.glob(f"{stack}/*/state.json")) if root.is_dir() else []:
        state, pid = read_state(state_file.parent), read_pid(state_file.parent)
        if state is not None and pid is not None and os.path.exists(f"/proc/{pid}"):
            out.append((state_file.parent, state))
    return out


def guests_root() -> Path:
    override = os.environ.get("HYBRIDORCH_GUEST_DIR")
    return Path(override) if override else cache_root() / "guests"


def qemu_binary(arch: str) -> str:
    """The qemu-system binary for `arch`; HYBRIDORCH_QEMU_BINARY overrides (tests point it at nothing)."""
    if arch not in MACHINES:
        raise BackendError(f"unknown guest arch {arch!r}: use one of {', '.join(MACHINES)}")
    machine = MACHINES[arch]
    wanted = os.environ.get("HYBRIDORCH_QEMU_BINARY") or machine.binary
    found = shutil.which(wanted)
    if not found:
        raise BackendError(f"QEMU is not installed ({wanted} not found): apt-get install {machine.package}")
    return os.path.abspath(found)


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


def _verdicts() -> dict[str, dict[str, object]]:
    try:
        data = json.loads((cache_root() / "kvm-probe.json").read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def kvm_usable(probe: bool = True) -> bool:
    """Whether KVM can run our guests, cached per host kernel in ~/.cache/hybridorch/kvm-probe.json.

    /dev/kvm can exist and pass the ioctl while guests hang (nested virtualisation), so the probe boots the
    amd64 guest's kernel as a `kvm` domain with a short timeout and checks that /init printed its marker.
    Without `probe`, an unprobed kernel counts as no KVM."""
    if HOST_ARCH != "amd64" or os.environ.get("HYBRIDORCH_ACCEL") == "tcg":
        return False
    kernel = platform.release()
    verdicts = _verdicts()
    if kernel in verdicts:
        return bool(verdicts[kernel]["kvm"])
    if not probe:
        return False
    ok, why = False, "/dev/kvm missing or KVM_GET_API_VERSION failed"
    if _kvm_api_ok():
        from hybridorch.vm.boot import probe_kvm
        ok, why = probe_kvm(KVM_PROBE_TIMEOUT)
    verdicts[kernel] = {"kvm": ok, "why": why, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = cache_root() / "kvm-probe.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(verdicts, indent=2) + "\n")
    return ok


def accelerator_for(arch: str, probe: bool = True) -> str:
    return "kvm" if arch == HOST_ARCH and kvm_usable(probe) else "tcg"


def missing_disks(images: list[str], stack_file: str | None) -> frozenset[str]:
    """The containerDisks among `images` that are neither in the local Docker engine nor have a recipe."""
    from hybridorch.core import images as recipes
    from hybridorch import proc

    out = set()
    for image in images:
        if recipes.find_recipe(image, recipes.image_dirs(stack_file)) is not None:
            continue
        found = proc.run(["docker", "image", "inspect", image], what="docker", check=False, timeout=30)
        if found.returncode != 0:
            out.add(image)
    return frozenset(out)


def docker_sandbox_runtime() -> str | None:
    """The gVisor/Kata runtime the local Docker engine has registered; None when it has none or does not answer
    (then a sandboxed placement runs in its own VM, which needs no Docker runtime)."""
    from hybridorch import proc

    try:
        out = proc.run(["docker", "info", "--format", "{{json .Runtimes}}"], what="docker info", check=False,
                       timeout=30)
        runtimes = json.loads(out.stdout or "null") if out.returncode == 0 else None
    except (BackendError, ValueError):
        return None
    return sandbox_runtime_of(runtimes) if isinstance(runtimes, dict) else None


def local_facts(probe: bool = True, *, sandboxes: bool = False) -> LocalFacts:
    """The real facts the local rendering needs; `probe=False` never boots the KVM probe (render uses the
    cached verdict). Docker is asked for its gVisor/Kata runtime only with `sandboxes` (a plan with sandboxed
    placements): nothing else depends on the answer."""
    emulators = {}
    for arch, m in MACHINES.items():
        wanted = os.environ.get("HYBRIDORCH_QEMU_BINARY") or m.binary
        found = shutil.which(wanted)
        emulators[arch] = os.path.abspath(found) if found else wanted
    return LocalFacts(cache_dir=str(cache_root()), state_dir=str(state_root()), guests_dir=str(guests_root()),
                      accelerators={arch: accelerator_for(arch, probe) for arch in MACHINES},
                      emulators=emulators, run_as=f"+{os.getuid()}:+{os.getgid()}",
                      sandbox_runtime=docker_sandbox_runtime() if sandboxes else None)
