"""End-to-end: one run per stack at a time on this machine (Docker + libvirt), and a stack that survives what
used to wedge it: two `up` at once, `up` killed with SIGKILL at several points, two networks of one name, and
the Docker daemon restarted under a running stack. Kill points are chosen from the progress lines on stderr or
by polling Docker/QEMU, never by sleeping blindly."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from e2e.conftest import ROOT, error_lines, free_ports, hybridorch, kube_get, kubectl, progress_lines, require

pytestmark = pytest.mark.e2e

LABEL_STACK = "hybridorch.dev/stack"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
LOCK_HELD_EXIT = 75

# two tenants, three small containers: every run is short
SMALL = """
apiVersion: hybridorch.dev/v1alpha1
kind: Stack
metadata: {{name: {name}}}
spec:
  workloads:
    - {{name: web, image: hybridorch.local/httpd:1, command: [httpd, -f, -p, "8080", -h, /www],
       ports: [{{port: 8080, hostPort: {p1}}}], trust: trusted, tenant: shop}}
    - {{name: api, image: hybridorch.local/httpd:1, command: [httpd, -f, -p, "8081", -h, /www],
       ports: [{{port: 8081, hostPort: {p2}}}], trust: trusted, tenant: shop}}
    - {{name: pay, image: hybridorch.local/httpd:1, command: [httpd, -f, -p, "8090", -h, /www],
       ports: [{{port: 8090, hostPort: {p3}}}], trust: trusted, tenant: payments}}
"""

# a container and a VM booting the busybox guest (no disk named)
WITH_VM = """
apiVersion: hybridorch.dev/v1alpha1
kind: Stack
metadata: {{name: {name}}}
spec:
  workloads:
    - {{name: web, image: hybridorch.local/httpd:1, command: [httpd, -f, -p, "8080", -h, /www],
       ports: [{{port: 8080, hostPort: {p1}}}], trust: trusted, tenant: shop}}
    - name: box
      runtime: vm
      resources: {{cpu: "1", memory: 160Mi}}
      ports: [{{port: 80, hostPort: {p2}}}]
      tenant: shop
