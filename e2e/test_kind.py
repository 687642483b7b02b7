"""End-to-end tests on a real kind cluster (e2e/kind/cluster.sh: a locally built node image, a real kubelet and
containerd, kube-router's firewall enforcing NetworkPolicies): hybridorch loads its local images into the node,
the shop's container workloads get Ready through real readiness probes and serve their page through a Service,
tenants are isolated by the rendered NetworkPolicies, and a crashing workload or a missing image fails `apply`
fast with the pod's own reason.

The cluster is the session's (e2e/conftest.py `kind_cluster`, shared with e2e/test_kubernetes.py); HOME and
KUBECONFIG are isolated.
VMs: only KubeVirt's CRDs are installed (no controllers run offline), so the shop's ledger-vm is accepted, not booted.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from e2e.conftest import ROOT, hybridorch, kubectl

pytestmark = pytest.mark.e2e

KIND = ROOT / "e2e" / "kind" / "cluster.sh"
NAME = os.environ.get("HYBRIDORCH_KIND_CLUSTER", "hybridorch-e2e")
PREFIX = "kind-"   # namespace prefix of the stacks applied here
SHOP = ROOT / "examples" / "shop.yaml"


def kubectl_binary() -> str:
    out = subprocess.run(["bash", str(ROOT / "e2e" / "k8s" / "build.sh"), "--print-dir"], capture_output=True,
                         text=True).stdout.strip()
    return str(Path(out) / "kubectl")


def node_containers(env: dict[str, str] | None = None) -> list[str]:
    """The node containers of the session's kind cluster, or of the kind cluster of `env` (kind names a node's
    container as the node)."""
    if env is not None:
        return [n.split("/", 1)[1] for n in kubectl(env, "get", "nodes", "-o", "name").stdout.split()]
    out = subprocess.run(["docker", "ps", "--filter", f"label=io.x-k8s.kind.cluster={NAME}", "--format",
                          "{{.Names}}"], capture_output=True, text=True).stdout
    return out.split()


@pytest.fixture(scope="module")
def kind(kind_cluster: dict[str, str]) -> dict[str, str]:
    """The session's kind cluster (e2e/conftest.py: `kind create cluster` once per session, or reused when it runs;
    KubeVirt's CRDs installed, no controllers: the shop's VM is accepted, never booted); HOME/KUBECONFIG isolated."""
    return kind_cluster


def shop_image() -> str:
    from hybridorch.core import images

    return images.content_ref("hybridorch.local/httpd:1", images.image_dirs(str(SHOP)))


def run_client(env: dict[str, str], namespace: str, script: str, timeout: float = 120) -> str:
    """Run `script` in a throwaway pod (the shop's image: busybox) in `namespace`; return its log."""
    name = f"client-{uuid.uuid4().hex[:6]}"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
           "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "seccompProfile":
                                        {"type": "RuntimeDefault"}},
                    "containers": [{"name": "client", "image": shop_image(), "imagePullPolicy": "IfNotPresent",
                                    # held until the NetworkPolicy enforcer knows the pod (see below)
                                    "command": ["sh", "-c", "until [ -e /tmp/go ]; do sleep 0.2; done\n" + script],
                                    "resources": {"limits": {"cpu": "100m", "memory": "32Mi"}},
                                    "securityContext": {"allowPrivilegeEscalation": False,
                                                        "capabilities": {"drop": ["ALL"]}}}]}}
    kubectl(env, "apply", "-f", "-", stdin=json.dumps(pod))
    try:
        deadline = time.monotonic() + timeout
        release_when_enforced(env, namespace, name, deadline)
        while True:
            phase = kubectl(env, "get", "pod", name, "-n", namespace, "-o", "jsonpath={.status.phase}").stdout
            if phase in ("Succeeded", "Failed"):
                break
            assert time.monotonic() < deadline, f"client pod still {phase} after {timeout:.0f}s"
            time.sleep(0.5)
        return kubectl(env, "logs", name, "-n", namespace).stdout
    finally:
        kubectl(env, "delete", "pod", name, "-n", namespace, "--wait=false", check=False)


