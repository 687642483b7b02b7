"""End-to-end: a local `sandboxed` workload runs under Docker's gVisor/Kata runtime, or in its own small VM
through the libvirt engine (one guest kernel per sandbox); never as a plain container on the host's kernel."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, free_ports, hybridorch, require
from hybridorch import proc
from hybridorch.render.domain import sandbox_runtime_of
from hybridorch.vm.guestimage import guest_dir

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _vm_engine_ready() -> None:
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 missing (e2e/packages.txt)")
    require(shutil.which("virsh") is not None, "virsh missing: run e2e/setup.sh (libvirt)")
    require((guest_dir("amd64") / "guest.json").exists(), "no amd64 guest cached: run e2e/setup.d/20-guests.sh")


def docker_sandbox_runtime() -> str | None:
    out = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True,
                         check=True, timeout=30)
    return sandbox_runtime_of(json.loads(out.stdout) or {})


def get(port: int, path: str = "/") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return resp.read().decode()


def exists(port: int, path: str) -> bool:
    try:
        get(port, path)
        return True
    except urllib.error.HTTPError:
        return False


def host_processes(needle: str) -> list[int]:
    """Pids of the host's processes whose command line contains `needle`."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def shop_plugin_stack(tmp_path: Path, name: str, local_sandbox: str | None, plugin_port: int, web_port: int,
                      plugin_command: list[str] | None = None) -> str:
    """The shop example's web and recommender-plugin (untrusted: sandboxed under `balanced`) on free host ports,
    with a policy file choosing localSandbox when given."""
    shop = yaml.safe_load((ROOT / "examples" / "shop.yaml").read_text())
    workloads = {w["name"]: w for w in shop["spec"]["workloads"]}
    web, plugin = workloads["web"], workloads["recommender-plugin"]
    web.update(replicas=1, ports=[{"port": 8080, "hostPort": web_port}])
    plugin["ports"] = [{"port": 8082, "hostPort": plugin_port}]
    plugin["env"] = {"PAGE_TITLE": "plugin in a sandbox"}
    if plugin_command:
        plugin["command"] = plugin_command
    stack = {"apiVersion": shop["apiVersion"], "kind": "Stack",
             "metadata": {"name": name, "owner": "team-shop", "ttl": "1h"},
             "spec": {"policy": "balanced", "workloads": [web, plugin]}}
    if local_sandbox:
        (tmp_path / "policy.yaml").write_text(yaml.safe_dump(
            {"apiVersion": shop["apiVersion"], "kind": "Policy", "metadata": {"name": "sandbox-choice"},
             "spec": {"base": "balanced", "localSandbox": local_sandbox}}))
        stack["spec"]["policy"] = "policy.yaml"
    return yaml.safe_dump(stack, sort_keys=False)


def write(tmp_path: Path, stack_file, text: str) -> str:
    path = stack_file(text, "stack.yaml")
    assert Path(path).parent == tmp_path   # beside the policy file it names
    return path


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {r["name"]: r for r in rows}


