"""Placement policy, table-driven: workload x profile x hosts -> runtime and the rules that decided."""
from __future__ import annotations

import pytest
import yaml

from hybridorch.errors import PolicyError
from hybridorch.core.policy import PROFILES, make_profile, place_workload
from hybridorch.core.policyfile import load_policy
from hybridorch.core.runtime import LocalSandbox, Runtime, SandboxClass
from hybridorch.core.spec import HostPool, InnerContainer, Workload

LINUX = (HostPool("linux"),)
MIXED = (HostPool("linux"), HostPool("arm", arch="arm64"), HostPool("win", os="windows"))
NO_KVM = (HostPool("linux", virtualization=False),)


def W(**kw) -> Workload:
    kw.setdefault("image", "local/x:1")
    return Workload(name=kw.pop("name", "w"), **kw)


CASES = [
    # id, workload, profile, hosts, runtime, rules
    ("plain", W(), "balanced", LINUX, "container", ["density-default"]),
    ("trusted-secure", W(trust="trusted"), "secure", LINUX, "container", ["density-default"]),
    ("internal-secure", W(trust="internal"), "secure", LINUX, "sandboxed", ["internal-isolation"]),
    ("untrusted-balanced", W(trust="untrusted"), "balanced", LINUX, "sandboxed", ["untrusted-isolation"]),
    ("untrusted-efficient", W(trust="untrusted"), "efficient", LINUX, "sandboxed", ["untrusted-isolation"]),
    ("untrusted-secure", W(trust="untrusted"), "secure", LINUX, "vm", ["untrusted-isolation"]),
    ("windows-on-linux", W(os="windows"), "balanced", LINUX, "vm", ["foreign-os"]),
    ("windows-on-windows-pool", W(os="windows"), "balanced", MIXED, "container", ["density-default"]),
    ("custom-kernel", W(requires=("custom-kernel",)), "efficient", LINUX, "vm", ["own-kernel"]),
    ("kernel-modules", W(requires=("kernel-modules",)), "balanced", LINUX, "vm", ["own-kernel"]),
    ("arm64-no-arm-hosts", W(arch="arm64"), "balanced", LINUX, "vm", ["foreign-arch"]),
    ("arm64-with-arm-hosts", W(arch="arm64"), "balanced", MIXED, "container", ["density-default"]),
    ("privileged-balanced", W(requires=("privileged",), trust="trusted"), "balanced", LINUX, "vm",
     ["shared-kernel-escape"]),
    ("privileged-trusted-efficient", W(requires=("privileged",), trust="trusted"), "efficient", LINUX, "container",
     ["shared-kernel-escape"]),
    ("privileged-internal-efficient", W(requires=("privileged",)), "efficient", LINUX, "vm",
     ["shared-kernel-escape"]),
    ("host-devices-secure", W(requires=("host-devices",), trust="trusted"), "secure", LINUX, "vm",
     ["shared-kernel-escape"]),
    ("untrusted-privileged", W(requires=("privileged",), trust="untrusted"), "balanced", LINUX, "vm",
     ["untrusted-isolation", "shared-kernel-escape"]),
    ("nested", W(image=None, containers=(InnerContainer("a", "b"),)), "balanced", LINUX, "nested",
     ["inner-containers"]),
    ("nested-arm64", W(image=None, arch="arm64", containers=(InnerContainer("a", "b"),)), "balanced", LINUX,
     "nested", ["inner-containers", "foreign-arch"]),
    ("explicit-vm", W(runtime="vm"), "balanced", LINUX, "vm", ["explicit-runtime"]),
    ("explicit-sandboxed-untrusted", W(runtime="sandboxed", trust="untrusted"), "secure", LINUX, "sandboxed",
     ["explicit-runtime", "untrusted-isolation"]),
    ("explicit-container-overrides-soft-rule", W(runtime="container"), "secure", LINUX, "container",
     ["explicit-runtime", "internal-isolation"]),
    ("vm-without-kvm", W(os="windows"), "balanced", NO_KVM, "vm", ["foreign-os"]),
]


