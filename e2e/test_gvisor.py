"""End-to-end: gVisor for real. e2e/setup.d/12-gvisor.sh builds runsc from the Go module proxy and registers it with
the local Docker engine; a local `sandboxed` workload then runs on gVisor's user-space kernel (its /proc/version
and dmesg are gVisor's, not the host's) and serves its port. On kind, see test_sandboxed_pod_runs_under_gvisor."""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import ROOT, free_ports, hybridorch, kind_nodes, kubectl, require

pytestmark = pytest.mark.e2e

GVISOR_SETUP = ROOT / "e2e" / "setup.d" / "12-gvisor.sh"


def docker_runtimes() -> dict[str, Any]:
    out = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True,
                         check=True, timeout=30)
    return json.loads(out.stdout) or {}


@pytest.fixture(scope="module")
def runsc() -> str:
    """The runsc Docker runs: the one the setup step built (static: see 12-gvisor.sh) and registered."""
    built = subprocess.run(["bash", str(GVISOR_SETUP), "--print-dir"], capture_output=True, text=True,
                           check=True).stdout.strip() + "/runsc"
    require(os.path.exists(built), f"runsc not built: run {GVISOR_SETUP.relative_to(ROOT)}")
    registered = docker_runtimes().get("runsc")
    require(registered is not None, f"Docker has no runtime runsc: run {GVISOR_SETUP.relative_to(ROOT)} "
                                    "(it prints why when a sandbox does not boot on this host)")
    assert registered["path"] == built
    return built


def get(port: int, path: str = "/") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return resp.read().decode()


def host_cmdlines() -> list[str]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return out


# each container publishes what kernel it runs on, then serves it (busybox httpd as nobody, read-only root)
PROBE = ("mkdir -p /tmp/www && cat /proc/version > /tmp/www/version && (dmesg > /tmp/www/dmesg 2>&1 || true) && "
         "echo \"<title>$PAGE_TITLE</title>\" > /tmp/www/index.html && exec httpd -f -v -p {port} -h /tmp/www")


def test_local_sandboxed_workload_runs_under_gvisor(runsc: str, state_dir: Path,
                                                     stack_file: Callable[..., str], docker_client: Any) -> None:
    plugin_port, web_port = free_ports(2)
    stack = "e2e-gvisor-local"
    path = stack_file({
        "apiVersion": "hybridorch.dev/v1alpha1", "kind": "Stack", "metadata": {"name": stack, "ttl": "1h"},
        "spec": {"policy": "balanced", "workloads": [
            {"name": "plugin", "image": "hybridorch.local/httpd:1", "trust": "untrusted",   # -> sandboxed
             "command": ["sh", "-c", PROBE.format(port=8082)], "env": {"PAGE_TITLE": "plugin under gVisor"},
             "ports": [{"port": 8082, "hostPort": plugin_port}], "resources": {"cpu": "250m", "memory": "64Mi"}},
            {"name": "web", "image": "hybridorch.local/httpd:1", "trust": "trusted",         # -> container
             "command": ["sh", "-c", PROBE.format(port=8080)],
             "ports": [{"port": 8080, "hostPort": web_port}], "resources": {"cpu": "250m", "memory": "64Mi"}}]}},
        "stack.yaml")
    plan = {p["workload"]: p["runtime"] for p in json.loads(hybridorch("plan", path, "-o", "json").stdout)["placements"]}
    assert plan == {"plugin": "sandboxed", "web": "container"}
    try:
        up = hybridorch("up", path, timeout=300)
        assert "sandboxed with the runsc runtime (gVisor)" in up.stdout, up.stdout
        # it serves its port on the host, through gVisor's network stack
        assert "<title>plugin under gVisor</title>" in get(plugin_port)
        # its kernel is gVisor's: /proc/version and the boot log come from the sentry, not from the host
        version = get(plugin_port, "/version")
        host_version = Path("/proc/version").read_text()
        assert "gvisor" in version and version != host_version, version
        assert "Starting gVisor..." in get(plugin_port, "/dmesg")
        # the control: the plain container beside it sees the host's kernel
        assert get(web_port, "/version") == host_version
        # the application is no host process (the sentry runs it); the plain container's httpd is one
        cmdlines = host_cmdlines()
        assert not [c for c in cmdlines if "-p 8082 -h /tmp/www" in c]
        assert [c for c in cmdlines if "-p 8080 -h /tmp/www" in c]

        status = {r["name"]: r for r in json.loads(hybridorch("status", path, "-o", "json").stdout)}
        assert status["plugin"]["state"] == "ready" and status["plugin"]["runtime"] == "sandboxed"
        assert "sandboxed with the runsc runtime (gVisor)" in status["plugin"]["detail"]
        assert status["plugin"]["containerRuntime"] == "runsc"
        assert status["web"]["containerRuntime"] == "runc"
        (container,) = docker_client.containers.list(filters={"label": f"hybridorch.dev/stack={stack}",
                                                              "name": f"{stack}-plugin-0"})
        assert container.attrs["HostConfig"]["Runtime"] == "runsc"
        assert "response:200" in hybridorch("logs", path, "plugin").stdout   # httpd -v logged our requests
    finally:
        hybridorch("down", path)
    assert not docker_client.containers.list(all=True, filters={"label": f"hybridorch.dev/stack={stack}"})


