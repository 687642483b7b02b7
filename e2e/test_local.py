"""End-to-end: `hybridorch up/status/logs/down --target local` against the real Docker engine.

The shop example (two tenants) runs without its VM here; the full example, VM included, runs once the QEMU
backend is present. Faults are real: a dead socket, a port bound by the test, SIGINT sent to a real `up`.
"""
from __future__ import annotations

import importlib.util
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.conftest import (ROOT, error_lines, free_ports, hybridorch, progress_lines, ready_line, register_stack,
                          require)

pytestmark = pytest.mark.e2e

SHOP = ROOT / "examples" / "shop.yaml"


def shop_copy(name: str, *, with_vm: bool = False) -> tuple[dict[str, Any], dict[str, int]]:
    """examples/shop.yaml renamed, with every host port moved to a free one (the machine is shared)."""
    doc = yaml.safe_load(SHOP.read_text())
    doc["metadata"]["name"] = register_stack(name)
    if not with_vm:
        doc["spec"]["workloads"] = [w for w in doc["spec"]["workloads"] if w.get("runtime") not in ("vm", "nested")]
    workloads = doc["spec"]["workloads"]
    ports = free_ports(len(workloads))
    host_ports = {}
    for w, host_port in zip(workloads, ports):
        port = w["ports"][0]
        w["ports"] = [{"port": port if isinstance(port, int) else port["port"], "hostPort": host_port}]
        host_ports[w["name"]] = host_port
    return doc, host_ports


def containers_of(client: Any, stack: str) -> dict[str, Any]:
    # ignore_removed: a container listed and removed before the SDK inspects it is not an error here
    found = client.containers.list(all=True, filters={"label": f"hybridorch.dev/stack={stack}"}, ignore_removed=True)
    return {c.name: c for c in found}


def networks_of(client: Any, stack: str) -> list[str]:
    return [n.name for n in client.networks.list(filters={"label": f"hybridorch.dev/stack={stack}"})]


def http_get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        assert response.status == 200
        return response.read().decode()


def http_from(container: Any, host: str, port: int) -> tuple[int, str]:
    """An HTTP GET sent from inside a container with busybox nc (Debian's static busybox wget segfaults there)."""
    code, out = container.exec_run(["sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}"])
    return code, out.decode(errors="replace")


