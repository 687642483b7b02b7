"""What a local VM domain is made of, as plain data: the arch/machine/console table, the host-port publishing
rule, where each replica's files live, and the context the libvirt template lays out. Pure: no I/O."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from hybridorch.core.labels import LABEL_REPLICA, replica_dir, replica_name, replica_title
from hybridorch.core.runtime import (ANY_ADDRESS, ARCHES, Arch, LocalSandbox, Runtime, assign_host_ports,
                                     disk_cmdline, guest_cmdline, host_address, local_ports,
                                     publishes_host_ports)

if TYPE_CHECKING:
    from hybridorch.core.spec import Workload

XMLNS_LABELS = "https://hybridorch.dev/xmlns/labels/1"
MIN_INITRAMFS_MIB = 128   # the busybox guest's initramfs lives in RAM: below this it cannot unpack
# A sandboxed container in its own VM gets its memory limit plus this for the guest kernel and the initramfs that
# holds its image (measured: see sandbox_memory_mib); the policy's sandbox overhead must cover it and QEMU's own
SANDBOX_GUEST_MIB = 64
# TCG translation cache of a sandbox VM: 32 MiB instead of QEMU's default cut a 64Mi container's VM from 268 to 201 MiB
# of anonymous host memory here (~137 MiB above the container's limit, inside the policy's 160Mi sandbox overhead)
SANDBOX_TB_CACHE_MIB = 32
CPU_PERIOD_US = 100_000   # CFS period of a sandbox VM's vCPU quota (Docker's default period)
# Docker runtimes that give a sandboxed container its own kernel, best first (gVisor, then Kata)
SANDBOX_RUNTIMES = ("runsc", "kata-runtime", "kata", "io.containerd.kata.v2", "kata-qemu", "kata-fc")


# the arches a local guest boots on, from the one arch/machine/console table (runtime.py)
MACHINES: dict[str, Arch] = {name: info for name, info in ARCHES.items() if info.local}


def sandbox_runtime_of(registered: Iterable[str]) -> str | None:
    """The best sandbox runtime among those a Docker engine has registered, or None."""
    names = set(registered)
    return next((r for r in SANDBOX_RUNTIMES if r in names), None)


def sandbox_in_vm(choice: LocalSandbox, runtime: str | None) -> bool:
    """Where a local `sandboxed` placement runs: in its own VM (True) or in Docker under `runtime` (False).

    auto: a registered gVisor/Kata runtime if Docker has one, else its own VM (one kernel per sandbox, the model
    Kata uses); vm: always its own VM; runtime: always the Docker runtime (the backend refuses when there is none,
    rather than running the container on the host kernel)."""
    if choice is LocalSandbox.VM:
        return True
    if choice is LocalSandbox.RUNTIME:
        return False
    return runtime is None


def vcpu_quota_us(cpu_millis: int, vcpus: int) -> int:
    """Each vCPU's CFS quota per CPU_PERIOD_US so that all of them together get `cpu_millis` (libvirt's floor: 1 ms)."""
    return max(1000, cpu_millis * CPU_PERIOD_US // 1000 // max(vcpus, 1))


def sandbox_memory_mib(workload_mib: int) -> int:
    """Guest RAM of a sandbox VM: the container's limit plus the guest kernel and initramfs."""
    return max(MIN_INITRAMFS_MIB, workload_mib + SANDBOX_GUEST_MIB)


AUTO_PORT = 0   # a forward's host port that QEMU picks (hostfwd with port 0 binds a free one)


@dataclass(frozen=True)
class Forward:
    host_addr: str
    host_port: int      # AUTO_PORT until the running domain's own port is read back
    guest_port: int

    def __str__(self) -> str:
        return f"{self.host_addr}:{self.host_port or '*'}->{self.guest_port}/tcp"