def release_when_enforced(env: dict[str, str], namespace: str, pod: str, deadline: float) -> None:
    """Let the held client pod run once kube-router has the pod's IP in its ipsets. It learns the IP from the
    pod's status, which kubelet reports about a second after the container started: a client that connects
    at once is refused by its own tenant's policies (seen here). A namespace without NetworkPolicies puts no
    pod in any set, so there is nothing to wait for."""
    while True:
        ip = kubectl(env, "get", "pod", pod, "-n", namespace, "-o", "jsonpath={.status.podIP}").stdout.strip()
        if ip:
            break
        assert time.monotonic() < deadline, f"client pod {pod} got no IP"
        time.sleep(0.2)
    if kubectl(env, "get", "networkpolicy", "-n", namespace, "-o", "name").stdout.strip():
        for node in node_containers(env):
            while not any(ip in line.split() for line in subprocess.run(
                    ["docker", "exec", node, "ipset", "save"], capture_output=True, text=True).stdout.splitlines()):
                assert time.monotonic() < deadline, f"kube-router on {node} never added client {pod} ({ip})"
                time.sleep(0.2)
    # the IP may be reported before the container runs (a slow start): retry the release until it lands
    while kubectl(env, "exec", pod, "-n", namespace, "--", "touch", "/tmp/go", check=False).returncode != 0:
        assert time.monotonic() < deadline, f"client pod {pod} could not be released"
        time.sleep(0.2)


def probe_script(targets: list[tuple[str, int]]) -> str:
    """For each host:port, print `host:port open` when an HTTP GET answers 200, else `host:port closed`."""
    lines = []
    for host, port in targets:
        t = f"{host}:{port}"
        lines.append(f"if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 4 {host} {port} 2>/dev/null | grep -q '200 OK'; "
                     f"then echo {shlex.quote(t)} open; else echo {shlex.quote(t)} closed; fi")
    return "\n".join(lines)


# --- the shop on a real kubelet ----------------------------------------------------------------------------

CONTAINER_WORKLOADS = ("web", "api", "payments")