def test_sandboxed_plugin_in_its_own_vm(tmp_path: Path, state_dir: Path, stack_file, docker_client) -> None:
    """localSandbox: vm forces the VM path whatever Docker has: the plugin's own service answers on its host port
    from a guest kernel, status and virsh say so, it reaches nothing on the host, and `down` removes it all."""
    plugin_port, web_port = free_ports(2)
    marker = f"sandbox-probe-{plugin_port}"
    # the container writes its page (the spec's env in it) and the kernel it runs on, serves them with busybox httpd,
    # and records whether it can reach the web container's host port (the host's loopback is 10.0.2.2 on QEMU's
    # user network); the probe runs beside httpd so readiness does not wait for its timeout
    command = ["sh", "-c", f": {marker}; mkdir -p /tmp/www && uname -r > /tmp/www/kernel && "
               'echo "<title>$PAGE_TITLE</title> workload $HYBRIDORCH_WORKLOAD" > /tmp/www/index.html; '
               f"(wget -q -T 3 -O /dev/null http://10.0.2.2:{web_port}/ && echo reached || echo isolated) "
               "> /tmp/www/egress.tmp && mv /tmp/www/egress.tmp /tmp/www/egress & "
               "(touch /etc/hyb-probe 2>/dev/null && echo writable || echo read-only) > /tmp/www/root; "
               "exec /bin/busybox httpd -f -v -p 8082 -h /www"]
    stack = "e2e-sandbox-vm"
    path = write(tmp_path, stack_file, shop_plugin_stack(tmp_path, stack, "vm", plugin_port, web_port, command))
    assert json.loads(hybridorch("plan", path, "-o", "json").stdout)["placements"][1]["runtime"] == "sandboxed"
    try:
        up = hybridorch("up", path, timeout=400)
        assert "sandboxed in its own VM" in up.stdout
        page = get(plugin_port)
        # the image's wrapper wrote the page inside the guest, with the spec's env
        assert "<title>plugin in a sandbox</title>" in page and "workload recommender-plugin" in page
        # its own kernel: the guest's Debian kernel, not the host's
        guest_kernel = get(plugin_port, "/kernel").strip()
        assert guest_kernel != os.uname().release
        assert guest_kernel == json.loads((guest_dir("amd64") / "guest.json").read_text())["kernelVersion"]
        # the one hardening rule of every container: a read-only root (its /tmp is writable), as in Docker and pods
        assert get(plugin_port, "/root").strip() == "read-only"
        # QEMU's restrict=on: the sandbox cannot reach the host (nor the web container published there)
        assert get(web_port).startswith("<!doctype html>")
        assert proc.wait_until(lambda: exists(plugin_port, "/egress"), 30)
        assert get(plugin_port, "/egress").strip() == "isolated"
        # not a process of the host's kernel, and no container of it in Docker (web is one)
        assert host_processes(marker) == [] and host_processes("-p 8082") == []
        containers = docker_client.containers.list(all=True, filters={"label": f"hybridorch.dev/stack={stack}"})
        assert [c.labels["hybridorch.dev/workload"] for c in containers] == ["web"]

        status = by_name(json.loads(hybridorch("status", path, "-o", "json").stdout))
        plugin = status["recommender-plugin"]
        assert plugin["state"] == "ready" and plugin["runtime"] == "sandboxed"
        assert "sandboxed in its own VM (the policy's localSandbox: vm)" in plugin["detail"]
        assert plugin["ports"] == [f"127.0.0.1:{plugin_port}->8082/tcp"]
        assert status["web"]["state"] == "ready" and status["web"]["runtime"] == "container"
        domain = plugin["domain"]
        assert domain == f"hyb-{stack}-recommender-plugin-0"
        assert domain in subprocess.run(["virsh", "list", "--name"], capture_output=True, text=True,
                                        check=True).stdout.split()
        xml = subprocess.run(["virsh", "dumpxml", domain], capture_output=True, text=True, check=True).stdout
        for key, value in (("hybridorch.dev/stack", stack), ("hybridorch.dev/workload", "recommender-plugin"),
                           ("hybridorch.dev/runtime", "sandboxed"), ("hybridorch.dev/tenant", "shop"),
                           ("hybridorch.dev/owner", "team-shop"), ("hybridorch.dev/ttl", "1h")):
            assert f"key='{key}' value='{value}'" in xml or f'key="{key}" value="{value}"' in xml
        assert "restrict=on" in xml
        # the container's CPU limit (250m) plus the sandbox overhead (250m) is the vCPU's CFS quota (libvirt's cgroup)
        sched = subprocess.run(["virsh", "schedinfo", domain], capture_output=True, text=True, check=True).stdout
        assert "vcpu_quota     : 50000" in sched and "vcpu_period    : 100000" in sched, sched
        # what `render --target local` shows here is what was defined
        rendered = hybridorch("render", path, "--target", "local", "--out", "-").stdout
        assert f"<name>{domain}</name>" in rendered

        logs = hybridorch("logs", path, "recommender-plugin").stdout
        assert "@@HYB READY" in logs
        ps = {(r["stack"], r["workload"]): r for r in json.loads(hybridorch("ps", "-o", "json").stdout)}
        assert ps[(stack, "recommender-plugin")]["runtime"] == "sandboxed"
        assert ps[(stack, "recommender-plugin")]["owner"] == "team-shop"
        audit = hybridorch("audit", path, "--live", "--target", "local", "--format", "json", "--fail-on", "never")
        live = [f for f in json.loads(audit.stdout)["findings"] if f.get("live")]
        assert not [f for f in live if f["rule"] == "HYB012"], live   # isolation not bypassed
        # idempotent: a second up keeps the same VM
        pid = plugin["pid"]
        hybridorch("up", path)
        assert by_name(json.loads(hybridorch("status", path, "-o", "json").stdout))["recommender-plugin"]["pid"] == pid
    finally:
        down = hybridorch("down", path)
    assert "vm recommender-plugin" in down.stdout and "container e2e-sandbox-vm-web-0" in down.stdout
    assert f"hyb-{stack}-" not in subprocess.run(["virsh", "list", "--all", "--name"], capture_output=True,
                                                 text=True, check=True).stdout
    assert not (state_dir / stack).exists()
    assert not docker_client.containers.list(all=True, filters={"label": f"hybridorch.dev/stack={stack}"})