"""


def small(stack_file: Callable[..., str], name: str, template: str = SMALL) -> str:
    p1, p2, p3 = free_ports(3)
    return stack_file(template.format(name=name, p1=p1, p2=p2, p3=p3))


def networks_of(client: Any, stack: str) -> list[Any]:
    return client.networks.list(filters={"label": f"{LABEL_STACK}={stack}"})


def containers_of(client: Any, stack: str) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"{LABEL_STACK}={stack}"}, ignore_removed=True)


def domains_of(stack: str) -> list[str]:
    listed = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True,
                            text=True).stdout
    return [n for n in listed.split() if n.startswith(f"hyb-{stack}-")]


def states(path: str) -> dict[str, str]:
    return {s["name"]: s["state"] for s in json.loads(hybridorch("status", path, "-o", "json").stdout)}


def assert_nothing_left(client: Any, stack: str, state_dir: Path) -> None:
    """No container, network, volume, libvirt domain, state dir or lock file of the stack (this stack has no data
    volumes: `down` keeps those on purpose, and names them)."""
    assert containers_of(client, stack) == []
    assert networks_of(client, stack) == []
    assert client.volumes.list(filters={"label": f"{LABEL_STACK}={stack}"}) == []
    if shutil.which("virsh"):
        assert domains_of(stack) == []
    assert not (state_dir / stack).exists()
    assert not (state_dir / ".locks" / f"{stack}.lock").exists()


class Run:
    """A `hybridorch` run in the background whose stderr lines are read as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "hybridorch", *args], cwd=ROOT,
                                     env={**os.environ, **(env or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert self.proc.poll() is None or check(), f"run ended before {what}:\n" + "\n".join(self.lines)
            assert time.monotonic() < deadline, f"no {what} within {timeout:g}s:\n" + "\n".join(self.lines)
            time.sleep(0.02)

    def saw(self, needle: str) -> bool:
        return any(needle in line for line in list(self.lines))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        self.proc.wait(timeout)
        self._reader.join(10)
        return self.proc.returncode, "\n".join(self.lines)


# --- (a) two runs at once ------------------------------------------------------------------------------------------

def test_two_concurrent_ups_serialize_and_leave_one_network_per_tenant(state_dir: Path, stack_file,
                                                                       docker_client) -> None:
    path = small(stack_file, "e2e-race")
    runs = [Run("up", path), Run("up", path)]
    results = [r.finish() for r in runs]
    assert [code for code, _ in results] == [0, 0], results
    waited = [err for _, err in results if "waiting for the lock of stack e2e-race held by pid" in err]
    assert len(waited) == 1, results   # the second waited for the first, and said so
    assert sorted(n.name for n in networks_of(docker_client, "e2e-race")) == \
        ["hybridorch-e2e-race-payments", "hybridorch-e2e-race-shop"]
    assert set(states(path).values()) == {"ready"}

    # told not to wait, a second run refuses in one line while the first holds the lock
    Path(path).write_text(Path(path).read_text().replace("trust: trusted, tenant: payments",
                                                         "trust: trusted, tenant: payments, env: {V: '2'}"))
    first = Run("up", path)
    lock = state_dir / ".locks" / "e2e-race.lock"
    first.wait_for(lock.exists, "the lock file")
    refused = hybridorch("up", path, "--no-wait-lock", check=False)
    assert refused.returncode == LOCK_HELD_EXIT, refused.stderr
    lines = error_lines(refused.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: stack e2e-race is locked by pid {first.proc.pid} "
                                                   "(hybridorch up, started "), refused.stderr
    assert first.finish()[0] == 0
    assert len(networks_of(docker_client, "e2e-race")) == 2
    hybridorch("down", path)
    assert_nothing_left(docker_client, "e2e-race", state_dir)


# --- (b) `up` killed with SIGKILL -----------------------------------------------------------------------------------

def _after_kill(path: str, stack: str, client: Any, state_dir: Path) -> str:
    """A killed run's lock is free again: `up` succeeds and has waited until everything is ready (a VM the
    killed run left booting included); `down` leaves nothing. Returns the stderr of that `up`."""
    again = hybridorch("up", path, "--no-wait-lock", "-o", "json", timeout=600)
    assert "Traceback" not in again.stderr
    assert {s["name"]: s["state"] for s in json.loads(again.stdout)} == dict.fromkeys(states(path), "ready"), \
        again.stdout + again.stderr
    assert set(states(path).values()) == {"ready"}, again.stderr
    hybridorch("down", path)
    assert_nothing_left(client, stack, state_dir)
    return again.stderr


def test_up_killed_before_its_networks_exist(state_dir: Path, stack_file, docker_client) -> None:
    path = small(stack_file, "e2e-kill-early")
    run = Run("up", path)
    lock = state_dir / ".locks" / "e2e-kill-early.lock"
    run.wait_for(lock.exists, "the lock file")      # the lock is taken before anything is made
    run.kill()
    assert lock.exists()                            # left behind by the killed run, its flock gone with it
    _after_kill(path, "e2e-kill-early", docker_client, state_dir)


def test_up_killed_between_containers(state_dir: Path, stack_file, docker_client) -> None:
    path = small(stack_file, "e2e-kill-mid")
    run = Run("up", path)
    run.wait_for(lambda: run.saw("created (container e2e-kill-mid-"), "a created container")
    run.kill()
    made = containers_of(docker_client, "e2e-kill-mid")
    assert 1 <= len(made) < 3, [c.name for c in made]   # killed with the stack half made
    assert networks_of(docker_client, "e2e-kill-mid")
    _after_kill(path, "e2e-kill-mid", docker_client, state_dir)


def test_up_killed_while_a_vm_boots(state_dir: Path, stack_file, docker_client) -> None:
    require(shutil.which("virsh") is not None and shutil.which("qemu-system-x86_64") is not None,
            "libvirt/QEMU missing (e2e/setup.d/15-libvirt.sh)")
    path = small(stack_file, "e2e-kill-vm", WITH_VM)
    run = Run("up", path)
    run.wait_for(lambda: run.saw("booting (libvirt domain hyb-e2e-kill-vm-box"), "a booting VM", timeout=300)
    run.kill()
    assert domains_of("e2e-kill-vm")                # the domain outlives the killed run
    err = _after_kill(path, "e2e-kill-vm", docker_client, state_dir)
    # kept (same spec) and waited for as if this run had booted it
    booting = [line for line in progress_lines(err) if "box: booting (libvirt domain hyb-e2e-kill-vm-box-0, " in line]
    assert len(booting) == 1 and booting[0].endswith("; adopted from an interrupted run)"), err
    assert "box: ready (libvirt domain hyb-e2e-kill-vm-box-0)" in err, err


def _children(pid: int) -> list[tuple[int, list[str]]]:
    """(pid, command line) of each process whose parent is `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append((int(entry.name), (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _kill_right_after(run: Run, verb: str, arg: str, domain: str, timeout: float = 300) -> bool:
    """SIGKILL `run` right after libvirt did `virsh VERB ARG` for it, before the run could go on: the run is
    frozen (SIGSTOP) while its own `virsh VERB ARG` is under way, that virsh finishes, then the run is killed.
    False when the run got past that step unseen (a `virsh define` lasts a few milliseconds): it is killed anyway."""
    deadline = time.monotonic() + timeout
    while True:
        children = [(pid, argv) for pid, argv in _children(run.proc.pid) if Path(argv[0]).name == "virsh"]
        if virsh := [pid for pid, argv in children if verb in argv and arg in argv]:
            break
        if run.proc.poll() is not None or any("start" in argv and domain in argv for _, argv in children):
            run.kill()
            return False
        assert time.monotonic() < deadline, f"no `virsh {verb} {arg}` within {timeout:g}s:\n" + "\n".join(run.lines)
        time.sleep(0.002)
    run.proc.send_signal(signal.SIGSTOP)
    while _running(virsh[0]):
        time.sleep(0.01)
    run.kill()
    return True


def _domain_state(name: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", "domstate", name], capture_output=True,
                          text=True).stdout.strip()


# what is done after `up` was killed right after libvirt defined (or started) the VM's domain, before hybridorch
# recorded its pid: (the virsh step the run is killed after, the next command)
AFTER_DEFINE = {
    "adopted-by-up": ("start", "up"),             # same spec: adopted, waited for like its own boot
    "replaced-not-started": ("define", "up"),     # defined, never started: replaced
    "replaced-changed-spec": ("start", "up-changed"),
    "replaced-record-lost": ("start", "up-no-record"),
    "removed-by-down": ("start", "down"),
    "removed-by-gc": ("start", "gc-no-record"),
}


@pytest.mark.parametrize("case", sorted(AFTER_DEFINE))
def test_up_killed_after_a_domain_is_defined_before_it_is_recorded(case: str, state_dir: Path, stack_file,
                                                                   docker_client) -> None:
    require(shutil.which("virsh") is not None and shutil.which("qemu-system-x86_64") is not None,
            "libvirt/QEMU missing (e2e/setup.d/15-libvirt.sh)")
    verb, then = AFTER_DEFINE[case]
    stack, domain = "e2e-kill-define", "hyb-e2e-kill-define-box-0"
    path = small(stack_file, stack, WITH_VM.replace("      runtime: vm\n", "      runtime: vm\n      ttl: 2s\n"))
    workdir = state_dir / stack / "box"
    for _ in range(5):
        # `virsh define` takes the file; a run that got past it unseen is taken down and run again
        if _kill_right_after(Run("up", path), verb, domain if verb == "start" else str(workdir / "domain.xml"), domain):
            break
        hybridorch("down", path)
    else:
        pytest.fail(f"five runs got past `virsh {verb}` unseen")
    assert domains_of(stack) == [domain]            # the domain outlives the killed run ...
    assert _domain_state(domain) == ("running" if verb == "start" else "shut off")
    assert not (workdir / "qemu.pid").exists()      # ... which did not record it
    if then.endswith("no-record"):
        shutil.rmtree(state_dir / stack)            # no record at all: found by its labels alone
    if verb == "start":                             # `ps` lists it, record or not
        rows = json.loads(hybridorch("ps", "-o", "json").stdout)
        assert [(r["workload"], r["name"]) for r in rows if r["stack"] == stack and r["kind"] == "vm"] == \
            [("box", "box")], rows
    if then == "down":
        hybridorch("down", path)
        assert_nothing_left(docker_client, stack, state_dir)
        return
    if then.startswith("gc"):
        time.sleep(2.5)                             # past the VM's ttl
        swept = hybridorch("gc", "--no-wait-lock").stdout
        assert f"removed vm {stack}/box" in swept, swept
        assert domains_of(stack) == []
        hybridorch("down", path)
        assert_nothing_left(docker_client, stack, state_dir)
        return
    if then == "up-changed":
        Path(path).write_text(Path(path).read_text().replace("memory: 160Mi", "memory: 192Mi"))
    err = _after_kill(path, stack, docker_client, state_dir)
    # adopted: the same progress as a boot of its own (booting, then ready once it is), nothing built again
    booting = [line for line in progress_lines(err) if f"box: booting (libvirt domain {domain}, " in line]
    assert len(booting) == 1, err
    assert booting[0].endswith("; adopted from an interrupted run)") == (case == "adopted-by-up"), err
    assert ("box: created (building its initramfs)" in err) != (case == "adopted-by-up"), err
    assert f"box: ready (libvirt domain {domain})" in err, err


# --- (c) a wedged stack: two networks of one name -------------------------------------------------------------------

def _wedge(client: Any, stack: str, tenant: str) -> list[str]:
    """Two networks with the stack's name and labels, made by the SDK directly (what two racing runs once left)."""
    labels = {LABEL_MANAGED: "hybridorch", LABEL_STACK: stack, "hybridorch.dev/tenant": tenant}
    name = f"hybridorch-{stack}-{tenant}"
    return [client.networks.create(name, driver="bridge", labels=labels).id for _ in range(2)]


def test_a_wedged_stack_is_repaired_by_down_and_reused_by_up(state_dir: Path, stack_file, docker_client) -> None:
    path = small(stack_file, "e2e-wedge")
    ids = _wedge(docker_client, "e2e-wedge", "shop")
    assert [n.name for n in networks_of(docker_client, "e2e-wedge")] == ["hybridorch-e2e-wedge-shop"] * 2
    hybridorch("down", path)                        # removes every network of the stack, by ID
    assert_nothing_left(docker_client, "e2e-wedge", state_dir)

    ids = _wedge(docker_client, "e2e-wedge", "shop")
    hybridorch("up", path)                          # reuses the oldest, removes the empty extra one
    shop = [n for n in networks_of(docker_client, "e2e-wedge") if n.name == "hybridorch-e2e-wedge-shop"]
    assert len(shop) == 1 and shop[0].id in ids
    assert set(states(path).values()) == {"ready"}
    assert len(networks_of(docker_client, "e2e-wedge")) == 2
    hybridorch("down", path)
    assert_nothing_left(docker_client, "e2e-wedge", state_dir)


# --- (d) the Docker daemon restarted under a running stack ------------------------------------------------------------

def _dockerd_pid() -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and Path(argv[0].decode(errors="replace")).name == "dockerd":
                return int(entry.name)
    return None


def _engine_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def _restart_dockerd(client: Any) -> None:
    """Stop dockerd with its pid and start it as e2e/setup.d/10-docker.sh does; the kind nodes that ran before
    are started again (the cluster is shared with the other tests)."""
    pid = _dockerd_pid()
    require(pid is not None and not Path("/run/systemd/system").is_dir(),
            "dockerd is not a process this test can restart (systemd-managed or missing)")
    assert pid is not None
    kind_nodes = [c.name for c in client.containers.list(filters={"label": "io.x-k8s.kind.cluster"})]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 90
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists(), "dockerd did not stop"
    try:
        done = subprocess.run(["bash", str(ROOT / "e2e" / "setup.d" / "10-docker.sh")], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 60
        while not _engine_answers():
            assert time.monotonic() < deadline, "dockerd did not answer again"
            time.sleep(0.5)
    finally:
        for name in kind_nodes:
            subprocess.run(["docker", "start", name], capture_output=True, timeout=120)
        for name in kind_nodes:
            if name.endswith("-control-plane"):
                _wait_authorizing(name)


def _wait_authorizing(node: str, timeout: float = 240) -> None:
    """Until a restarted kind control plane answers AND authorizes its admin: kubeadm's admin is not in
    system:masters but bound by RBAC, whose cache the API server fills only after it starts (seen here: the
    next test's `apply` got "kubernetes-admin may not get namespaces" for a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        can = subprocess.run(["docker", "exec", node, "kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf",
                              "auth", "can-i", "get", "namespaces", "--all-namespaces"],
                             capture_output=True, text=True, timeout=60)
        if can.stdout.strip() == "yes":
            return
        assert time.monotonic() < deadline, f"kind node {node} did not authorize its admin again: {can.stderr}"
        time.sleep(1)


def test_status_and_up_after_the_docker_daemon_restarted(state_dir: Path, stack_file, docker_client) -> None:
    path = small(stack_file, "e2e-dockerd")
    hybridorch("up", path)
    assert set(states(path).values()) == {"ready"}
    policies = {c.name: c.attrs["HostConfig"]["RestartPolicy"].get("Name") or "no"
                for c in containers_of(docker_client, "e2e-dockerd")}
    _restart_dockerd(docker_client)
    import docker

    client = docker.from_env(timeout=60)
    running = {c.name: c.status == "running" for c in containers_of(client, "e2e-dockerd")}
    # status tells what Docker did: each container as its restart policy left it, nothing made up
    reported = states(path)
    for w in ("web", "api", "pay"):
        name = f"e2e-dockerd-{w}-0"
        restarted = policies[name] in ("always", "unless-stopped")
        assert running[name] == restarted, (name, policies[name])
        assert (reported[w] in ("ready", "running")) == running[name], reported
    hybridorch("up", path)
    assert set(states(path).values()) == {"ready"}
    assert len(networks_of(client, "e2e-dockerd")) == 2
    hybridorch("down", path)
    assert_nothing_left(client, "e2e-dockerd", state_dir)


# --- the Lease on a cluster -----------------------------------------------------------------------------------------

LEASE_NAMESPACE = "hybridorch-system"


def _lease(cluster: dict[str, str], stack: str) -> dict[str, Any] | None:
    found = kubectl(cluster, "get", "lease", "-n", LEASE_NAMESPACE, f"stack-{stack}", "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def _kube_stack(stack_file: Callable[..., str], name: str) -> str:
    small = {"cpu": "50m", "memory": "32Mi"}   # what fits beside the control plane on the 2-CPU kind node
    return stack_file({"apiVersion": "hybridorch.dev/v1alpha1", "kind": "Stack", "metadata": {"name": name},
                       "spec": {"workloads": [{"name": "web", "image": "hybridorch.local/httpd:1", "ports": [8080],
                                               "trust": "trusted", "resources": small}]}})


def test_two_applies_serialize_on_the_stacks_lease(kind_cluster: dict[str, str], stack_file) -> None:
    path = _kube_stack(stack_file, "e2e-lease")
    try:
        first = Run("apply", path, env=kind_cluster)
        first.wait_for(lambda: (_lease(kind_cluster, "e2e-lease") or {}).get("spec", {}).get("holderIdentity"),
                       "the Lease held", timeout=300)
        lease = _lease(kind_cluster, "e2e-lease")
        assert lease is not None
        spec, notes = lease["spec"], lease["metadata"]["annotations"]
        # held by the first run, with the fields a Lease carries, labelled as the stack's
        assert f"/{first.proc.pid}/" in spec["holderIdentity"] and notes["hybridorch.dev/lock-pid"] == str(first.proc.pid)
        assert spec["leaseDurationSeconds"] == 30 and spec["acquireTime"] and spec["renewTime"]
        assert lease["metadata"]["labels"]["hybridorch.dev/stack"] == "e2e-lease"
        second = Run("apply", path, env=kind_cluster)
        code1, err1 = first.finish(600)
        code2, err2 = second.finish(600)
        assert (code1, code2) == (0, 0), err1 + err2
        if not second.saw("waiting for the lock"):
            pytest.fail("the second apply did not wait for the first:\n" + err2)
        assert f"waiting for the lock of stack e2e-lease held by pid {first.proc.pid} (hybridorch apply, started" \
            in err2
        assert _lease(kind_cluster, "e2e-lease") is None          # released by the last run

        # a killed run's Lease stays until it expires; then the next run takes it over
        killed = Run("apply", path, env=kind_cluster)
        killed.wait_for(lambda: _lease(kind_cluster, "e2e-lease") is not None, "the Lease", timeout=300)
        killed.kill()
        left = _lease(kind_cluster, "e2e-lease")
        assert left is not None and f"/{killed.proc.pid}/" in left["spec"]["holderIdentity"]
        refused = hybridorch("apply", path, "--no-wait-lock", env=kind_cluster, check=False)
        assert refused.returncode == LOCK_HELD_EXIT, refused.stderr
        started = time.monotonic()
        taken = hybridorch("apply", path, env=kind_cluster, timeout=600)
        assert f"took over the lock of stack e2e-lease left by pid {killed.proc.pid}" in taken.stderr
        assert time.monotonic() - started < 30 + 60
        assert _lease(kind_cluster, "e2e-lease") is None
    finally:
        hybridorch("delete", path, "--delete-data", env=kind_cluster, check=False, timeout=600)
    assert _lease(kind_cluster, "e2e-lease") is None
    assert kube_get(kind_cluster, "leases", "-A", "-l", "hybridorch.dev/stack=e2e-lease") == []