@pytest.mark.parametrize("workload,profile,hosts,runtime,rules", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_placement(workload, profile, hosts, runtime, rules):
    placement = place_workload(workload, PROFILES[profile], hosts)
    assert placement.runtime == runtime
    assert [r.rule for r in placement.reasons] == rules
    assert all(r.message for r in placement.reasons)


@pytest.mark.parametrize("workload,rule", [
    (W(runtime="container", os="windows"), "foreign-os"),
    (W(runtime="container", trust="untrusted"), "untrusted-isolation"),
    (W(runtime="sandboxed", requires=("kernel-modules",)), "own-kernel"),
    (W(runtime="container", arch="arm64"), "foreign-arch"),
    (W(runtime="sandboxed", requires=("host-devices",)), "shared-kernel-escape"),
    (W(runtime="nested"), "inner-containers"),
])
def test_explicit_runtime_contradicting_a_hard_rule_names_it(workload, rule):
    with pytest.raises(PolicyError, match=f"contradicts rule {rule}"):
        place_workload(workload, PROFILES["balanced"], LINUX)


def test_container_reports_the_vm_overhead_it_avoided():
    p = place_workload(W(), PROFILES["balanced"], LINUX)
    assert p.vm_overhead_avoided == PROFILES["balanced"].vm_overhead
    assert "a VM would cost +200m CPU, +256Mi" in p.reasons[0].message


def test_emulated_vm_runs_on_native_hosts_and_costs_more_cpu():
    p = place_workload(W(arch="arm64", resources=__import__("hybridorch.core.spec").core.spec.Resources("1", "1Gi")),
                       PROFILES["balanced"], LINUX)
    assert (p.emulated, p.host_arch, p.needs_virtualization) == (True, "amd64", False)
    assert p.cpu_millis == 1000 * 4 + 200


def test_privileged_trusted_efficient_warns():
    p = place_workload(W(requires=("privileged",), trust="trusted"), PROFILES["efficient"], LINUX)
    assert p.warnings and "compromise of the host" in p.warnings[0]


def test_vm_without_kvm_warns_and_sandboxed_without_kvm_fails():
    p = place_workload(W(os="windows"), PROFILES["balanced"], NO_KVM)
    assert any("software emulation" in w for w in p.warnings)
    with pytest.raises(PolicyError, match="hardware virtualisation"):
        place_workload(W(trust="untrusted"), PROFILES["balanced"], NO_KVM)


def test_vm_prefers_kvm_pools():
    hosts = (HostPool("plain", virtualization=False), HostPool("kvm"))
    assert place_workload(W(runtime="vm"), PROFILES["balanced"], hosts).pools == ("kvm",)
    assert place_workload(W(), PROFILES["balanced"], hosts).pools == ("plain", "kvm")


def test_profiles_are_data_and_overridable():
    custom = make_profile("balanced", {"name": "strict", "untrusted_runtime": "vm"})
    assert place_workload(W(trust="untrusted"), custom, LINUX).runtime == "vm"
    with pytest.raises(PolicyError, match="unknown policy"):
        make_profile("paranoid", {})


def test_placements_and_profiles_carry_enums(tmp_path):
    # typed end to end: the runtime is a Runtime member (compared with `is`), whatever way the spec asked for it
    assert all(type(place_workload(w, PROFILES["secure"], LINUX).runtime) is Runtime
               for w in (W(), W(runtime=Runtime.VM), W(trust="untrusted"), W(os="windows")))
    policy = tmp_path / "p.yaml"
    policy.write_text("apiVersion: hybridorch.dev/v1alpha1\nkind: Policy\nmetadata: {name: p}\n"
                      "spec: {untrustedRuntime: vm, internalRuntime: sandboxed, localSandbox: runtime,"
                      " sandboxRuntimeClass: gvisor}\n")
    p = load_policy(str(policy))
    assert (p.untrusted_runtime, p.internal_runtime, p.local_sandbox, p.sandbox_runtime_class) == \
        (Runtime.VM, Runtime.SANDBOXED, LocalSandbox.RUNTIME, SandboxClass.GVISOR)
    assert p.local_sandbox is LocalSandbox.RUNTIME and p.sandbox_runtime_class is SandboxClass.GVISOR
    assert PROFILES["balanced"].local_sandbox is LocalSandbox.AUTO
    # what `plan -o yaml` writes: plain strings (safe_dump cannot represent an enum)
    placed = place_workload(W(trust="untrusted"), p, LINUX)
    assert yaml.safe_load(yaml.safe_dump(placed.to_dict()))["runtime"] == "vm"


def test_placement_is_deterministic():
    w = W(trust="untrusted", requires=("privileged",))
    assert place_workload(w, PROFILES["secure"], MIXED) == place_workload(w, PROFILES["secure"], MIXED)