def test_auto_uses_what_docker_really_has(tmp_path: Path, state_dir: Path, stack_file, docker_client) -> None:
    """The default (auto): Docker's gVisor/Kata runtime when it has one registered, else the plugin's own VM."""
    plugin_port, web_port = free_ports(2)
    stack = "e2e-sandbox-auto"
    path = write(tmp_path, stack_file, shop_plugin_stack(tmp_path, stack, None, plugin_port, web_port))
    runtime = docker_sandbox_runtime()
    try:
        hybridorch("up", path, timeout=400)
        assert "workload recommender-plugin" in get(plugin_port)
        plugin = by_name(json.loads(hybridorch("status", path, "-o", "json").stdout))["recommender-plugin"]
        containers = {c.labels["hybridorch.dev/workload"]: c for c in docker_client.containers.list(
            all=True, filters={"label": f"hybridorch.dev/stack={stack}"})}
        if runtime:
            assert f"sandboxed with the {runtime} runtime" in plugin["detail"]
            assert containers["recommender-plugin"].attrs["HostConfig"]["Runtime"] == runtime
        else:
            assert "sandboxed in its own VM (no gVisor/Kata runtime in Docker)" in plugin["detail"]
            assert set(containers) == {"web"} and plugin["domain"] == f"hyb-{stack}-recommender-plugin-0"
    finally:
        hybridorch("down", path)
    assert not docker_client.containers.list(all=True, filters={"label": f"hybridorch.dev/stack={stack}"})
    assert not (state_dir / stack).exists()


def test_runtime_choice_without_a_runtime_fails_before_anything_starts(tmp_path: Path, state_dir: Path, stack_file,
                                                                        docker_client) -> None:
    """localSandbox: runtime never falls back to runc: without gVisor/Kata in Docker, `up` is one line, exit 4,
    and nothing of the stack exists; with one, the plugin runs under it."""
    plugin_port, web_port = free_ports(2)
    stack = "e2e-sandbox-runtime"
    path = write(tmp_path, stack_file, shop_plugin_stack(tmp_path, stack, "runtime", plugin_port, web_port))
    runtime = docker_sandbox_runtime()
    try:
        result = hybridorch("up", path, check=False, timeout=400)
        if runtime is None:
            assert result.returncode == 4, result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and "localSandbox is runtime" in lines[0] and "Traceback" not in result.stderr
            assert not docker_client.containers.list(all=True, filters={"label": f"hybridorch.dev/stack={stack}"})
            assert not docker_client.networks.list(filters={"label": f"hybridorch.dev/stack={stack}"})
            assert not (state_dir / stack).exists()
        else:
            assert result.returncode == 0, result.stderr
            assert f"sandboxed with the {runtime} runtime" in result.stdout
    finally:
        hybridorch("down", path)


def test_a_sandbox_vm_that_never_gets_ready_leaves_nothing(tmp_path: Path, state_dir: Path, stack_file,
                                                           docker_client) -> None:
    """The plugin's container dies in its VM: `up` fails with the console's last lines, and neither the VM nor the
    web container started before it is left behind."""
    plugin_port, web_port = free_ports(2)
    stack = "e2e-sandbox-fail"
    text = shop_plugin_stack(tmp_path, stack, "vm", plugin_port, web_port, ["sh", "-c", "echo plugin-dying; exit 3"])
    doc = yaml.safe_load(text)
    # a long ready timeout: the guest reports the container's stop, so `up` fails when it happens, not at the end
    doc["spec"]["workloads"][1]["ready"] = {"port": 8082, "timeout": 300}
    path = write(tmp_path, stack_file, yaml.safe_dump(doc, sort_keys=False))
    started = time.monotonic()
    result = hybridorch("up", path, check=False, timeout=400)
    assert result.returncode == 4 and "Traceback" not in result.stderr
    assert "VM recommender-plugin: its container recommender-plugin failed with exit code 3" in result.stderr
    assert "plugin-dying" in result.stderr and time.monotonic() - started < 250
    assert f"hyb-{stack}-" not in subprocess.run(["virsh", "list", "--all", "--name"], capture_output=True,
                                                 text=True, check=True).stdout
    assert not docker_client.containers.list(all=True, filters={"label": f"hybridorch.dev/stack={stack}"})
    assert not docker_client.networks.list(filters={"label": f"hybridorch.dev/stack={stack}"})
    assert not (state_dir / stack).exists()
