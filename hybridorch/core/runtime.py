"""The facts every layer shares, in one place: runtimes and workload states, the arch/machine/console table,
the readiness-port, host-publishing and container-hardening rules, which placements run an image inside a VM, the
refusal of an arch without a local guest, and the cache root.
Pure: no I/O (the cache root reads only the environment it is given)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

if TYPE_CHECKING:
    from hybridorch.core.spec import Port, Workload


class Named(str, Enum):
    """An enum that is its value wherever it is written: str(), format(), f-strings, JSON, Jinja, Docker labels
    (what StrEnum does on Python 3.11+; setup.cfg promises 3.10). yaml.safe_dump alone refuses it: write
    `.value` into data that a YAML dumper sees."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Runtime(Named):
    """Where a workload runs: its name in YAML, JSON, labels and templates."""

    CONTAINER = "container"
    SANDBOXED = "sandboxed"     # a container with its own kernel (gVisor, Kata, or a small VM of its own)
    VM = "vm"
    NESTED = "nested"           # containers inside a VM


RUNTIMES: tuple[str, ...] = tuple(r.value for r in Runtime)
CONTAINER_RUNTIMES = frozenset({Runtime.CONTAINER, Runtime.SANDBOXED})
VM_RUNTIMES = frozenset({Runtime.VM, Runtime.NESTED})
AUTO = "auto"                   # a workload's `runtime: auto`: the policy decides (Workload.runtime None)


def requested_runtime(value: str | None) -> Runtime | None:
    """A spec's `runtime` field as the workload carries it: None for auto (or unset), else the Runtime."""
    return None if value is None or value == AUTO else Runtime(value)


def runtime_of(value: object) -> Runtime | None:
    """A runtime name read from outside (a label, a state file, a foreign manifest); None when it names none."""
    try:
        return Runtime(value)
    except (ValueError, TypeError):     # TypeError: an unhashable value (a list in a hand-written manifest)
        return None


class LocalSandbox(Named):
    """Policy `localSandbox`: where a sandboxed placement runs on the local target."""

    AUTO = "auto"               # Docker's gVisor/Kata runtime when it has one, else a VM of its own
    RUNTIME = "runtime"         # only a Docker sandbox runtime: without one `up` refuses
    VM = "vm"                   # always a VM of its own


class SandboxClass(Named):
    """Policy `sandboxRuntimeClass`: what a cluster runs sandboxed pods in."""

    KATA = "kata"               # a small VM per pod: needs hardware virtualisation
    GVISOR = "gvisor"           # runsc, a user-space kernel: runs on any Linux host


class State(Named):
    """What `status` and `ps` report of one workload."""

    READY = "ready"             # running and its readiness check passes
    RUNNING = "running"         # running, readiness not (yet) shown
    PENDING = "pending"         # being created or scheduled
    STOPPED = "stopped"
    FAILED = "failed"
    ABSENT = "absent"           # nothing of it exists


# --- the arch table ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Arch:
    """One guest architecture: its names, how QEMU emulates it, and what its Debian guest is made of."""

    name: str                     # Debian's and the spec's name (amd64)
    uname: str                    # the kernel's and libvirt's name (x86_64)
    machines: tuple[str, ...]     # QEMU machine types (soc-test accepts these); the first is the default
    # local VMs (binary None: no local guest for this arch, e.g. riscv64: Debian 12 ships no riscv64 packages)
    binary: str | None = None     # qemu-system binary
    package: str | None = None    # the Debian package providing it
    console: str = "ttyS0"        # kernel console device of the machine's first serial port
    cpu: str | None = None        # CPU model under TCG (None: QEMU's default)
    acpi: bool = False            # the machine has ACPI on a direct kernel boot (arm64 `virt` only with UEFI)
    kernel_package: str = ""      # Debian meta-package naming the current kernel
    triplet: str = ""             # multiarch library directory
    loader: str = ""              # ELF interpreter runc is linked against
    modules: tuple[str, ...] = ()  # kernel modules the guest loads (their deps follow from .modinfo)
    no_guest: str = ""            # why there is no local guest of this arch (binary None)

    @property
    def machine(self) -> str:
        return self.machines[0]

    @property
    def local(self) -> bool:
        """A guest of this arch can boot on this machine's VM engine."""
        return self.binary is not None


ARCHES: dict[str, Arch] = {
    "amd64": Arch("amd64", "x86_64", ("q35", "pc"), "qemu-system-x86_64", "qemu-system-x86", "ttyS0", None, True,
                  "linux-image-cloud-amd64", "x86_64-linux-gnu", "/lib64/ld-linux-x86-64.so.2",
                  ("virtio_pci", "virtio_net")),
    # cortex-a57 boots faster under TCG than `max` (no SVE/pointer-auth emulation)
    "arm64": Arch("arm64", "aarch64", ("virt",), "qemu-system-aarch64", "qemu-system-arm", "ttyAMA0", "cortex-a57",
                  False, "linux-image-arm64", "aarch64-linux-gnu", "/lib/ld-linux-aarch64.so.1",
                  ("virtio_pci", "virtio_mmio", "virtio_net")),
    "riscv64": Arch("riscv64", "riscv64", ("virt",),
                    no_guest="Debian 12 ships no riscv64 packages (no kernel, busybox or runc to build a guest from)"),
}
LOCAL_ARCHES: tuple[str, ...] = tuple(a for a, info in ARCHES.items() if info.local)
HOST_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}   # uname -m -> arch


def local_arch(arch: str) -> Arch | None:
    """The table entry of an arch a local guest can have; None for any other."""
    info = ARCHES.get(arch)
    return info if info is not None and info.local else None