def small_shop(directory: Path) -> Path:
    """examples/shop.yaml with every CPU request at 50m: the kind node is this 2-core machine, and the control
    plane already requests about 1 CPU of it (with the example's requests, payments is Insufficient cpu)."""
    stack = yaml.safe_load(SHOP.read_text())
    for w in stack["spec"]["workloads"]:
        w["resources"]["cpu"] = "50m"
    path = directory / "shop.yaml"
    path.write_text(yaml.safe_dump(stack, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def shop(kind: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The shop applied once: images loaded into the node by apply itself, container workloads rolled out."""
    path = small_shop(tmp_path_factory.mktemp("shop"))
    t0 = time.monotonic()
    # --no-wait: the sandboxed plugin needs a node with hybridorch.dev/virtualization and a sandbox runtime, and
    # the VM a KubeVirt controller; the container workloads are awaited below, through their readiness probes
    result = hybridorch("apply", str(path), "--namespace-prefix", PREFIX, "--no-wait", env=kind, timeout=600)
    for name, ns in (("web", "shop"), ("api", "shop"), ("payments", "payments")):
        kubectl(kind, "rollout", "status", f"deployment/{name}", "-n", PREFIX + ns, "--timeout=180s", timeout=200)
    yield {"apply": result, "seconds": time.monotonic() - t0, "path": str(path)}
    hybridorch("delete", str(path), "--namespace-prefix", PREFIX, env=kind, check=False)


def test_apply_loads_the_local_image_into_the_kind_node(kind: dict[str, str], shop: dict[str, Any]) -> None:
    ref = shop_image()
    err = shop["apply"].stderr
    assert f"image {ref}: loaded (into " in err or f"image {ref}: loaded (already on " in err, err
    # progress on stderr: a line per workload whose objects the API server took (--no-wait: no ready lines)
    for name in ("web", "api", "recommender-plugin", "payments", "ledger-vm"):
        assert f"] {name}: applied (" in err, err
    for node in node_containers():
        out = subprocess.run(["docker", "exec", node, "crictl", "inspecti", "-o", "json", ref], capture_output=True,
                             text=True, check=True).stdout
        local = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", ref], capture_output=True, text=True,
                               check=True).stdout.strip()
        assert json.loads(out)["status"]["id"] == local
    # a second apply finds it there and does not load it again
    again = hybridorch("apply", shop["path"], "--namespace-prefix", PREFIX, "--no-wait", env=kind).stderr
    assert f"image {ref}: loaded (already on {len(node_containers())} node(s) of kind cluster {NAME})" in again, again


OWN_IMAGE = "e2e-own/page:dev"   # a user's own build, never pushed anywhere
OWN_STACK = """apiVersion: hybridorch.dev/v1alpha1
kind: Stack
metadata: {{name: own}}
spec:
  workloads:
    - {{name: front, image: {image}, tenant: own-a, trust: trusted, ports: [8080],
       command: [/bin/busybox, httpd, -f, -p, "8080", -h, /www], resources: {{cpu: 20m, memory: 32Mi}}}}
    - {{name: back, image: {image}, tenant: own-b, trust: trusted, ports: [8080],
       command: [/bin/busybox, httpd, -f, -p, "8080", -h, /www], resources: {{cpu: 20m, memory: 32Mi}}}}
"""


def test_a_users_own_local_image_reaches_the_kind_node(kind: dict[str, str], tmp_path: Path) -> None:
    """`docker build -t myapp:dev` and a two-tenant stack of it: apply loads it into the node (no registry has
    it, so without that the pods end in ErrImagePull) and both workloads get Ready; a registry image the engine
    does not hold is left to its registry."""
    from hybridorch.core.images import BUSYBOX_PATHS

    context = tmp_path / "image"
    (context / "www").mkdir(parents=True)
    (context / "www" / "index.html").write_text("built by the user\n")
    busybox = next(p for p in BUSYBOX_PATHS if Path(p).exists())
    (context / "busybox").write_bytes(Path(busybox).read_bytes())
    (context / "busybox").chmod(0o755)
    (context / "Dockerfile").write_text("FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n")
    subprocess.run(["docker", "build", "-q", "-t", OWN_IMAGE, str(context)], check=True, capture_output=True)
    path = tmp_path / "own.yaml"
    path.write_text(OWN_STACK.format(image=OWN_IMAGE))
    try:
        result = hybridorch("apply", str(path), "--namespace-prefix", PREFIX, "--timeout", "240", env=kind,
                            timeout=400)
        assert f"image {OWN_IMAGE}: loaded (into " in result.stderr, result.stderr
        assert "front: ready" in result.stderr and "back: ready" in result.stderr, result.stderr
        for node in node_containers():
            held = subprocess.run(["docker", "exec", node, "crictl", "inspecti", "-o", "json", OWN_IMAGE],
                                  capture_output=True, text=True)
            assert held.returncode == 0, held.stderr
    finally:
        hybridorch("delete", str(path), "--namespace-prefix", PREFIX, env=kind, check=False)
        subprocess.run(["docker", "rmi", "-f", OWN_IMAGE], capture_output=True)


def test_container_workloads_are_ready_on_a_real_kubelet(kind: dict[str, str], shop: dict[str, Any]) -> None:
    for name, ns in (("web", "shop"), ("api", "shop"), ("payments", "payments")):
        pods = json.loads(kubectl(kind, "get", "pods", "-n", PREFIX + ns, "-l", f"hybridorch.dev/workload={name}",
                                  "-o", "json").stdout)["items"]
        assert pods, name
        for pod in pods:
            ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
            assert ready["Ready"] == "True", (name, pod["status"])
            # a real container runtime ran it: containerd's ID, a start time, the image loaded by apply
            st = pod["status"]["containerStatuses"][0]
            assert st["containerID"].startswith("containerd://") and st["state"]["running"]["startedAt"]
            assert st["image"].endswith(shop_image().split("/", 1)[1])
    # status reads the same through the kubernetes client
    status = {s["name"]: s for s in json.loads(hybridorch("status", shop["path"], "--target", "kubernetes", "-o",
                                                           "json", env=kind).stdout)}
    assert all(status[name]["state"] == "ready" for name in CONTAINER_WORKLOADS), status


def test_the_page_is_served_through_the_service_to_a_client_pod(kind: dict[str, str], shop: dict[str, Any]) -> None:
    out = run_client(kind, PREFIX + "shop",
                     "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 web 8080")
    assert "200 OK" in out and "<title>Hybrid shop</title>" in out and " on web-" in out, out   # a web pod answered


def probe_until(env: dict[str, str], namespace: str, targets: list[tuple[str, int]], expected: list[str],
                timeout: float = 60) -> list[str]:
    """Probe `targets` from a pod in `namespace` until the result is `expected` (the firewall applies a change of
    pods or policies within seconds, not at once) or `timeout` passes; return the last result."""
    deadline = time.monotonic() + timeout
    while True:
        seen = run_client(env, namespace, probe_script(targets)).split("\n")[:len(targets)]
        if seen == expected or time.monotonic() > deadline:
            return seen
        time.sleep(2)


def test_tenants_are_isolated_by_the_rendered_network_policies(kind: dict[str, str], shop: dict[str, Any]) -> None:
    # the enforcer runs: kube-router's firewall (iptables + ipset; the kernel has no nft queue for
    # kube-network-policies), and same-bridge pod traffic passes the node's iptables FORWARD chain
    kubectl(kind, "-n", "kube-system", "rollout", "status", "daemonset/kube-router", "--timeout=120s", timeout=130)
    ds = json.loads(kubectl(kind, "-n", "kube-system", "get", "daemonset/kube-router", "-o", "json").stdout)["status"]
    assert ds["numberReady"] == ds["desiredNumberScheduled"] == len(node_containers()), ds
    for node in node_containers():
        bridged = subprocess.run(["docker", "exec", node, "cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"],
                                 capture_output=True, text=True).stdout.strip()
        assert bridged == "1", f"{node}: bridge-nf-call-iptables={bridged!r}: bridged pod traffic bypasses iptables"
    web, api, pay = (f"web.{PREFIX}shop", 8080), (f"api.{PREFIX}shop", 8081), (f"payments.{PREFIX}payments", 8090)
    targets = [web, api, pay]

    def states(*words: str) -> list[str]:
        return [f"{h}:{p} {w}" for (h, p), w in zip(targets, words)]

    # a pod of tenant shop: its own Services, not payments'
    assert probe_until(kind, PREFIX + "shop", targets, states("open", "open", "closed")) == \
        states("open", "open", "closed")
    # a pod of tenant payments: its own Service only
    assert probe_until(kind, PREFIX + "payments", targets, states("closed", "closed", "open")) == \
        states("closed", "closed", "open")
    # a namespace hybridorch did not make reaches neither tenant
    outsider = "kind-outsider"
    kubectl(kind, "create", "namespace", outsider, check=False)
    restored = True
    try:
        assert probe_until(kind, outsider, targets, states("closed", "closed", "closed")) == \
            states("closed", "closed", "closed")
        # ... because of payments' policies: without them the same probe reaches payments (the network path
        # works and "closed" was the firewall), while shop's policies still keep the outsider out
        restored = False
        kubectl(kind, "delete", "networkpolicy", "--all", "-n", PREFIX + "payments")
        assert probe_until(kind, outsider, targets, states("closed", "closed", "open")) == \
            states("closed", "closed", "open")
        # apply puts the policies back and the firewall closes the port again
        hybridorch("apply", shop["path"], "--namespace-prefix", PREFIX, "--no-wait", env=kind)
        restored = True
        assert probe_until(kind, outsider, targets, states("closed", "closed", "closed")) == \
            states("closed", "closed", "closed")
    finally:
        if not restored:
            hybridorch("apply", shop["path"], "--namespace-prefix", PREFIX, "--no-wait", env=kind, check=False)
        kubectl(kind, "delete", "namespace", outsider, "--wait=false", check=False)


# --- failing workloads fail `apply` fast, with the pod's reason ---------------------------------------------

def failing_stack(name: str, workload: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "hybridorch.dev/v1alpha1", "kind": "Stack", "metadata": {"name": name},
            "spec": {"workloads": [{"name": "broken", "trust": "trusted", **workload}]}}


@pytest.mark.parametrize("name,workload,reasons,logs", [
    ("e2e-kind-crash", {"image": "hybridorch.local/httpd:1",
                        "command": ["sh", "-c", "echo starting up; echo 'fatal: no config' >&2; exit 3"]},
     ("CrashLoopBackOff",), "starting up | fatal: no config"),
    ("e2e-kind-noimage", {"image": "registry.invalid/hybridorch/missing:1"}, ("ErrImagePull", "ImagePullBackOff"),
     None),
], ids=["crash", "missing-image"])
def test_a_failing_workload_fails_apply_fast_with_the_pods_reason(kind: dict[str, str], stack_file: Any, name: str,
                                                                  workload: dict[str, Any], reasons: tuple[str, ...],
                                                                  logs: str | None) -> None:
    path = stack_file(failing_stack(name, workload))
    try:
        t0 = time.monotonic()
        result = hybridorch("apply", path, "--timeout", "240", env=kind, check=False)
        took = time.monotonic() - t0
        assert result.returncode == 4, result.stderr
        assert "Traceback" not in result.stderr
        error = [ln for ln in result.stderr.splitlines() if ln.strip()][-1]
        assert error.startswith("error: workload broken failed: pod broken-"), error
        assert any(f": {r}: " in error for r in reasons), error
        if logs:
            # stdout and stderr are separate pipes: the runtime may record the two lines in either order
            shown = error.split("last log lines: ", 1)[-1].split("; see ", 1)[0].split(" | ")
            assert sorted(shown) == sorted(logs.split(" | ")), error
        assert took < 90, f"{took:.0f}s: not fail-fast (timeout was 240s)"
    finally:
        hybridorch("delete", path, env=kind, check=False)
