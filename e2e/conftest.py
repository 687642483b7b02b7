"""Shared fixtures of the end-to-end tests: `require` (skip locally, fail in CI), a Docker client, an isolated
state dir, a stack-file writer, a session cleanup of every object carrying a test stack's labels, and the
Kubernetes clusters: `kind_cluster`, the real kind cluster every module that needs a cluster shares (created once
per session, deleted at its end), `kind_two_workers`, a second kind cluster with two worker nodes for the tests
that spread pods over nodes (made only in sessions that ask for it), `kubevirt_cluster`, a kind cluster where real
KubeVirt (built from source) boots VMs, and `kwok_cluster`, the API server with many
fake kwok nodes for the tests that need foreign-arch or fake nodes, or an API server they can stop.

Test stacks are named `e2e-...`; what a session used is removed after it, stale `e2e-*` leftovers before it.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import require  # noqa: F401  (re-exported for the e2e tests)
import yaml

ROOT = Path(__file__).resolve().parent.parent
TEST_STACK_PREFIX = "e2e-"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
LABEL_STACK = "hybridorch.dev/stack"


def pytest_configure(config: pytest.Config) -> None:
    # stack files written to tmp dirs still find the example image recipes after a non-editable install
    os.environ.setdefault("HYBRIDORCH_IMAGES", str(ROOT / "examples" / "images"))


def free_ports(n: int) -> list[int]:
    """n TCP ports free on 127.0.0.1 right now (held together while choosing, so they are distinct)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def hybridorch(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
               check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (`python -m hybridorch`), from the repository root."""
    result = subprocess.run([sys.executable, "-m", "hybridorch", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"hybridorch {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def progress_lines(stderr: str) -> list[str]:
    """The progress lines `up`/`down`/`apply`/`delete`/`gc` write to stderr (`[  1.2s] web: ready (...)`)."""
    from hybridorch.progress import LINE_PREFIX

    return [line for line in stderr.splitlines() if LINE_PREFIX.match(line)]


def error_lines(stderr: str) -> list[str]:
    """stderr without the progress lines and blank lines: the errors and warnings a command printed."""
    from hybridorch.progress import LINE_PREFIX

    return [line for line in stderr.strip().splitlines() if line.strip() and not LINE_PREFIX.match(line)]


def ready_line(stderr: str, workload: str) -> str | None:
    """The progress line that says `workload` became ready (None when there is none)."""
    return next((line for line in progress_lines(stderr) if f"] {workload}: ready" in line), None)


def _engine() -> Any:
    try:
        import docker

        client = docker.from_env(timeout=60)
        client.ping()
        return client
    except Exception:  # noqa: BLE001 - any failure means "no usable engine"
        return None


STALE_AFTER = 3600   # seconds; younger e2e-* objects may belong to a pytest run in parallel on this machine
# kept in the environment, not a module global: test modules import this file as e2e.conftest while pytest
# loads it as conftest, and the two copies must share one list
_USED_STACKS = "HYBRIDORCH_E2E_STACKS"


def used_stacks() -> set[str]:
    return {s for s in os.environ.get(_USED_STACKS, "").split(",") if s}


def register_stack(name: str) -> str:
    """Note a test stack so the session cleanup removes whatever a failed test left of it."""
    assert name.startswith(TEST_STACK_PREFIX), f"test stacks are named {TEST_STACK_PREFIX}* (got {name!r})"
    os.environ[_USED_STACKS] = ",".join(sorted(used_stacks() | {name}))
    return name


def _age(created: str) -> float:
    from datetime import datetime, timezone

    try:
        stamp = datetime.fromisoformat(created[:19]).replace(tzinfo=timezone.utc)
    except ValueError:
        return 0.0
    return (datetime.now(timezone.utc) - stamp).total_seconds()


def remove_test_objects(client: Any, stacks: set[str] | None = None) -> list[str]:
    """Remove containers, networks and volumes hybridorch created for test stacks: `stacks`, or else every `e2e-*`
    stack's objects older than STALE_AFTER (leftovers of a killed run; a parallel run's objects are young)."""
    def ours(labels: dict[str, str] | None, created: str) -> bool:
        stack = (labels or {}).get(LABEL_STACK, "")
        if stacks is not None:
            return stack in stacks
        return stack.startswith(TEST_STACK_PREFIX) and _age(created) > STALE_AFTER

    import docker.errors

    removed = []
    for c in client.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}=hybridorch"}):
        if ours(c.labels, c.attrs.get("Created", "")):
            try:
                c.remove(force=True)
                removed.append(c.name)
            except docker.errors.NotFound:  # removed meanwhile by the test that owned it
                pass
    for n in client.networks.list(filters={"label": f"{LABEL_MANAGED}=hybridorch"}):
        if ours(n.attrs.get("Labels"), n.attrs.get("Created", "")):
            try:
                n.remove()
                removed.append(n.name)
            except docker.errors.NotFound:
                pass
    # volumes outlive `down` on purpose (data); test stacks' volumes go with the session
    for v in client.volumes.list(filters={"label": f"{LABEL_MANAGED}=hybridorch"}):
        if ours(v.attrs.get("Labels"), v.attrs.get("CreatedAt", "")):
            try:
                v.remove(force=True)
                removed.append(v.name)
            except docker.errors.APIError:  # gone meanwhile, or still used by a parallel run's container
                pass
    return removed


@pytest.fixture(scope="session", autouse=True)
def _cleanup_test_stacks() -> Iterator[None]:
    client = _engine()
    if client is not None:
        remove_test_objects(client)
    yield
    if client is not None and used_stacks():
        remove_test_objects(client, used_stacks())


@pytest.fixture(scope="session")
def docker_client() -> Any:
    """A docker SDK client for a reachable engine (start one with e2e/setup.d/10-docker.sh)."""
    client = _engine()
    require(client is not None, "no reachable Docker engine (run e2e/setup.d/10-docker.sh)")
    return client


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    monkeypatch.setenv("HYBRIDORCH_STATE_DIR", str(path))
    return path


@pytest.fixture
def stack_file(tmp_path: Path) -> Callable[..., str]:
    """Write a stack (YAML text, or a dict) to a file in tmp and return its path; names must start with e2e-."""
    counter = iter(range(1000))

    def write(content: str | dict[str, Any], name: str | None = None) -> str:
        text = yaml.safe_dump(content, sort_keys=False) if isinstance(content, dict) else \
            textwrap.dedent(content).lstrip("\n")
        register_stack((yaml.safe_load(text).get("metadata") or {}).get("name", ""))
        path = tmp_path / (name or f"stack{next(counter)}.yaml")
        path.write_text(text)
        return str(path)

    return write


# --- Kubernetes clusters --------------------------------------------------------------------------------------

CLUSTER_SCRIPT = ROOT / "e2e" / "k8s" / "cluster.py"   # e2e/cluster.sh
# the kind cluster's name, as e2e/kind/cluster.sh and e2e/k8s/cluster.py read it: set it to run beside another
KIND_CLUSTER = os.environ.get("HYBRIDORCH_KIND_CLUSTER") or "hybridorch-e2e"
CLUSTER_TIMINGS: dict[str, float] = {}


def cluster_cmd(provider: str, *args: str, env: dict[str, str] | None = None,
                timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """e2e/cluster.sh COMMAND --provider PROVIDER (cluster.py), with `env` added to the environment."""
    return subprocess.run([sys.executable, str(CLUSTER_SCRIPT), *args, "--provider", provider], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def kubectl_binary() -> str:
    out = subprocess.run(["bash", str(ROOT / "e2e" / "k8s" / "build.sh"), "--print-dir"], capture_output=True,
                         text=True).stdout.strip()
    return str(Path(out) / "kubectl") if out else ""


def kind_nodes(name: str = KIND_CLUSTER) -> list[str]:
    """The node containers of kind cluster `name` (none when it does not run)."""
    if not shutil.which("docker"):
        return []
    out = subprocess.run(["docker", "ps", "--filter", f"label=io.x-k8s.kind.cluster={name}", "--format",
                          "{{.Names}}"], capture_output=True, text=True).stdout
    return out.split()


def kubectl(env: dict[str, str], *args: str, stdin: str | None = None, check: bool = True,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """kubectl against the cluster of `env` (a cluster fixture's KUBECONFIG/HOME/HYBRIDORCH_KUBECTL)."""
    proc = subprocess.run([env["HYBRIDORCH_KUBECTL"], *args], input=stdin, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc


def kube_get(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    import json

    return json.loads(kubectl(env, "get", *args, "-o", "json").stdout)["items"]


def _cluster_env(home: Path, kubeconfig: Path) -> dict[str, str]:
    return {"KUBECONFIG": str(kubeconfig), "HOME": str(home), "HYBRIDORCH_KUBECTL": kubectl_binary()}


@pytest.fixture(scope="session")
def kind_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The real kind cluster of the session (KUBECONFIG, HOME and kubectl for it): `e2e/cluster.sh up --provider
    kind`, i.e. `kind create cluster` from the locally built node image, with KubeVirt's CRDs (no controllers: VMs
    are accepted, never booted). A cluster that already runs under the name is reused and left running; one made
    here is deleted when the session ends. The kubeconfig is the session's own file."""
    require(shutil.which("docker") is not None and bool(kubectl_binary()),
            "no Docker engine or Kubernetes build (run e2e/setup.sh)")
    home = tmp_path_factory.mktemp("kind-home")
    kubeconfig = home / "kubeconfig"
    own = {"HYBRIDORCH_KIND_KUBECONFIG": str(kubeconfig), "HYBRIDORCH_KIND_CLUSTER": KIND_CLUSTER}
    reused = bool(kind_nodes())
    t0 = time.monotonic()
    proc = cluster_cmd("kind", "up", env=own)
    require(proc.returncode == 0, f"kind cluster {KIND_CLUSTER} did not come up: {proc.stderr[-2000:]}")
    CLUSTER_TIMINGS[f"kind cluster {'reused' if reused else 'created'}"] = time.monotonic() - t0
    yield _cluster_env(home, kubeconfig)
    if not reused:
        t0 = time.monotonic()
        cluster_cmd("kind", "down", env=own, timeout=300)
        CLUSTER_TIMINGS["kind cluster deleted"] = time.monotonic() - t0


# the cluster of `kind_two_workers`: never the shared one, whatever HYBRIDORCH_KIND_CLUSTER says
SOC_CLUSTER = "hybridorch-soc"
SOC_WORKERS = (f"{SOC_CLUSTER}-worker", f"{SOC_CLUSTER}-worker2")   # kind's names for its workers: node = container


@pytest.fixture(scope="session")
def kind_two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A second real kind cluster, SOC_CLUSTER: a control-plane (kept tainted, as kind does beside workers) and two
    workers (SOC_WORKERS), from the same node image, kubelet patches and kube-router as `kind_cluster`'s
    (`e2e/cluster.sh up --provider kind --workers 2`), with KubeVirt's CRDs. Yields what `kind_cluster` does
    (KUBECONFIG, HOME and kubectl for it; the kubeconfig is the session's own file). Made only when a test asks for
    it, deleted when the session ends; one left by a killed session is reused if it has its three nodes, else made
    anew. It holds about 0.8 GB while it runs."""
    require(shutil.which("docker") is not None and bool(kubectl_binary()),
            "no Docker engine or Kubernetes build (run e2e/setup.sh)")
    home = tmp_path_factory.mktemp("kind-soc-home")
    kubeconfig = home / "kubeconfig"
    own = {"HYBRIDORCH_KIND_KUBECONFIG": str(kubeconfig), "HYBRIDORCH_KIND_CLUSTER": SOC_CLUSTER}
    left = kind_nodes(SOC_CLUSTER)
    if left and len(left) != 1 + len(SOC_WORKERS):
        cluster_cmd("kind", "down", env=own, timeout=300)   # other nodes than this fixture makes: start afresh
        left = []
    t0 = time.monotonic()
    proc = cluster_cmd("kind", "up", "--workers", str(len(SOC_WORKERS)), env=own)
    if proc.returncode != 0:
        cluster_cmd("kind", "down", env=own, timeout=300)   # half made: nothing for the next session to reuse
    require(proc.returncode == 0, f"kind cluster {SOC_CLUSTER} did not come up: {proc.stderr[-2000:]}")
    CLUSTER_TIMINGS[f"kind {SOC_CLUSTER} (2 workers) {'reused' if left else 'created'}"] = time.monotonic() - t0
    yield _cluster_env(home, kubeconfig)
    t0 = time.monotonic()
    cluster_cmd("kind", "down", env=own, timeout=300)
    CLUSTER_TIMINGS[f"kind {SOC_CLUSTER} deleted"] = time.monotonic() - t0


# the cluster of `kubevirt_cluster`: real KubeVirt runs there, so its CRDs are KubeVirt's own, not the stubs
KUBEVIRT_CLUSTER = "hybridorch-kubevirt"


@pytest.fixture(scope="session")
def kubevirt_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A third real kind cluster, KUBEVIRT_CLUSTER: one node, from the same node image as `kind_cluster`'s, with
    KubeVirt built from source (e2e/kubevirt/build.sh, run by the test command's setup) installed with TCG
    (`e2e/cluster.sh up --provider kind --kubevirt`, which returns when the KubeVirt CR is Available). Yields what
    `kind_cluster` does. One that already runs is reused and left running (install.sh makes sure KubeVirt is
    current); one made here is deleted when the session ends. A separate cluster, so that the schema-only CRDs of
    the others (VMs accepted, never booted: the "no KubeVirt" case) stay what they test."""
    require(shutil.which("docker") is not None and bool(kubectl_binary()),
            "no Docker engine or Kubernetes build (run e2e/setup.sh)")
    built = subprocess.run(["bash", str(ROOT / "e2e" / "kubevirt" / "build.sh"), "--print-dir"], capture_output=True,
                           text=True).stdout.strip()
    require(bool(built) and (Path(built) / "build.env").exists(),
            "KubeVirt not built: run e2e/setup.sh kubevirt (HYBRIDORCH_KUBEVIRT_SOURCE names its source)")
    home = tmp_path_factory.mktemp("kind-kubevirt-home")
    kubeconfig = home / "kubeconfig"
    own = {"HYBRIDORCH_KIND_KUBECONFIG": str(kubeconfig), "HYBRIDORCH_KIND_CLUSTER": KUBEVIRT_CLUSTER}
    reused = bool(kind_nodes(KUBEVIRT_CLUSTER))
    t0 = time.monotonic()
    proc = cluster_cmd("kind", "up", "--kubevirt", env=own, timeout=3600)
    if proc.returncode != 0 and not reused:
        cluster_cmd("kind", "down", env=own, timeout=300)   # half made: nothing for the next session to reuse
    require(proc.returncode == 0, f"kind cluster {KUBEVIRT_CLUSTER} with KubeVirt did not come up: "
                                  f"{(proc.stdout + proc.stderr)[-3000:]}")
    CLUSTER_TIMINGS[f"kind {KUBEVIRT_CLUSTER} with KubeVirt {'reused' if reused else 'created'}"] = \
        time.monotonic() - t0
    yield _cluster_env(home, kubeconfig)
    if not reused:
        t0 = time.monotonic()
        cluster_cmd("kind", "down", env=own, timeout=300)
        CLUSTER_TIMINGS[f"kind {KUBEVIRT_CLUSTER} deleted"] = time.monotonic() - t0


@pytest.fixture(scope="session")
def cluster_timings() -> dict[str, float]:
    """Seconds of notable cluster steps (creation, apply-to-ready), printed in the terminal summary."""
    return CLUSTER_TIMINGS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if CLUSTER_TIMINGS:
        terminalreporter.write_line("[cluster timings] " + ", ".join(f"{k}: {v:.1f}s"
                                                                     for k, v in CLUSTER_TIMINGS.items()))


def reinstall_kubevirt_crds(env: dict[str, str]) -> None:
    """Put KubeVirt's CRDs back into the kind cluster of `env` (a test deleted one)."""
    proc = cluster_cmd("kind", "up", env={"HYBRIDORCH_KIND_KUBECONFIG": env["KUBECONFIG"],
                                          "HYBRIDORCH_KIND_CLUSTER": KIND_CLUSTER})
    assert proc.returncode == 0, proc.stderr[-2000:]


def kwok_binaries_built() -> bool:
    out = subprocess.run(["bash", str(ROOT / "e2e" / "k8s" / "build.sh"), "--print-dir"], capture_output=True,
                         text=True).stdout.strip()
    return bool(out) and (Path(out).parent / ".complete").exists()


@pytest.fixture(scope="session")
def kwok_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The kwok cluster (`e2e/cluster.sh up --provider local`): a real API server, controller-manager and
    scheduler with fake amd64/arm64 nodes. Reused when up, else started here and stopped (state kept) at the end."""
    running = cluster_cmd("local", "status").returncode == 0
    if not running:
        require(kwok_binaries_built(), "Kubernetes binaries not built: run e2e/setup.d/30-k8s.sh (about 20 min once)")
    t0 = time.monotonic()
    proc = cluster_cmd("local", "up")   # starts it, or makes sure CRDs and fake nodes are in place
    assert proc.returncode == 0, f"e2e/cluster.sh up --provider local failed:\n{proc.stderr[-3000:]}"
    CLUSTER_TIMINGS[f"kwok cluster {'checked' if running else 'started'}"] = time.monotonic() - t0
    home = tmp_path_factory.mktemp("kwok-home")
    kubeconfig = home / "kubeconfig"
    shutil.copy(cluster_cmd("local", "kubeconfig").stdout.strip(), kubeconfig)
    yield _cluster_env(home, kubeconfig)
    if not running:
        cluster_cmd("local", "stop")
