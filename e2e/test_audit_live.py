"""End-to-end: `hybridorch audit --live --target local` against what really runs here (Docker and QEMU).

A small stack goes up for real; the live audit must see what is actually set (an SSH port published on every
address, a VM above the policy's CPU ceiling; a sandboxed workload under gVisor/Kata or in its own VM, never runc) and flag what outlived its TTL; after `down` nothing of it is reported any more.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from e2e.conftest import free_ports, hybridorch, require
from hybridorch.vm.guestimage import guest_dir

pytestmark = pytest.mark.e2e

STACK = "e2e-audit-live"
# a per-VM CPU ceiling of 1, so a 2-vCPU VM trips the ceiling rule on both targets
TIGHT_POLICY = """\
apiVersion: hybridorch.dev/v1alpha1
kind: Policy
metadata: {name: e2e-tight}
spec: {base: balanced, maxVmCpus: 1}
"""


def audit_json(*args: str) -> list[dict]:
    result = hybridorch("audit", *args, "--format", "json", "--fail-on", "never")
    return json.loads(result.stdout)["findings"]


def test_live_audit_of_the_local_runtime(docker_client, state_dir: Path, stack_file, tmp_path: Path) -> None:
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 missing (e2e/packages.txt)")
    require((guest_dir("amd64") / "guest.json").exists(), "no amd64 guest cached: run e2e/setup.d/20-guests.sh")
    sandbox_runtimes = set((docker_client.info().get("Runtimes") or {})) & {"kata", "kata-runtime", "runsc"}
    ssh, plugin, vm = free_ports(3)
    (tmp_path / "policy.yaml").write_text(TIGHT_POLICY)
    path = stack_file(f"""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Stack
        metadata: {{name: {STACK}, owner: e2e, ttl: 2s}}
        spec:
          policy: policy.yaml
          workloads:
            - name: jump
              image: hybridorch.local/httpd:1
              command: ["httpd", "-f", "-p", "22", "-h", "/www"]
              trust: trusted
              ports: [{{port: 22, hostPort: {ssh}, public: true}}]
              ttl: 1h
            - name: plugin
              image: hybridorch.local/httpd:1
              command: ["httpd", "-f", "-p", "8082", "-h", "/www"]
              trust: untrusted
              ports: [{{port: 8082, hostPort: {plugin}}}]
            - name: worker-vm
              runtime: vm
              resources: {{cpu: "2", memory: 160Mi}}
              ports: [{{port: 80, hostPort: {vm}}}]
        """, "stack.yaml")
    static = audit_json(path)
    assert not [f for f in static if f["rule"] == "HYB014"], "a TTL cannot pass before anything runs"
    try:
        hybridorch("up", path, timeout=600)
        time.sleep(3)   # past the stack's 2s TTL; jump keeps its own 1h
        findings = audit_json(path, "--live", "--target", "local")
        assert all(f["live"] == f["object"].startswith(("container ", "vm ")) for f in findings), findings
        # what runs, read back from Docker: SSH published on 0.0.0.0, the untrusted plugin not really sandboxed
        assert any(f["rule"] == "HYB009" and f["object"].startswith("container ") and "jump" in f["object"]
                   and f"0.0.0.0:{ssh}" in f["message"] for f in findings), findings
        # the untrusted plugin runs under Docker's gVisor/Kata runtime or, without one, in its own VM: never runc
        assert not any(f["rule"] == "HYB012" for f in findings), findings
        assert any(o.startswith("vm " if not sandbox_runtimes else "container ") and "plugin" in o
                   for o in {f["object"] for f in findings if f["live"]}), findings
        # TTL: the plugin container and the VM (2s) are past it, jump (1h) is not
        expired = {f["object"] for f in findings if f["rule"] == "HYB014"}
        assert any("plugin" in o for o in expired) and any("worker-vm" in o for o in expired), findings
        assert not any("jump" in o for o in expired), findings
        # the VM runs with 2 vCPUs against a ceiling of 1: from its live state as well as from the plan
        vm_cpus = {f["object"] for f in findings if f["rule"] == "HYB002"}
        assert vm_cpus == {"workload worker-vm", f"vm {STACK}/worker-vm"}, findings
        # every finding points at the stack file
        assert {f["file"] for f in findings} == {path}
        gate = hybridorch("audit", path, "--live", "--target", "local", check=False)
        assert gate.returncode == 1 and "at or above severity high" in gate.stderr
        sarif = json.loads(hybridorch("audit", path, "--live", "--format", "sarif", "--fail-on", "never").stdout)
        assert {r["ruleId"] for r in sarif["runs"][0]["results"]} >= {"HYB002", "HYB009", "HYB014"}
    finally:
        hybridorch("down", path, timeout=300)
    after = audit_json(path, "--live", "--target", "local")
    assert not [f for f in after if f["rule"] == "HYB014"], after


def test_ps_lists_and_gc_removes_only_what_is_past_its_ttl(docker_client, state_dir: Path, stack_file) -> None:
    stack = "e2e-audit-gc"
    p1, p2 = free_ports(2)
    path = stack_file(f"""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Stack
        metadata: {{name: {stack}, owner: e2e-gc}}
        spec:
          workloads:
            - name: scratch
              image: hybridorch.local/httpd:1
              trust: trusted
              ttl: 2s
              ports: [{{port: 8080, hostPort: {p1}}}]
              volumes: [{{name: data, mountPath: /data}}]
            - name: keeper
              image: hybridorch.local/httpd:1
              trust: trusted
              ttl: 1h
              ports: [{{port: 8080, hostPort: {p2}}}]
            - name: testvm
              runtime: vm
              ttl: 2s
              resources: {{cpu: "1", memory: 256Mi}}
        """, "gc.yaml")
    try:
        hybridorch("up", path)
        rows = [r for r in json.loads(hybridorch("ps", "-o", "json").stdout) if r["stack"] == stack]
        assert {(r["workload"], r["kind"], r["owner"], r["ttl"]) for r in rows} == {
            ("scratch", "container", "e2e-gc", "2s"), ("keeper", "container", "e2e-gc", "1h"),
            ("testvm", "vm", "e2e-gc", "2s")}, rows
        assert f"hyb-{stack}-testvm-0" in subprocess.run(["virsh", "list", "--name"], capture_output=True,
                                                          text=True).stdout
        table = hybridorch("ps").stdout
        assert table.splitlines()[0].split() == ["TARGET", "STACK", "WORKLOAD", "KIND", "NAME", "RUNTIME", "AGE",
                                                 "OWNER", "TTL"]
        time.sleep(3)
        dry = hybridorch("gc", "--dry-run").stdout
        assert f"would remove container {stack}-scratch-0" in dry and "keeper" not in dry, dry
        assert docker_client.containers.get(f"{stack}-scratch-0").status == "running"
        assert f"would remove vm testvm (stack {stack}, ttl 2s)" in dry, dry
        sweep = hybridorch("gc")
        swept = sweep.stdout
        assert f"removed container {stack}-scratch-0" in swept and "keeper" not in swept, swept
        assert f"] container {stack}-scratch-0: removed" in sweep.stderr, sweep.stderr   # the progress line
        # the expired VM went the way `down` takes it: domain destroyed and undefined
        assert f"removed vm {stack}/testvm" in swept, swept
        assert f"hyb-{stack}-testvm-0" not in subprocess.run(["virsh", "list", "--all", "--name"],
                                                              capture_output=True, text=True).stdout
        names = {c.name for c in docker_client.containers.list(all=True, filters={
            "label": f"hybridorch.dev/stack={stack}"})}
        assert names == {f"{stack}-keeper-0"}
        # data is kept as `down` keeps it: the volume of the removed container is still there
        volumes = [v.name for v in docker_client.volumes.list(filters={"label": f"hybridorch.dev/stack={stack}"})]
        assert any("scratch" in v for v in volumes), volumes
    finally:
        hybridorch("down", path, "--delete-data", check=False)


# --- the cluster: kubectl get of the stack's labelled objects, same rules ---------------------------------

from e2e.test_kubernetes import kubectl  # noqa: E402
from e2e.test_kubernetes import cluster as cluster  # noqa: E402,F811  (the fixture: the session's real API server)

K8S_STACK = "e2e-audit-k8s"


def test_live_audit_of_a_cluster_sees_drift_and_expired_objects(cluster: dict[str, str], stack_file,
                                                                tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(TIGHT_POLICY)
    path = stack_file(f"""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Stack
        metadata: {{name: {K8S_STACK}, owner: e2e, ttl: 2s}}
        spec:
          policy: policy.yaml
          workloads:
            - {{name: web, image: hybridorch.local/httpd:1, ports: [8080], trust: trusted}}
            - name: builder
              runtime: vm
              image: quay.io/containerdisks/debian:12
              resources: {{cpu: "2", memory: 1Gi}}
        """, "k8s.yaml")

    def findings(*extra: str) -> list[dict]:
        result = hybridorch("audit", path, *extra, "--format", "json", "--fail-on", "never", env=cluster)
        return json.loads(result.stdout)["findings"]
    static = findings()
    assert not [f for f in static if f["rule"] in ("HYB006", "HYB014")], static
    try:
        hybridorch("apply", path, "--no-wait", env=cluster)
        # drift: someone gives the pods the host's network after apply; only the live audit can know
        kubectl(cluster, "patch", "deployment", "web", "-n", K8S_STACK, "--type", "merge", "-p",
                '{"spec": {"template": {"spec": {"hostNetwork": true}}}}')
        time.sleep(3)   # past the 2s TTL
        live = [f for f in findings("--live", "--target", "kubernetes") if f["live"]]
        rules = {(f["rule"], f["object"]) for f in live}
        assert ("HYB006", f"Deployment {K8S_STACK}/web") in rules, live
        assert ("HYB002", f"VirtualMachine {K8S_STACK}/builder") in rules, live
        # one TTL finding per workload (its Deployment or Service) and one for the tenant's own objects
        expired = sorted(o for r, o in rules if r == "HYB014")
        assert len(expired) == 3, expired
        assert any(o.endswith("/web") for o in expired) and f"VirtualMachine {K8S_STACK}/builder" in expired
        assert any(o.startswith(("Namespace", "NetworkPolicy", "LimitRange", "ResourceQuota")) for o in expired)
        # the tenant's default-deny NetworkPolicy is there: no HYB011
        assert not [f for f in live if f["rule"] == "HYB011"], live
        assert {f["file"] for f in live} == {path}
        # ps sees the cluster's workloads with owner and ttl; gc removes the expired ones and their Services
        rows = json.loads(hybridorch("ps", "--target", "kubernetes", "-o", "json", env=cluster).stdout)
        mine = {(r["kind"], r["name"]): r for r in rows if r["stack"] == K8S_STACK}
        assert set(mine) == {("Deployment", "web"), ("VirtualMachine", "builder")}, rows
        assert all(r["owner"] == "e2e" and r["ttl"] == "2s" and r["expired"] for r in mine.values())
        dry = hybridorch("gc", "--target", "kubernetes", "--dry-run", env=cluster).stdout
        assert f"would remove Deployment {K8S_STACK}/web" in dry and "removed" not in dry
        assert kubectl(cluster, "get", "deployment", "web", "-n", K8S_STACK, check=False).returncode == 0
        swept = hybridorch("gc", "--target", "kubernetes", env=cluster).stdout
        assert f"removed Deployment {K8S_STACK}/web" in swept and f"removed Service {K8S_STACK}/web" in swept, swept
        deadline = time.monotonic() + 60
        while kubectl(cluster, "get", "deployment", "web", "-n", K8S_STACK, check=False).returncode == 0:
            assert time.monotonic() < deadline, "gc did not delete the Deployment"
            time.sleep(0.5)
        # the tenant's namespace and policies were not the workload's: they stay until `delete`
        assert kubectl(cluster, "get", "networkpolicy", "default-deny", "-n", K8S_STACK).returncode == 0
    finally:
        hybridorch("delete", path, env=cluster, check=False)