def workload_forwards(w: Workload, assigned: Mapping[tuple[str, int, str], int | None] | None = None
                      ) -> tuple[Forward, ...]:
    """Host ports of a VM: every TCP port (inner containers' too), on 127.0.0.1 unless `public`. `assigned` is the
    stack's runtime.assign_host_ports (default: this workload's alone); host port AUTO_PORT lets QEMU pick a free
    one, read back once the domain runs (vm.boot.GuestVM.start, vm.libvirt.bound_ports)."""
    host = assign_host_ports([w]) if assigned is None else assigned
    return tuple(Forward(host_address(p.public), host.get((w.name, p.port, p.protocol)) or AUTO_PORT, p.port)
                 for p in local_ports(w) if p.protocol == "TCP")


HOSTFWD = re.compile(r"hostfwd=tcp:([^:,-]*):(\d+)-[^:,]*:(\d+)")


def forwards_in(xml: str) -> tuple[Forward, ...]:
    """The forwards a rendered domain sets up (its QEMU user network's hostfwd rules)."""
    return tuple(Forward(addr or ANY_ADDRESS, int(host), int(guest)) for addr, host, guest in HOSTFWD.findall(xml))


def replica_forwards(forwards: tuple[Forward, ...], replica: int) -> tuple[Forward, ...]:
    """Only replica 0 forwards host ports (runtime.publishes_host_ports)."""
    return forwards if publishes_host_ports(replica) else ()


def domain_name(stack: str, workload: str, replica: int) -> str:
    return replica_name(f"hyb-{stack}-{workload}", replica)


@dataclass(frozen=True)
class LocalFacts:
    """What rendering for this machine needs to know about it: where guests and VM state really live, which
    accelerator works per arch (the KVM probe's verdict), the QEMU binaries and whom QEMU runs as."""

    cache_dir: str
    state_dir: str
    guests_dir: str
    accelerators: Mapping[str, str] = field(default_factory=dict)   # arch -> kvm | tcg
    emulators: Mapping[str, str] = field(default_factory=dict)      # arch -> qemu-system path
    run_as: str | None = None                                        # DAC label "+uid:+gid"
    # the gVisor/Kata runtime the local Docker engine has registered (None: none, or not asked); with the policy's
    # localSandbox it decides whether a sandboxed placement runs in its own VM (sandbox_in_vm)
    sandbox_runtime: str | None = None

    @classmethod
    def placeholder(cls, cache_dir: str) -> "LocalFacts":
        """Facts of no particular machine (rendering without asking this one): its Docker is assumed to have gVisor,
        as a cluster has its RuntimeClass, so sandboxed placements get no VM; `up` renders with the real answer."""
        return cls(cache_dir, f"{cache_dir}/state", f"{cache_dir}/guests", sandbox_runtime=SANDBOX_RUNTIMES[0])


def vm_dir(facts: LocalFacts, stack: str, workload: str, replica: int) -> str:
    return f"{facts.state_dir}/{stack}/{replica_dir(workload, replica)}"


