"""Policy field sandboxRuntimeClass: which RuntimeClass (and CRI handler) sandboxed pods name on a cluster.

kata (the default): RuntimeClass hybridorch-kata, handler kata, only on nodes with KVM (a VM per pod).
gvisor: RuntimeClass hybridorch-gvisor, handler runsc, any node (a user-space kernel, no KVM). The runsc
handler itself really runs pods in e2e/test_gvisor.py.
"""
from __future__ import annotations

from typing import Any, Callable

import pytest
from click.testing import CliRunner

from hybridorch.api import load_policy, plan_stack
from hybridorch.cli import cli
from hybridorch.errors import SpecError
from hybridorch.core.policy import PROFILES
from hybridorch.render.stack import RUNTIME_CLASSES, render_plan
from tests.conftest import ROOT

SHOP = str(ROOT / "examples" / "shop.yaml")
VIRT = "hybridorch.dev/virtualization"


def policy_file(write_stack: Callable[..., str], sandbox_class: str, base: str = "balanced") -> str:
    return write_stack(f"""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Policy
        metadata: {{name: sandbox-{sandbox_class}}}
        spec:
          base: {base}
          sandboxRuntimeClass: {sandbox_class}
        """, f"policy-{sandbox_class}.yaml")


def rendered(stack: str, policy: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The recommender-plugin Deployment's pod spec (untrusted: sandboxed) and the RuntimeClass."""
    docs = render_plan(plan_stack(stack, policy=policy), target="kubernetes").documents
    pod = next(d for d in docs if d["kind"] == "Deployment"
               and d["metadata"]["name"] == "recommender-plugin")["spec"]["template"]["spec"]
    classes = [d for d in docs if d["kind"] == "RuntimeClass"]
    assert len(classes) == 1
    return pod, classes[0]


def test_built_in_profiles_keep_kata():
    assert {p.sandbox_runtime_class for p in PROFILES.values()} == {"kata"}
    pod, rc = rendered(SHOP)
    assert (pod["runtimeClassName"], rc["metadata"]["name"], rc["handler"]) == ("hybridorch-kata",) * 2 + ("kata",)
    assert rc["scheduling"] == {"nodeSelector": {VIRT: "true"}}
    assert pod["nodeSelector"][VIRT] == "true"


def test_gvisor_names_the_runsc_handler_and_needs_no_kvm_nodes(write_stack: Callable[..., str]):
    policy = policy_file(write_stack, "gvisor")
    assert load_policy(policy).sandbox_runtime_class == "gvisor"
    pod, rc = rendered(SHOP, policy)
    assert pod["runtimeClassName"] == rc["metadata"]["name"] == "hybridorch-gvisor"
    assert rc["handler"] == "runsc" == RUNTIME_CLASSES["gvisor"][1]
    assert "scheduling" not in rc and VIRT not in pod["nodeSelector"]
    assert rc["overhead"]["podFixed"] == {"cpu": "250m", "memory": "160Mi"}   # the profile's sandbox overhead


HOSTS_NO_KVM = """
    apiVersion: hybridorch.dev/v1alpha1
    kind: Stack
    metadata: {name: nokvm}
    spec:
      hosts: [{name: plain, os: linux, arch: amd64, virtualization: false, cpu: "8", memory: 16Gi, count: 2}]
      workloads:
        - {name: plugin, image: hybridorch.local/httpd:1, trust: untrusted, ports: [8080]}
    """


def test_kata_needs_a_kvm_pool_gvisor_does_not(write_stack: Callable[..., str]):
    stack = write_stack(HOSTS_NO_KVM, "nokvm.yaml")
    with pytest.raises(SpecError, match=r"nokvm.yaml:7: spec.workloads\[0\]: workload plugin needs a sandboxed "
                                        "runtime, but no linux/amd64 host pool has hardware virtualisation for Kata.*"
                                        "sandboxRuntimeClass: gvisor"):
        plan_stack(stack)
    plan = plan_stack(stack, policy=policy_file(write_stack, "gvisor"))
    (p,) = plan.placements
    assert (p.runtime, p.needs_virtualization, p.pools) == ("sandboxed", False, ("plain",))


def test_a_vm_still_wants_kvm_under_gvisor(write_stack: Callable[..., str]):
    # the gvisor class changes where sandboxed pods go, not VMs (the secure profile puts untrusted code in one)
    plan = plan_stack(SHOP, policy=policy_file(write_stack, "gvisor", base="secure"))
    by_name = {p.name: p for p in plan.placements}
    assert by_name["recommender-plugin"].runtime == "vm" and by_name["recommender-plugin"].needs_virtualization
    assert by_name["payments"].runtime == "sandboxed" and not by_name["payments"].needs_virtualization


def test_unknown_sandbox_class_is_a_located_error(write_stack: Callable[..., str]):
    policy = policy_file(write_stack, "firecracker")
    result = CliRunner().invoke(cli, ["plan", SHOP, "--policy", policy], catch_exceptions=False)
    assert result.exit_code == 2
    assert f"{policy}:6: spec.sandboxRuntimeClass: must be one of: kata, gvisor" in result.output
    assert "Traceback" not in result.output


def test_status_names_what_the_docker_sandbox_runtime_is():
    from hybridorch.backends.docker import sandbox_text

    assert sandbox_text("runsc") == "sandboxed with the runsc runtime (gVisor)"
    assert sandbox_text("kata-runtime") == "sandboxed with the kata-runtime runtime (Kata Containers)"