# --- kind: a sandboxed pod under the node's runsc handler ---------------------------------------------------------

def test_sandboxed_pod_runs_under_gvisor_on_kind(kind_cluster: dict[str, str], stack_file: Callable[..., str],
                                                 tmp_path: Path) -> None:
    """A policy with sandboxRuntimeClass: gvisor: `apply` creates RuntimeClass hybridorch-gvisor (handler runsc) and
    the untrusted workload's pod becomes Ready on the kind node (kubelet's readiness probe reaches its port), on
    gVisor's kernel. The node image carries runsc and its containerd shim (e2e/kind/build-node-image.sh)."""
    env = kind_cluster
    (tmp_path / "gvisor-policy.yaml").write_text(json.dumps({
        "apiVersion": "hybridorch.dev/v1alpha1", "kind": "Policy", "metadata": {"name": "gvisor"},
        "spec": {"base": "balanced", "sandboxRuntimeClass": "gvisor"}}))
    stack = "e2e-gvisor-kind"
    path = stack_file({
        "apiVersion": "hybridorch.dev/v1alpha1", "kind": "Stack", "metadata": {"name": stack, "ttl": "1h"},
        "spec": {"policy": "gvisor-policy.yaml", "workloads": [
            {"name": "plugin", "image": "hybridorch.local/httpd:1", "trust": "untrusted",
             "command": ["sh", "-c", PROBE.format(port=8082)], "env": {"PAGE_TITLE": "plugin under gVisor"},
             "ports": [8082], "resources": {"cpu": "100m", "memory": "64Mi"}}]}}, "stack.yaml")
    prefix, namespace = "gv-", "gv-e2e-gvisor-kind"
    try:
        t0 = time.monotonic()
        hybridorch("apply", path, "--namespace-prefix", prefix, env=env, timeout=600)
        ready = time.monotonic() - t0
        rc = json.loads(kubectl(env, "get", "runtimeclass", "hybridorch-gvisor", "-o", "json").stdout)
        assert rc["handler"] == "runsc" and "scheduling" not in rc
        (pod,) = json.loads(kubectl(env, "get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        assert pod["spec"]["runtimeClassName"] == "hybridorch-gvisor"
        assert all(c["ready"] for c in pod["status"]["containerStatuses"]), pod["status"]
        name = pod["metadata"]["name"]
        version = kubectl(env, "exec", "-n", namespace, name, "--", "cat", "/proc/version").stdout
        assert "gvisor" in version and version != Path("/proc/version").read_text()
        assert "Starting gVisor..." in kubectl(env, "exec", "-n", namespace, name, "--", "dmesg").stdout
        # its port answers inside the pod too (through gVisor's network stack)
        page = kubectl(env, "exec", "-n", namespace, name, "--", "wget", "-q", "-O", "-",
                       "http://127.0.0.1:8082/").stdout
        assert "<title>plugin under gVisor</title>" in page
        print(f"gVisor pod apply-to-ready: {ready:.1f}s on nodes {kind_nodes()}")
    finally:
        hybridorch("delete", path, "--namespace-prefix", prefix, env=env, check=False, timeout=300)