def domain_context(facts: LocalFacts, vm: Mapping[str, Any], *, stack: str, arch: str, replica: int,
                   has_disk: bool, forwards: tuple[Forward, ...], emulated: bool,
                   overhead_millis: int = 0) -> dict[str, Any]:
    """The `d` of templates/libvirt/domain.xml.j2 for one replica. `vm` is render's VM context; `overhead_millis` the
    CPU the placement's overhead reserves beside the workload's own (a sandbox VM may use both)."""
    m = MACHINES.get(arch)
    uname = m.uname if m else vm["guest_arch"]
    accel = facts.accelerators.get(arch) or ("kvm" if vm["accelerated"] else "tcg")
    if emulated:
        accel = "tcg"
    where = vm_dir(facts, stack, vm["name"], replica)
    if has_disk:
        # the disk's own kernel, shipped in its containerDisk (KubeVirt's kernelBoot layout), boots its root
        cmdline = disk_cmdline(arch, vm["bus"])
    else:
        cmdline = guest_cmdline(arch)
    sandbox = vm.get("runtime") is Runtime.SANDBOXED
    memory = vm["memory_mib"] if has_disk else \
        sandbox_memory_mib(vm["memory_mib"]) if sandbox else max(MIN_INITRAMFS_MIB, vm["memory_mib"])
    return _domain(
        facts, arch, accel, name=domain_name(stack, vm["name"], replica),
        title=f"{stack}/{replica_title(vm['name'], replica)}",
        labels={**vm["labels"], LABEL_REPLICA: str(replica)},
        memory_mib=memory, vcpus=vm["cores"], uname=uname, machine=vm["machine"],
        kernel=None if vm["windows"] else f"{where}/vmlinuz" if has_disk else f"{facts.guests_dir}/{arch}/vmlinuz",
        initrd=None if vm["windows"] else f"{where}/initrd.img",
        cmdline=cmdline, console_log=f"{where}/console.log",
        disk=f"{where}/disk.qcow2" if has_disk else None,
        seed=f"{where}/seed.iso" if has_disk and vm["user_data"] is not None else None,
        forwards=[{"host_addr": f.host_addr, "host_port": f.host_port, "guest_port": f.guest_port}
                  for f in forwards],
        bus=vm["bus"], nic_device="e1000e" if vm["nic_model"] == "e1000e" else "virtio-net-pci",
        windows=vm["windows"], on_reboot="restart" if has_disk else "destroy",
        # a sandbox VM is reachable only through its forwarded ports and reaches nothing (QEMU's restrict=on):
        # its container shares no network with the host or another tenant
        isolated=sandbox,
        tb_cache_mib=SANDBOX_TB_CACHE_MIB if sandbox else None,
        cpu_period_us=CPU_PERIOD_US,
        # the container's CPU limit plus the sandbox overhead the packing reserved for its VM: the limit alone
        # (250m under TCG) tripled the boot time
        cpu_quota_us=vcpu_quota_us(_millis(vm["cpu"]) + overhead_millis, vm["cores"]) if sandbox else None,
    )


def guest_domain_context(facts: LocalFacts, *, name: str, arch: str, accel: str, cpus: int, memory_mib: int,
                         initrd: str, console_log: str, machine: str | None = None,
                         labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The `d` of a one-shot guest (soc-test boards, the KVM probe): the busybox guest, no disk, no forwards."""
    m = MACHINES[arch]
    return _domain(facts, arch, accel, name=name, title=name, labels=dict(labels or {}), memory_mib=memory_mib,
                   vcpus=cpus, uname=m.uname, machine=machine or m.machine,
                   kernel=f"{facts.guests_dir}/{arch}/vmlinuz", initrd=initrd,
                   cmdline=guest_cmdline(arch), console_log=console_log)


def _domain(facts: LocalFacts, arch: str, accel: str, *, name: str, title: str, labels: Mapping[str, str],
            memory_mib: int, vcpus: int, uname: str, machine: str, kernel: str | None, initrd: str | None,
            cmdline: str, console_log: str, **given: Any) -> dict[str, Any]:
    """Every key templates/libvirt/domain.xml.j2 reads, with the defaults of a plain busybox guest; the one place
    that decides what the accelerator and the arch table mean for a domain."""
    m = MACHINES.get(arch)
    d: dict[str, Any] = {
        "name": name, "title": title, "type": "kvm" if accel == "kvm" else "qemu", "labels": labels,
        "memory_mib": memory_mib, "vcpus": vcpus, "arch": uname, "machine": machine,
        "cpu": "host" if accel == "kvm" else (m.cpu if m else None), "acpi": m.acpi if m else False,
        "emulator": facts.emulators.get(arch) or f"/usr/bin/{m.binary if m else 'qemu-system-' + uname}",
        "kernel": kernel, "initrd": initrd, "cmdline": cmdline, "efi": False, "disk": None, "seed": None,
        "console_log": console_log, "forwards": [], "bus": "virtio", "nic_device": "virtio-net-pci",
        "windows": False, "on_reboot": "destroy", "run_as": facts.run_as, "isolated": False,
        "tb_cache_mib": None, "cpu_period_us": None, "cpu_quota_us": None,
    }
    unknown = set(given) - set(d)
    if unknown:   # a typo would silently render the default
        raise TypeError(f"not a domain template key: {sorted(unknown)}")
    return {**d, **given}


def _millis(cpu: str) -> int:
    from hybridorch.core.schema import parse_quantity  # pure: the spec's own quantity parser

    value = parse_quantity(cpu)
    return int(value * 1000) if value is not None else 0