def guest_refusal(arch: str) -> str | None:
    """The one text that refuses a guest of an arch without a local guest (local VMs, soc-test boards); None
    for an arch that has one, or that the table does not know (the spec's schema names those)."""
    info = ARCHES.get(arch)
    if info is None or info.local:
        return None
    return f"{arch} guests are not supported: {info.no_guest} (use {' or '.join(LOCAL_ARCHES)})"


# --- rules -------------------------------------------------------------------------------------------------

# Where a containerDisk keeps the kernel and initrd that boot its root (KubeVirt's kernelBoot layout): the local
# target boots them through libvirt, a cluster through KubeVirt's firmware.kernelBoot
DISK_KERNEL = "/boot/vmlinuz"
DISK_INITRD = "/boot/initrd.img"


# On the kernel command line of a busybox guest: take the address by DHCP (KubeVirt's masquerade binding hands
# out its own), not the fixed address of QEMU's user network the local target uses
GUEST_DHCP_ARG = "hyb.net=dhcp"


def _console(arch: str) -> str:
    return ARCHES[arch].console if arch in ARCHES else "ttyS0"


def guest_cmdline(arch: str) -> str:
    """The kernel command line of the busybox guest (its initramfs is the root)."""
    return f"console={_console(arch)} quiet loglevel=3 panic=-1"


def disk_cmdline(arch: str, bus: str) -> str:
    """The kernel command line of a VM booting its own disk's kernel: the root is the first disk, on both targets."""
    return f"root=/dev/{'sda' if bus == 'sata' else 'vda'} rw console={_console(arch)} panic=-1"


def readiness_port(w: Workload) -> int | None:
    """The TCP port whose answer shows the workload is ready: `ready.port`; without it the first TCP port (the
    workload's, then its inner containers'), unless a `ready.marker` (a log line) is the check instead.
    None: no port to check."""
    if w.ready and w.ready.port:
        return w.ready.port
    if w.ready and w.ready.marker:
        return None
    ports = list(w.ports) + [p for c in w.containers for p in c.ports]
    return next((p.port for p in ports if p.protocol == "TCP"), None)


LOOPBACK = "127.0.0.1"
ANY_ADDRESS = "0.0.0.0"


def host_address(public: bool) -> str:
    """Where a published port listens on the host: every interface only when the spec says `public`."""
    return ANY_ADDRESS if public else LOOPBACK


def publishes_host_ports(replica: int) -> bool:
    """Only replica 0 publishes host ports: a second replica on the same host port would fail to start."""
    return replica == 0


def local_ports(w: Workload) -> tuple[Port, ...]:
    """The ports a workload has on this machine: its own, then its inner containers' (the first of each number and
    protocol)."""
    seen: dict[tuple[int, str], Port] = {}
    for p in list(w.ports) + [p for c in w.containers for p in c.ports]:
        seen.setdefault((p.port, p.protocol), p)
    return tuple(seen.values())


def assign_host_ports(workloads: Iterable[Workload]) -> dict[tuple[str, int, str], int | None]:
    """The local target's host port for every port of a stack, keyed (workload, port, protocol): an explicit
    hostPort; else the same number when no hostPort and no earlier workload has it; else None, an automatic one
    (as `docker run -P` does). Two workloads may listen on the same port: each has its own container or VM
    address, and on Kubernetes its own Service; only two explicit hostPorts can collide (the spec refuses that)."""
    ports = [(w.name, p) for w in workloads if w.replicas > 0 for p in local_ports(w)]
    taken = {(p.host_port, p.protocol) for _, p in ports if p.host_port}
    out: dict[tuple[str, int, str], int | None] = {}
    for name, p in ports:
        if p.host_port:
            out[(name, p.port, p.protocol)] = p.host_port
        elif (p.port, p.protocol) in taken:
            out[(name, p.port, p.protocol)] = None
        else:
            taken.add((p.port, p.protocol))
            out[(name, p.port, p.protocol)] = p.port
    return out


PRIVILEGES = ("privileged", "host-devices")   # requirements a container gets only as a privileged one


def is_privileged(w: Workload) -> bool:
    """The workload's container runs privileged (where a policy lets a container have what it requires)."""
    return any(r in w.requires for r in PRIVILEGES)


def read_only_root(w: Workload) -> bool:
    """The one hardening rule of both targets (Docker and Kubernetes): every container has a read-only root
    filesystem with a writable /tmp, unless it runs privileged or its spec says `writableRoot: true`."""
    return not is_privileged(w) and not w.writable_root


def scratch_tmp(w: Workload) -> bool:
    """A read-only root needs somewhere to write: a /tmp of its own, unless the spec mounts a volume there."""
    return read_only_root(w) and not any(v.mount_path.rstrip("/") == "/tmp" for v in w.volumes)


def container_env(w: Workload, stack: str, replica: int) -> dict[str, str]:
    """The environment a workload's container sees, in Docker or in its own sandbox VM: the spec's env and where
    it runs."""
    return {**w.env, "HYBRIDORCH_STACK": stack, "HYBRIDORCH_WORKLOAD": w.name, "HYBRIDORCH_REPLICA": str(replica)}


def runs_image_in_vm(w: Workload) -> bool:
    """Placed in a VM, the workload's container image runs inside it (the policy moved a container into a VM:
    own kernel, escape surface, ...) as the guest's only container. An image named by an explicit `runtime: vm`
    is a boot disk (containerDisk) instead, and a VM with its own disk (vm.disk.image/pvc) boots that."""
    return bool(w.image) and w.runtime != Runtime.VM and not (w.vm.disk_image or w.vm.disk_pvc) \
        and w.os == "linux"


# --- where things are cached --------------------------------------------------------------------------------

def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """$XDG_CACHE_HOME/hybridorch, else ~/.cache/hybridorch: guests, VM state, prepared images, KVM probe."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".cache")
    return Path(base) / "hybridorch"
