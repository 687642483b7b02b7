"""Placement policy: decide, for each workload, container, sandboxed, vm or nested, and say why.

Pure and deterministic: Workload x Profile x host pools -> Placement. Profiles are data; every rule that fires
leaves a Reason a user can read.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Callable, Iterable

from hybridorch.errors import PolicyError
from hybridorch.core.runtime import VM_RUNTIMES, LocalSandbox, Runtime, SandboxClass
from hybridorch.core.spec import HostPool, Workload

STRENGTH = {Runtime.CONTAINER: 0, Runtime.SANDBOXED: 1, Runtime.VM: 2, Runtime.NESTED: 2}
ALL = frozenset(Runtime)
# What a cluster runs sandboxed pods in: Kata Containers (a small VM per pod: needs hardware virtualisation) or
# gVisor (runsc: a user-space kernel, runs on any Linux host)
SANDBOX_CLASSES: tuple[str, ...] = tuple(c.value for c in SandboxClass)
VM_ONLY = frozenset({Runtime.VM})
ISOLATED = frozenset({Runtime.SANDBOXED, Runtime.VM, Runtime.NESTED})     # anything off the shared kernel


@dataclass(frozen=True)
class Overhead:
    cpu_millis: int = 0
    memory_bytes: int = 0

    def __str__(self) -> str:
        if not self.cpu_millis and not self.memory_bytes:
            return "none"
        return f"+{self.cpu_millis}m CPU, +{self.memory_bytes // 2**20}Mi"


@dataclass(frozen=True)
class Profile:
    """An isolation/efficiency trade-off, as data (a user policy file overrides any field)."""

    name: str
    untrusted_runtime: Runtime = Runtime.SANDBOXED   # where untrusted code runs: sandboxed | vm
    internal_runtime: Runtime = Runtime.CONTAINER    # where another team's code runs: container | sandboxed
    trusted_privileged_container: bool = False    # allow privileged trusted workloads on the shared kernel
    separate_tenants: bool = False                # tenants never share a host
    spread_replicas: bool = True                  # replicas of one workload on different hosts
    headroom_percent: int = 10                    # capacity kept free on each host
    # Kata's documented pod overhead and a KubeVirt virt-launcher + QEMU footprint, per replica
    sandbox_overhead: Overhead = Overhead(250, 160 * 2**20)
    vm_overhead: Overhead = Overhead(200, 256 * 2**20)
    emulation_cpu_factor: int = 4                 # TCG needs several host cores per emulated one
    max_vm_cpus: int = 8                          # per-VM CPU ceiling (vCPUs or CPU limit); audit rule HYB002
    max_snapshot_age: str = "30d"                 # longest snapshot retention the audit accepts (HYB015)
    # where a sandboxed placement runs on the local target: auto (Docker's gVisor/Kata runtime, else its own VM),
    # runtime (only a Docker sandbox runtime), vm (always its own VM)
    local_sandbox: LocalSandbox = LocalSandbox.AUTO
    sandbox_runtime_class: SandboxClass = SandboxClass.KATA     # the RuntimeClass sandboxed pods name

    def overhead(self, runtime: Runtime) -> Overhead:
        if runtime is Runtime.SANDBOXED:
            return self.sandbox_overhead
        if runtime in VM_RUNTIMES:
            return self.vm_overhead
        return Overhead()


PROFILES: dict[str, Profile] = {
    "secure": Profile("secure", untrusted_runtime=Runtime.VM, internal_runtime=Runtime.SANDBOXED,
                      separate_tenants=True, headroom_percent=20, max_vm_cpus=4, max_snapshot_age="7d"),
    "balanced": Profile("balanced"),
    "efficient": Profile("efficient", trusted_privileged_container=True, spread_replicas=False,
                         headroom_percent=0, max_vm_cpus=16, max_snapshot_age="90d"),
}


@dataclass(frozen=True)
class Reason:
    rule: str
    message: str


@dataclass(frozen=True)
class Placement:
    workload: Workload
    runtime: Runtime
    reasons: tuple[Reason, ...]
    warnings: tuple[str, ...] = ()
    emulated: bool = False            # guest arch differs from the host's: QEMU TCG
    host_os: str = "linux"
    host_arch: str = "amd64"
    needs_virtualization: bool = False
    overhead: Overhead = Overhead()   # per replica, added to the workload's own resources
    vm_overhead_avoided: Overhead | None = None
    pools: tuple[str, ...] = ()       # host pools that can run it, in preference order
    emulation_factor: int = 1         # host cores per guest core when emulated

    @property
    def name(self) -> str:
        return self.workload.name

    @property
    def cpu_millis(self) -> int:
        """Host CPU one replica takes, overhead and emulation included."""
        cpu = self.workload.resources.cpu_millis
        return cpu * (self.emulation_factor if self.emulated else 1) + self.overhead.cpu_millis

    @property
    def memory_bytes(self) -> int:
        return self.workload.resources.memory_bytes + self.overhead.memory_bytes

    def to_dict(self) -> dict[str, Any]:
        w = self.workload
        return {
            "workload": w.name, "runtime": str(self.runtime),  # plain: safe_dump refuses enums
            "tenant": w.tenant, "replicas": w.replicas,
            "reasons": [{"rule": r.rule, "message": r.message} for r in self.reasons],
            "warnings": list(self.warnings), "emulated": self.emulated,
            "host": {"os": self.host_os, "arch": self.host_arch, "virtualization": self.needs_virtualization,
                     "pools": list(self.pools)},
            "resources": {"cpu": w.resources.cpu, "memory": w.resources.memory},
            "overhead": {"cpuMillis": self.overhead.cpu_millis, "memoryBytes": self.overhead.memory_bytes},
            "perReplica": {"cpuMillis": self.cpu_millis, "memoryBytes": self.memory_bytes},
            "vmOverheadAvoided": None if self.vm_overhead_avoided is None else {
                "cpuMillis": self.vm_overhead_avoided.cpu_millis,
                "memoryBytes": self.vm_overhead_avoided.memory_bytes},
        }


@dataclass(frozen=True)
class Fired:
    """A rule that applied: which runtimes it allows, which it prefers, and why."""

    rule: str
    allowed: frozenset[Runtime]
    prefer: Runtime | None
    message: str
    warning: str = ""
    hard: bool = True


@dataclass(frozen=True)
class HostFacts:
    """The host pools, indexed by platform once: a plan asks for every workload, and a scan of thousands of
    pools per workload made planning quadratic."""

    pools: tuple[HostPool, ...]

    @cached_property
    def oses(self) -> set[str]:
        return {p.os for p in self.pools}

    @cached_property
    def platforms(self) -> dict[tuple[str, str], tuple[HostPool, ...]]:
        """(os, arch) -> its pools, in spec order."""
        found: dict[tuple[str, str], list[HostPool]] = {}
        for p in self.pools:
            found.setdefault((p.os, p.arch), []).append(p)
        return {k: tuple(v) for k, v in found.items()}

    @cached_property
    def names(self) -> dict[tuple[str, str, bool], tuple[str, ...]]:
        """(os, arch, KVM only) -> pool names: one shared tuple per platform, not one per workload."""
        out = {}
        for (os, arch), pools in self.platforms.items():
            out[os, arch, False] = tuple(p.name for p in pools)
            out[os, arch, True] = tuple(p.name for p in pools if p.virtualization)
        return out

    def arches(self, os: str = "linux") -> set[str]:
        return {a for o, a in self.platforms if o == os}

    def virtualization(self, os: str, arch: str) -> bool:
        return bool(self.names.get((os, arch, True)))


Rule = Callable[[Workload, Profile, HostFacts], "Fired | None"]


def rule_inner_containers(w: Workload, profile: Profile, hosts: HostFacts) -> Fired | None:
    if not w.containers:
        return None
    return Fired("inner-containers", frozenset({Runtime.NESTED}), Runtime.NESTED,
                 f"lists {len(w.containers)} container(s) to run inside its own VM")


def rule_foreign_os(w: Workload, profile: Profile, hosts: HostFacts) -> Fired | None:
    if w.os in hosts.oses:
        return None
    host_os = "/".join(sorted(hosts.oses))
    return Fired("foreign-os", VM_ONLY, Runtime.VM,
                 f"{w.os} workload but the hosts run {host_os}: containers share the host kernel, so it needs a VM")


def rule_kernel(w: Workload, profile: Profile, hosts: HostFacts) -> Fired | None:
    needs = [r for r in w.requires if r in ("custom-kernel", "kernel-modules")]
    if not needs:
        return None
    return Fired("own-kernel", VM_RUNTIMES, Runtime.VM,
                 f"requires {' and '.join(needs)}: containers share the host's kernel, a VM brings its own")


def rule_foreign_arch(w: Workload, profile: Profile, hosts: HostFacts) -> Fired | None:
    host_os = w.os if w.os in hosts.oses else "linux"
    if w.arch in hosts.arches(host_os):
        return None
    return Fired("foreign-arch", VM_RUNTIMES, Runtime.VM,
                 f"{w.arch} workload but no {w.arch} hosts: runs in an emulated {w.arch} VM (QEMU TCG, "
                 f"~{profile.emulation_cpu_factor}x the CPU)")


def rule_untrusted(w: Workload, profile: Profile, hosts: HostFacts) -> Fired | None:
    if w.trust != "untrusted":
        return None
    return Fired("untrusted-isolation", ISOLATED, profile.untrusted_runtime,
                 f"untrusted code never runs as a plain container; policy {profile.name} isolates it as "
                 f"{profile.untrusted_runtime}")


def rule_internal(w: Workload, profile: Profile, hosts: HostFacts) -> Fired | None:
    if w.trust != "internal" or profile.internal_runtime is Runtime.CONTAINER:
        return None
    return Fired("internal-isolation", ALL, profile.internal_runtime,
                 f"policy {profile.name} keeps code of trust 'internal' off the shared kernel "
                 f"({profile.internal_runtime})", hard=False)


def rule_escape_surface(w: Workload, profile: Profile, hosts: HostFacts) -> Fired | None:
    needs = [r for r in w.requires if r in ("privileged", "host-devices")]
    if not needs:
        return None
    what = " and ".join(needs)
    if w.trust == "trusted" and profile.trusted_privileged_container:
        return Fired("shared-kernel-escape", ALL, Runtime.CONTAINER,
                     f"requires {what}; trusted code under policy {profile.name} may run on the shared kernel",
                     warning=f"{w.name}: {what} on a shared kernel: a compromise of this container is a compromise "
                             "of the host", hard=False)
    allowed = VM_RUNTIMES if "host-devices" in needs else ISOLATED
    return Fired("shared-kernel-escape", allowed, Runtime.VM,
                 f"requires {what}: on a shared kernel that is an escape route to the host, so it gets a VM")


RULES: tuple[Rule, ...] = (rule_inner_containers, rule_foreign_os, rule_kernel, rule_foreign_arch, rule_untrusted,
                           rule_escape_surface, rule_internal)


def place_workload(w: Workload, profile: Profile, pools: Iterable[HostPool] | HostFacts) -> Placement:
    """Decide the runtime of one workload. Raises PolicyError when an explicit runtime breaks a hard rule."""
    hosts = pools if isinstance(pools, HostFacts) else HostFacts(tuple(pools))
    fired = [f for f in (rule(w, profile, hosts) for rule in RULES) if f is not None]
    allowed = set(ALL) if w.containers else set(ALL - {Runtime.NESTED})
    for f in fired:
        if f.hard:
            allowed &= f.allowed
    reasons: list[Reason] = []
    runtime: Runtime
    if w.runtime is not None:
        breaking = next((f for f in fired if f.hard and w.runtime not in f.allowed), None)
        if breaking is not None or w.runtime not in allowed:
            rule = breaking.rule if breaking else "inner-containers"
            why = breaking.message if breaking else "runtime nested needs inner containers"
            raise PolicyError(f"runtime {w.runtime} contradicts rule {rule}: {why}")
        runtime = Runtime(w.runtime)
        reasons.append(Reason("explicit-runtime", f"the spec asks for {runtime}"))
    else:
        preferred = [f.prefer for f in fired if f.prefer in allowed]
        runtime = Runtime(max(preferred, key=lambda r: STRENGTH[r]) if preferred
                          else min(allowed, key=STRENGTH.__getitem__))
    reasons.extend(Reason(f.rule, f.message) for f in fired)
    vm_cost = profile.overhead(Runtime.VM)
    avoided = None
    if runtime is Runtime.CONTAINER:
        avoided = vm_cost
        if not fired:
            reasons.append(Reason("density-default",
                                  f"no rule needs isolation: a container shares the kernel and starts in about a "
                                  f"second; a VM would cost {vm_cost} per replica"))
    emulated = any(f.rule == "foreign-arch" for f in fired)
    host_os = w.os if w.os in hosts.oses else "linux"
    if emulated:
        native = hosts.arches(host_os)
        host_arch = "amd64" if "amd64" in native else sorted(native)[0] if native else "amd64"
    else:
        host_arch = w.arch
    # a VM (and a Kata sandbox, a VM per pod) wants KVM; gVisor's user-space kernel needs none
    sandbox_vm = runtime is Runtime.SANDBOXED and profile.sandbox_runtime_class is SandboxClass.KATA
    wants_kvm = (runtime in VM_RUNTIMES or sandbox_vm) and not emulated
    candidates = hosts.names.get((host_os, host_arch, False), ())
    kvm_pools = hosts.names.get((host_os, host_arch, True), ())
    warnings = [f.warning for f in fired if f.warning]
    if wants_kvm and not kvm_pools:
        if runtime is Runtime.SANDBOXED:
            raise PolicyError(f"workload {w.name} needs a sandboxed runtime, but no {host_os}/{host_arch} host pool "
                              "has hardware virtualisation for Kata (set virtualization: true on a pool, use "
                              "runtime vm, or a policy with sandboxRuntimeClass: gvisor)")
        warnings.append(f"{w.name}: no {host_os}/{host_arch} host has hardware virtualisation; "
                        "the VM runs under software emulation (TCG), several times slower")
    chosen = kvm_pools if wants_kvm and kvm_pools else candidates
    if not chosen:
        raise PolicyError(f"workload {w.name}: no host pool runs {host_os}/{host_arch}")
    return Placement(
        workload=w, runtime=runtime, reasons=tuple(reasons), warnings=tuple(warnings), emulated=emulated,
        host_os=host_os, host_arch=host_arch, needs_virtualization=wants_kvm and bool(kvm_pools),
        overhead=profile.overhead(runtime), vm_overhead_avoided=avoided, pools=chosen,
        emulation_factor=profile.emulation_cpu_factor)


def make_profile(base: str, overrides: dict[str, Any]) -> Profile:
    """A built-in profile with fields replaced (from a user policy file already checked by the loader)."""
    if base not in PROFILES:
        raise PolicyError(f"unknown policy {base!r}: use one of {', '.join(PROFILES)} or a policy file path")
    return replace(PROFILES[base], **overrides)