def ip_of(container: Any) -> str:
    container.reload()
    return next(n["IPAddress"] for n in container.attrs["NetworkSettings"]["Networks"].values())


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 4, result.stderr
    lines = error_lines(result.stderr)   # progress lines come before the error
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def example_images(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The example images exist (built by `hybridorch up` itself the first time), for tests that use them directly."""
    path = tmp_path_factory.mktemp("images") / "images.yaml"
    path.write_text(f"""
apiVersion: hybridorch.dev/v1alpha1
kind: Stack
metadata: {{name: {register_stack("e2e-images")}}}
spec:
  workloads:
    - {{name: shell, image: hybridorch.local/busybox:1, command: [sleep, "60"], trust: trusted}}
    - {{name: page, image: hybridorch.local/httpd:1, trust: trusted}}
""")
    hybridorch("up", str(path), "--no-wait")
    hybridorch("down", str(path))
    for ref in ("hybridorch.local/busybox:1", "hybridorch.local/httpd:1"):
        assert docker_client.images.get(ref).labels.get("app.kubernetes.io/managed-by") == "hybridorch"


# --- the shop example, containers only ---------------------------------------------------------------

@pytest.fixture(scope="module")
def shop(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    doc, ports = shop_copy("e2e-shop")
    path = tmp_path_factory.mktemp("shop") / "shop.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    started = time.monotonic()
    up = hybridorch("up", str(path), "--target", "local")
    up_seconds = time.monotonic() - started
    yield {"file": str(path), "ports": ports, "stack": "e2e-shop", "up_seconds": up_seconds, "up": up}
    hybridorch("down", str(path), check=False)


def test_up_shows_each_workload_becoming_ready_on_stderr(shop: Any) -> None:
    up = shop["up"]
    for workload in shop["ports"]:
        line = ready_line(up.stderr, workload)
        assert line is not None, up.stderr
        elapsed = float(line[1:].split("s]", 1)[0])
        assert 0 <= elapsed <= shop["up_seconds"], line
    # created before ready, a line per step; stdout is the status table alone
    assert any(line.endswith("] web: created (container e2e-shop-web-0)") for line in progress_lines(up.stderr))
    assert error_lines(up.stderr) == [] and up.stdout.startswith("WORKLOAD ")


def test_every_published_port_answers_http(shop: Any) -> None:
    for workload, port in shop["ports"].items():
        page = http_get(port)
        assert f"workload {workload} replica 0 on e2e-shop-{workload}-0" in page


def test_status_reports_every_workload_ready(shop: Any) -> None:
    result = hybridorch("status", shop["file"], "--output", "json")
    statuses = {s["name"]: s for s in json.loads(result.stdout)}
    assert list(statuses) == ["web", "api", "recommender-plugin", "payments"]  # plan order
    for name, port in shop["ports"].items():
        assert statuses[name]["state"] == "ready", statuses[name]
        assert statuses[name]["ports"] == [f"127.0.0.1:{port}->{_target(shop, name)}/tcp"]
        assert statuses[name]["uptimeSeconds"] >= 0
    assert statuses["web"]["containers"] == ["e2e-shop-web-0", "e2e-shop-web-1"]
    assert statuses["recommender-plugin"]["runtime"] == "sandboxed"
    assert "sandboxed" in statuses["recommender-plugin"]["detail"]


def _target(shop: Any, workload: str) -> int:
    doc = yaml.safe_load(Path(shop["file"]).read_text())
    w = next(x for x in doc["spec"]["workloads"] if x["name"] == workload)
    return int(w["ports"][0]["port"])


def test_tenants_cannot_reach_each_other(shop: Any, docker_client: Any) -> None:
    found = containers_of(docker_client, shop["stack"])
    web, payments = found["e2e-shop-web-0"], found["e2e-shop-payments-0"]
    # positive control: inside tenant shop, by name and by IP
    code, out = http_from(web, "api", 8081)
    assert code == 0 and "200 OK" in out, out
    code, out = http_from(web, ip_of(found["e2e-shop-api-0"]), 8081)
    assert "200 OK" in out, out
    # tenant shop -> tenant payments: the name does not resolve and the IP is unreachable
    code, out = http_from(web, "payments", 8090)
    assert "200 OK" not in out and "bad address" in out, out
    code, out = http_from(web, ip_of(payments), 8090)
    assert "200 OK" not in out, out
    # and the other way round
    code, out = http_from(payments, ip_of(web), 8080)
    assert "200 OK" not in out, out
    assert set(web.attrs["NetworkSettings"]["Networks"]) == {"hybridorch-e2e-shop-shop"}
    assert set(payments.attrs["NetworkSettings"]["Networks"]) == {"hybridorch-e2e-shop-payments"}


def test_limits_and_restrictions_are_applied(shop: Any, docker_client: Any) -> None:
    found = containers_of(docker_client, shop["stack"])
    api = found["e2e-shop-api-0"].attrs
    host = api["HostConfig"]
    assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 128 * 2**20
    assert host["PidsLimit"] == 256
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["PortBindings"] == {"8081/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(shop["ports"]["api"])}]}
    assert api["Config"]["User"] == "65534:65534"
    labels = api["Config"]["Labels"]
    assert labels["hybridorch.dev/stack"] == "e2e-shop" and labels["hybridorch.dev/workload"] == "api"
    assert labels["hybridorch.dev/tenant"] == "shop" and labels["hybridorch.dev/runtime"] == "container"
    assert len(labels["hybridorch.dev/spec-hash"]) == 16
    # the kernel enforces them (cgroup v1 files as the container sees them)
    code, out = found["e2e-shop-api-0"].exec_run(["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                                  "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"])
    if code == 0:
        assert out.decode().split() == [str(128 * 2**20), "50000"]
    else:  # cgroup v2 host
        code, out = found["e2e-shop-api-0"].exec_run(["cat", "/sys/fs/cgroup/memory.max"])
        assert out.decode().strip() == str(128 * 2**20)
    code, out = found["e2e-shop-api-0"].exec_run(["id", "-u"])
    assert out.decode().strip() == "65534"
    # only replica 0 publishes host ports
    assert found["e2e-shop-web-1"].attrs["HostConfig"]["PortBindings"] in ({}, None)
    plugin = found.get("e2e-shop-recommender-plugin-0")
    if plugin is None:
        # no gVisor/Kata runtime in Docker: the sandboxed plugin is in its own VM (e2e/test_sandbox_vm.py)
        assert "runsc" not in (docker_client.info().get("Runtimes") or {})
        return
    sandboxed = plugin.attrs["HostConfig"]
    assert sandboxed["ReadonlyRootfs"] is True and "/tmp" in sandboxed["Tmpfs"] and sandboxed["Runtime"] != "runc"
    # as uid 0 (the owner of /etc) permissions allow the write, so only the read-only root can refuse it (as
    # nobody, gVisor reports the failed permission check first)
    code, out = plugin.exec_run(["touch", "/etc/x"], user="0")
    assert code != 0 and "Read-only file system" in out.decode()


def test_logs_show_the_served_requests(shop: Any) -> None:
    http_get(shop["ports"]["api"])
    result = hybridorch("logs", shop["file"], "api", "--target", "local")
    assert "response:200" in result.stdout
    result = hybridorch("logs", shop["file"], "web", "--tail", "5")
    assert "[e2e-shop-web-0]" in result.stdout or result.stdout == ""  # several replicas: prefixed lines


def test_up_twice_changes_nothing(shop: Any, docker_client: Any) -> None:
    before = {n: (c.id, c.attrs["State"]["StartedAt"]) for n, c in containers_of(docker_client, shop["stack"]).items()}
    networks = sorted(networks_of(docker_client, shop["stack"]))
    started = time.monotonic()
    hybridorch("up", shop["file"])
    second = time.monotonic() - started
    after = {n: (c.id, c.attrs["State"]["StartedAt"]) for n, c in containers_of(docker_client, shop["stack"]).items()}
    assert after == before
    assert sorted(networks_of(docker_client, shop["stack"])) == networks
    assert second < shop["up_seconds"] + 5


def test_down_removes_the_stack_and_nothing_else(shop: Any, docker_client: Any, example_images: None) -> None:
    # a bystander carrying hybridorch labels of another stack must survive
    bystander = docker_client.containers.create(
        "hybridorch.local/busybox:1", ["sleep", "60"], name="e2e-bystander-x-0",
        labels={"app.kubernetes.io/managed-by": "hybridorch", "hybridorch.dev/stack": "e2e-bystander"})
    try:
        result = hybridorch("down", shop["file"])
        assert "removed container e2e-shop-web-0" in result.stdout
        assert any(line.endswith("] web: removed (container e2e-shop-web-0)") for line in
                   progress_lines(result.stderr)), result.stderr
        assert "removed network hybridorch-e2e-shop-payments" in result.stdout
        assert containers_of(docker_client, "e2e-shop") == {}
        assert networks_of(docker_client, "e2e-shop") == []
        assert docker_client.containers.get(bystander.id).name == "e2e-bystander-x-0"
        assert hybridorch("down", shop["file"]).stdout.strip() == "nothing to remove"
    finally:
        bystander.remove(force=True)


# --- changes, replicas, ports -----------------------------------------------------------------------

CHANGE = """
apiVersion: hybridorch.dev/v1alpha1
kind: Stack
metadata: {{name: e2e-change}}
spec:
  workloads:
    - name: front
      image: hybridorch.local/httpd:1
      command: [httpd, -f, -p, "8080", -h, /www]
      ports: [{{port: 8080, hostPort: {p1}, public: true}}]
      replicas: {replicas}
      trust: trusted
    - name: back
      image: hybridorch.local/httpd:1
      command: [httpd, -f, -p, "80", -h, /www]
      ports: [{{port: 80, hostPort: {p2}}}]
      trust: trusted
      env: {{PAGE_TITLE: "{title}"}}
"""


def test_changed_spec_replaces_only_what_changed(docker_client: Any, stack_file: Any) -> None:
    p1, p2 = free_ports(2)
    path = stack_file(CHANGE.format(p1=p1, p2=p2, replicas=2, title="first"))
    try:
        hybridorch("up", path)
        before = {n: c.id for n, c in containers_of(docker_client, "e2e-change").items()}
        assert set(before) == {"e2e-change-front-0", "e2e-change-front-1", "e2e-change-back-0"}
        assert "<h1>first</h1>" in http_get(p2)
        # public: every host address; port 80 as uid 65534 without root
        front = docker_client.containers.get("e2e-change-front-0").attrs["HostConfig"]["PortBindings"]
        assert front["8080/tcp"][0]["HostIp"] in ("", "0.0.0.0")
        back = docker_client.containers.get("e2e-change-back-0").attrs
        assert back["HostConfig"]["CapAdd"] == ["NET_BIND_SERVICE"] and back["Config"]["User"] == "65534:65534"

        Path(path).write_text(CHANGE.format(p1=p1, p2=p2, replicas=1, title="second"))
        hybridorch("up", path)
        after = {n: c.id for n, c in containers_of(docker_client, "e2e-change").items()}
        assert set(after) == {"e2e-change-front-0", "e2e-change-back-0"}
        assert after["e2e-change-front-0"] == before["e2e-change-front-0"]   # untouched
        assert after["e2e-change-back-0"] != before["e2e-change-back-0"]     # replaced
        assert "<h1>second</h1>" in http_get(p2)
    finally:
        hybridorch("down", path, check=False)
    assert containers_of(docker_client, "e2e-change") == {} and networks_of(docker_client, "e2e-change") == []


# --- faults --------------------------------------------------------------------------------------------

SMALL = """
apiVersion: hybridorch.dev/v1alpha1
kind: Stack
metadata: {{name: {name}}}
spec:
  workloads:
    - name: web
      image: hybridorch.local/httpd:1
      ports: [{{port: 8080, hostPort: {p1}}}]
      trust: trusted
    - name: second
      image: {image}
      command: {command}
      ports: [{{port: 9000, hostPort: {p2}}}]
      trust: trusted
      tenant: other
      ready: {{timeout: 600}}
"""


def small(stack_file: Any, name: str, image: str = "hybridorch.local/httpd:1",
          command: str = '[httpd, -f, -p, "9000", -h, /www]') -> tuple[str, int, int]:
    p1, p2 = free_ports(2)
    return stack_file(SMALL.format(name=name, image=image, command=command, p1=p1, p2=p2)), p1, p2


def assert_nothing_left(client: Any, stack: str) -> None:
    assert containers_of(client, stack) == {}, f"containers of {stack} left behind"
    assert networks_of(client, stack) == [], f"networks of {stack} left behind"


def test_engine_not_running(stack_file: Any, tmp_path: Path, docker_client: Any) -> None:
    path, _, _ = small(stack_file, "e2e-dead")
    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(dead))  # a socket file nobody listens on: the engine is gone
    for command in (("up", path), ("status", path), ("down", path)):
        result = hybridorch(*command, env={"DOCKER_HOST": f"unix://{dead}"}, check=False)
        assert_one_line_error(result, "Docker engine not reachable", str(dead), "Connection refused")
    assert_nothing_left(docker_client, "e2e-dead")


def test_image_missing_without_recipe(stack_file: Any, docker_client: Any) -> None:
    path, _, _ = small(stack_file, "e2e-noimage", image="hybridorch.local/e2e-no-such:1")
    result = hybridorch("up", path, check=False)
    assert_one_line_error(result, "hybridorch.local/e2e-no-such:1", "docker build")
    path, _, _ = small(stack_file, "e2e-noimage", image="registry.example.com/shop/app:3")
    assert_one_line_error(hybridorch("up", path, check=False), "registry.example.com/shop/app:3", "docker load")
    assert_nothing_left(docker_client, "e2e-noimage")


def test_image_whose_build_fails(stack_file: Any, tmp_path: Path, docker_client: Any) -> None:
    recipes = tmp_path / "images" / "e2e-broken"
    recipes.mkdir(parents=True)
    (recipes / "Dockerfile").write_text('FROM hybridorch.local/busybox:1\nRUN ["/bin/sh", "-c", "exit 7"]\n')
    path, _, _ = small(stack_file, "e2e-broken", image="hybridorch.local/e2e-broken:1")
    result = hybridorch("up", path, env={"HYBRIDORCH_IMAGES": str(tmp_path / "images")}, check=False)
    assert_one_line_error(result, "building image hybridorch.local/e2e-broken:1", "failed")
    # the build was announced while it ran (a cold build is the slowest step of an `up`)
    assert "] image hybridorch.local/e2e-broken:1: building (from " in result.stderr, result.stderr
    assert_nothing_left(docker_client, "e2e-broken")
    with pytest.raises(Exception):
        docker_client.images.get("hybridorch.local/e2e-broken:1")


def test_port_already_in_use(stack_file: Any, docker_client: Any) -> None:
    path, _, p2 = small(stack_file, "e2e-busyport")
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", p2))
        holder.listen()
        result = hybridorch("up", path, check=False)
    assert_one_line_error(result, f"127.0.0.1:{p2}/tcp", "second", "already in use")
    assert_nothing_left(docker_client, "e2e-busyport")


TWINS = """
apiVersion: hybridorch.dev/v1alpha1
kind: Stack
metadata: {{name: e2e-twins}}
spec:
  workloads:
    - {{name: first, image: hybridorch.local/httpd:1, command: [httpd, -f, -p, "{port}", -h, /www], ports: [{port}],
       trust: trusted}}
    - {{name: second, image: hybridorch.local/httpd:1, command: [httpd, -f, -p, "{port}", -h, /www],
       ports: [{port}], trust: trusted}}
"""


def test_two_workloads_on_one_port_both_answer_on_the_host_ports_status_reports(stack_file: Any,
                                                                                 docker_client: Any) -> None:
    """The same container port twice is a valid stack: the first gets that host port, the second an automatic one
    (as `docker run -P`), and both answer where `status` says. The port is a free one: the machine is shared."""
    (port,) = free_ports(1)
    path = stack_file(TWINS.format(port=port))
    try:
        up = json.loads(hybridorch("up", path, "-o", "json").stdout)
        statuses = {s["name"]: s for s in json.loads(hybridorch("status", path, "-o", "json").stdout)}
        assert {s["name"]: s["ports"] for s in up} == {n: s["ports"] for n, s in statuses.items()}
        assert statuses["first"]["ports"] == [f"127.0.0.1:{port}->{port}/tcp"]
        (second,) = statuses["second"]["ports"]
        host_port = int(second.split("->")[0].rsplit(":", 1)[1])
        assert second == f"127.0.0.1:{host_port}->{port}/tcp" and host_port != port
        for name, published in (("first", port), ("second", host_port)):
            assert statuses[name]["state"] == "ready"
            assert f"workload {name} replica 0 on e2e-twins-{name}-0" in http_get(published)
        # both containers run with the hardening Kubernetes gets: a read-only root, a writable /tmp
        for name in ("first", "second"):
            host_config = docker_client.containers.get(f"e2e-twins-{name}-0").attrs["HostConfig"]
            assert host_config["ReadonlyRootfs"] is True and "/tmp" in host_config["Tmpfs"]
    finally:
        hybridorch("down", path, check=False)
    assert_nothing_left(docker_client, "e2e-twins")


def test_a_vm_on_a_containers_port_forwards_from_an_automatic_one(stack_file: Any, docker_client: Any) -> None:
    """A local VM's forward follows the same rule: QEMU binds a free host port, which `status` reports."""
    (port,) = free_ports(1)
    path = stack_file({"apiVersion": "hybridorch.dev/v1alpha1", "kind": "Stack", "metadata": {"name": "e2e-twinvm"},
                       "spec": {"workloads": [
                           {"name": "first", "image": "hybridorch.local/httpd:1", "trust": "trusted",
                            "command": ["httpd", "-f", "-p", str(port), "-h", "/www"], "ports": [port]},
                           # the busybox guest serves its ports with httpd
                           {"name": "second", "runtime": "vm", "resources": {"cpu": "500m", "memory": "128Mi"},
                            "ports": [port]}]}})
    try:
        hybridorch("up", path, timeout=600)
        statuses = {s["name"]: s for s in json.loads(hybridorch("status", path, "-o", "json").stdout)}
        assert statuses["second"]["runtime"] == "vm" and statuses["second"]["state"] == "ready"
        (second,) = statuses["second"]["ports"]
        host_port = int(second.split("->")[0].rsplit(":", 1)[1])
        assert host_port not in (0, port) and second.endswith(f"->{port}/tcp")
        assert "workload first " in http_get(port) and "second" in http_get(host_port)
        # the automatic port is part of what runs, not of the spec: a second `up` changes nothing
        hybridorch("up", path, timeout=600)
        again = {s["name"]: s for s in json.loads(hybridorch("status", path, "-o", "json").stdout)}
        assert again["second"]["ports"] == [second]
    finally:
        hybridorch("down", path, check=False, timeout=300)
    assert_nothing_left(docker_client, "e2e-twinvm")


def test_workload_that_exits_rolls_back_this_run(stack_file: Any, docker_client: Any) -> None:
    path, _, _ = small(stack_file, "e2e-crash", image="hybridorch.local/busybox:1",
                       command='[sh, -c, "echo giving up; exit 3"]')
    result = hybridorch("up", path, check=False)
    assert_one_line_error(result, "workload second", "exited with code 3", "giving up")
    assert_nothing_left(docker_client, "e2e-crash")


def test_ctrl_c_during_up_leaves_nothing(stack_file: Any, docker_client: Any) -> None:
    # `second` never listens on its port, so `up --wait` is still running when SIGINT arrives
    path, _, _ = small(stack_file, "e2e-sigint", image="hybridorch.local/busybox:1", command="[sleep, '600']")
    proc = subprocess.Popen([sys.executable, "-m", "hybridorch", "up", path], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while "e2e-sigint-second-0" not in containers_of(docker_client, "e2e-sigint"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "up never created its containers"
            time.sleep(0.1)
        assert "e2e-sigint-web-0" in containers_of(docker_client, "e2e-sigint")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert error_lines(err) == ["error: interrupted"], err
    assert_nothing_left(docker_client, "e2e-sigint")


def test_ctrl_c_keeps_what_existed_before(stack_file: Any, docker_client: Any) -> None:
    """A second `up` that is interrupted removes only what it started, not the containers of the first."""
    path, p1, p2 = small(stack_file, "e2e-sigint2")
    try:
        hybridorch("up", path)
        kept = containers_of(docker_client, "e2e-sigint2")["e2e-sigint2-web-0"].id
        Path(path).write_text(SMALL.format(name="e2e-sigint2", image="hybridorch.local/busybox:1",
                                           command="[sleep, '600']", p1=p1, p2=p2))
        proc = subprocess.Popen([sys.executable, "-m", "hybridorch", "up", path], cwd=ROOT, stderr=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while True:
            second = containers_of(docker_client, "e2e-sigint2").get("e2e-sigint2-second-0")
            if second is not None and second.attrs["Config"]["Entrypoint"] == ["sleep", "600"]:
                break
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        assert proc.returncode == 130
        left = containers_of(docker_client, "e2e-sigint2")
        assert set(left) == {"e2e-sigint2-web-0"} and left["e2e-sigint2-web-0"].id == kept
    finally:
        hybridorch("down", path, check=False)
    assert_nothing_left(docker_client, "e2e-sigint2")


# --- the whole example, VM included ------------------------------------------------------------------

def test_full_shop_example_with_its_vm(docker_client: Any, tmp_path: Path) -> None:
    require(importlib.util.find_spec("hybridorch.backends.qemu") is not None,
            "the QEMU backend (hybridorch/backends/qemu.py) is not there yet")
    doc, ports = shop_copy("e2e-fullshop", with_vm=True)
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        up = hybridorch("up", str(path), timeout=600)
        # the VM's boot is followed, not silent: booting, then ready, like every container's ready line
        for w in doc["spec"]["workloads"]:
            assert ready_line(up.stderr, w["name"]) is not None, up.stderr
        assert any("] ledger-vm: booting (libvirt domain " in line for line in progress_lines(up.stderr)), up.stderr
        statuses = {s["name"]: s for s in json.loads(hybridorch("status", str(path), "-o", "json").stdout)}
        assert list(statuses) == [w["name"] for w in doc["spec"]["workloads"]]
        assert statuses["ledger-vm"]["runtime"] == "vm"
        assert statuses["ledger-vm"]["state"] in ("running", "ready")
        assert statuses["ledger-vm"]["accelerator"] in ("kvm", "tcg")
        for name in ("web", "api", "recommender-plugin", "payments"):
            assert statuses[name]["state"] == "ready"
            assert f"workload {name} " in http_get(ports[name])
        assert any(c.name == "e2e-fullshop-web-0" for c in docker_client.containers.list())
    finally:
        hybridorch("down", str(path), check=False, timeout=300)
    assert_nothing_left(docker_client, "e2e-fullshop")


def test_name_clash_with_a_foreign_container_touches_nothing(stack_file: Any, docker_client: Any,
                                                            example_images: None) -> None:
    """A container that merely has our name (no hybridorch labels) is reported, never removed."""
    path, _, _ = small(stack_file, "e2e-clash")
    foreign = docker_client.containers.create("hybridorch.local/busybox:1", ["sleep", "60"],
                                              name="e2e-clash-second-0")
    try:
        result = hybridorch("up", path, check=False)
        assert_one_line_error(result, "e2e-clash-second-0", "already in use")
        assert docker_client.containers.get("e2e-clash-second-0").id == foreign.id
        assert_nothing_left(docker_client, "e2e-clash")
    finally:
        foreign.remove(force=True)


def test_vm_side_failure_removes_the_containers_this_up_started(docker_client: Any, tmp_path: Path) -> None:
    """LocalBackend: containers come up first; when the VM then fails, those containers are removed again."""
    require(importlib.util.find_spec("hybridorch.backends.qemu") is not None,
            "the QEMU backend (hybridorch/backends/qemu.py) is not there yet")
    doc, ports = shop_copy("e2e-vmfail", with_vm=True)
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", ports["ledger-vm"]))
        holder.listen()
        result = hybridorch("up", str(path), check=False, timeout=600)
    assert result.returncode == 4 and "Traceback" not in result.stderr, result.stderr
    assert str(ports["ledger-vm"]) in result.stderr
    assert_nothing_left(docker_client, "e2e-vmfail")
    statuses = json.loads(hybridorch("status", str(path), "-o", "json").stdout)
    assert {s["name"]: s["state"] for s in statuses} == {w["name"]: "absent" for w in doc["spec"]["workloads"]}


# --- data outlives down ----------------------------------------------------------------------------------

def test_down_keeps_volumes_and_delete_data_removes_them(docker_client: Any, stack_file: Any) -> None:
    stack = "e2e-data"
    volume = f"hybridorch-{stack}-db-0-data"
    path = stack_file(f"""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Stack
        metadata: {{name: {stack}}}
        spec:
          workloads:
            - name: db
              image: hybridorch.local/busybox:1
              command: [sh, -c, "echo ready; exec sleep 3600"]
              trust: trusted
              volumes: [{{name: data, mountPath: /data, size: 64Mi}}]
              ready: {{marker: ready, timeout: 60}}
        """)
    try:
        hybridorch("up", path)
        db = docker_client.containers.get(f"{stack}-db-0")
        code, out = db.exec_run(["sh", "-c", "echo precious > /data/file"])
        assert code == 0, out
        assert docker_client.volumes.get(volume).attrs["Labels"]["hybridorch.dev/stack"] == stack

        out = hybridorch("down", path).stdout
        assert f"removed container {stack}-db-0" in out
        assert f"kept volume {volume}: data (kept without --delete-data); remove it with: docker volume rm {volume}" \
            in out, out
        assert f"`hybridorch down {path} --delete-data` removes it too" in out
        assert not containers_of(docker_client, stack)
        docker_client.volumes.get(volume)   # still there

        # the next up finds the data again, in a new container
        hybridorch("up", path)
        code, out = docker_client.containers.get(f"{stack}-db-0").exec_run(["cat", "/data/file"])
        assert (code, out.decode().strip()) == (0, "precious")

        out = hybridorch("down", path, "--delete-data").stdout
        assert f"removed volume {volume}" in out and "kept" not in out, out
        assert [v.name for v in docker_client.volumes.list(filters={"label": f"hybridorch.dev/stack={stack}"})] == []
        assert hybridorch("down", path).stdout.strip() == "nothing to remove"
    finally:
        hybridorch("down", path, "--delete-data", check=False)
