"""End-to-end tests of `hybridorch apply/status/delete --target kubernetes` against a real kube-apiserver.

The cluster (e2e/cluster.sh: etcd, kube-apiserver, controller-manager and scheduler built from source, kwok
faking the nodes, KubeVirt's CRDs) is started once per session or reused; KUBECONFIG and HOME are isolated.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from e2e.conftest import ROOT, hybridorch, require

pytestmark = pytest.mark.e2e

CLUSTER = ROOT / "e2e" / "k8s" / "cluster.py"
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml")
                  if (yaml.safe_load(p.read_text()) or {}).get("kind") == "Stack")
PREFIX = "e2e-"   # namespace prefix of the examples applied here, so they never meet a user's namespaces
TIMINGS: dict[str, float] = {}


def cluster_cmd(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CLUSTER), *args], capture_output=True, text=True, timeout=timeout)


def binaries_built() -> bool:
    out = subprocess.run(["bash", str(ROOT / "e2e" / "k8s" / "build.sh"), "--print-dir"], capture_output=True,
                         text=True).stdout.strip()
    return bool(out) and (Path(out).parent / ".complete").exists()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment (KUBECONFIG, HOME, kubectl) for a running cluster: reused when up, else started and stopped."""
    running = cluster_cmd("status").returncode == 0
    started = False
    if not running:
        require(binaries_built(), "Kubernetes binaries not built: run e2e/setup.d/30-k8s.sh (about 20 min once)")
        t0 = time.monotonic()
        proc = cluster_cmd("up", "--provider", "local")
        assert proc.returncode == 0, f"e2e/cluster.sh up failed:\n{proc.stderr[-3000:]}"
        TIMINGS["cluster start"] = time.monotonic() - t0
        started = True
    else:
        proc = cluster_cmd("up")  # makes sure CRDs and nodes are in place; cheap when they are
        assert proc.returncode == 0, proc.stderr[-3000:]
    home = tmp_path_factory.mktemp("home")
    kubeconfig = home / "kubeconfig"
    shutil.copy(cluster_cmd("kubeconfig").stdout.strip(), kubeconfig)
    kubectl = str(Path(subprocess.run(["bash", str(ROOT / "e2e" / "k8s" / "build.sh"), "--print-dir"],
                                      capture_output=True, text=True).stdout.strip()) / "kubectl")
    env = {"KUBECONFIG": str(kubeconfig), "HOME": str(home), "HYBRIDORCH_KUBECTL": kubectl}
    yield env
    for stack in ("shop", "legacy", "soc-rig"):
        hybridorch("delete", str(ROOT / "examples" / f"{stack}.yaml"), env=env, check=False)
    if TIMINGS:
        print("\n[k8s timings] " + ", ".join(f"{k}: {v:.1f}s" for k, v in TIMINGS.items()), file=sys.stderr)
    if started:
        cluster_cmd("stop")


def kubectl(env: dict[str, str], *args: str, stdin: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([env["HYBRIDORCH_KUBECTL"], *args], input=stdin, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)
    if check:
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc


def get(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    return json.loads(kubectl(env, "get", *args, "-o", "json").stdout)["items"]


def plan_of(path: str) -> dict[str, Any]:
    return json.loads(hybridorch("plan", path, "-o", "json").stdout)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def backend(cluster: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    for k, v in cluster.items():
        monkeypatch.setenv(k, v)
    from hybridorch.backends.kubernetes import KubernetesBackend

    return KubernetesBackend()


# --- every example is valid for the real API server -------------------------------------------------------

@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_passes_server_side_dry_run(example: Path, backend: Any, cluster: dict[str, str]) -> None:
    from hybridorch import api

    rendered = api.render(str(example), target="kubernetes", namespace_prefix="e2e-dry-")
    assert rendered.documents
    backend.check(rendered)   # raises ApplyRejected naming the object if the server refuses anything
    # the dry run leaves nothing behind, not even the namespaces it needed
    namespaces = {d["metadata"]["name"] for d in rendered.documents if d["kind"] == "Namespace"}
    left = [n["metadata"]["name"] for n in get(cluster, "namespaces")]
    assert not namespaces & set(left)


# --- apply, roll out, re-apply, status, delete ---------------------------------------------------------

EXPECTED_KIND = {"container": "Deployment", "sandboxed": "Deployment", "vm": "VirtualMachine",
                 "nested": "VirtualMachine"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_apply_example_creates_the_kinds_of_each_runtime_and_rolls_out(example: Path,
                                                                        cluster: dict[str, str]) -> None:
    plan = plan_of(str(example))
    t0 = time.monotonic()
    result = hybridorch("apply", str(example), "--namespace-prefix", PREFIX, "--timeout", "180", env=cluster)
    TIMINGS[f"apply-to-ready {example.stem}"] = time.monotonic() - t0
    stack = plan["stack"]
    objects = get(cluster, "deployments,statefulsets,virtualmachines", "-A", "-l",
                  f"hybridorch.dev/stack={stack}")
    by_workload: dict[str, list[dict[str, Any]]] = {}
    for o in objects:
        by_workload.setdefault(o["metadata"]["labels"]["hybridorch.dev/workload"], []).append(o)
    for p in plan["placements"]:
        name, runtime = p["workload"], p["runtime"]
        kinds = {o["kind"] for o in by_workload.get(name, [])}
        expected = "StatefulSet" if runtime in ("container", "sandboxed") and kinds == {"StatefulSet"} \
            else EXPECTED_KIND[runtime]
        assert kinds == {expected}, f"{name} ({runtime}): {kinds}"
        for o in by_workload[name]:
            assert o["metadata"]["namespace"] == PREFIX + p["tenant"]
            pod = o["spec"]["template"]["spec"]
            assert pod["nodeSelector"]["kubernetes.io/arch"] == p["host"]["arch"]
            if runtime == "sandboxed":
                assert pod["runtimeClassName"] == "hybridorch-kata"
            elif o["kind"] != "VirtualMachine":
                assert "runtimeClassName" not in pod
            if o["kind"] == "Deployment":
                # kwok's fake kubelet marks pods ready: the rollout really completed
                assert o["status"].get("readyReplicas") == o["spec"]["replicas"], o["status"]
    if any(p["runtime"] == "sandboxed" for p in plan["placements"]):
        rc = get(cluster, "runtimeclasses", "-l", f"hybridorch.dev/stack={stack}")
        assert [r["metadata"]["name"] for r in rc] == ["hybridorch-kata"]
    # every pod landed on a node whose labels satisfy its placement (sandboxed ones on KVM nodes)
    nodes = {n["metadata"]["name"]: n["metadata"]["labels"] for n in get(cluster, "nodes")}
    for pod in get(cluster, "pods", "-A", "-l", f"hybridorch.dev/stack={stack}"):
        labels = nodes[pod["spec"]["nodeName"]]
        for key, value in pod["spec"]["nodeSelector"].items():
            assert labels.get(key) == value, (pod["metadata"]["name"], key)
        assert pod["status"]["phase"] == "Running"
    # the CLI's table names every workload
    for p in plan["placements"]:
        assert p["workload"] in result.stdout

    # re-applying changes nothing: kubectl diff of the rendered stream is empty
    rendered = hybridorch("render", str(example), "--namespace-prefix", PREFIX).stdout
    diff = kubectl(cluster, "diff", "--server-side", "--field-manager=hybridorch", "--force-conflicts", "-f", "-",
                   stdin=rendered, check=False)
    assert diff.returncode == 0 and diff.stdout == "", diff.stdout[:2000]
    before = {o["metadata"]["uid"]: o["metadata"]["resourceVersion"] for o in objects}
    hybridorch("apply", str(example), "--namespace-prefix", PREFIX, "--no-wait", env=cluster)
    after = get(cluster, "deployments,statefulsets,virtualmachines", "-A", "-l", f"hybridorch.dev/stack={stack}")
    assert {o["metadata"]["uid"]: o["metadata"]["resourceVersion"] for o in after} == before

    status = json.loads(hybridorch("status", str(example), "--target", "kubernetes", "-o", "json",
                                   env=cluster).stdout)
    states = {s["name"]: s["state"] for s in status}
    for p in plan["placements"]:
        assert states[p["workload"]] in (("ready",) if EXPECTED_KIND[p["runtime"]] == "Deployment"
                                         else ("pending", "ready")), status

    out = hybridorch("delete", str(example), env=cluster)
    assert "Namespace" in out.stdout or "Namespace" in out.stderr
    left = get(cluster, "all,namespaces,virtualmachines,runtimeclasses", "-A", "-l", f"hybridorch.dev/stack={stack}")
    assert left == []
    status = json.loads(hybridorch("status", str(example), "--target", "kubernetes", "-o", "json",
                                   env=cluster).stdout)
    assert {s["state"] for s in status} == {"absent"}


# --- prune -------------------------------------------------------------------------------------------------

def two_workloads(name: str, with_second: bool = True) -> dict[str, Any]:
    workloads = [{"name": "keep", "image": "hybridorch.local/httpd:1", "ports": [8080], "trust": "trusted"}]
    if with_second:
        workloads.append({"name": "gone", "image": "hybridorch.local/httpd:1", "ports": [8081], "trust": "trusted"})
    return {"apiVersion": "hybridorch.dev/v1alpha1", "kind": "Stack", "metadata": {"name": name},
            "spec": {"workloads": workloads}}


def test_removing_a_workload_prunes_it_and_nothing_else(cluster: dict[str, str], stack_file: Any) -> None:
    first = stack_file(two_workloads("e2e-prune"), "prune.yaml")
    other = stack_file(two_workloads("e2e-neighbour"), "neighbour.yaml")
    try:
        hybridorch("apply", first, env=cluster)
        hybridorch("apply", other, env=cluster)
        # a user's own object in our namespace, and one that merely looks like ours
        kubectl(cluster, "create", "configmap", "users-own", "-n", "e2e-prune")
        kubectl(cluster, "create", "configmap", "lookalike", "-n", "e2e-prune")
        kubectl(cluster, "label", "configmap", "lookalike", "-n", "e2e-prune", "hybridorch.dev/stack=e2e-other")
        keep_uid = get(cluster, "deployments", "-n", "e2e-prune", "--field-selector", "metadata.name=keep")[0][
            "metadata"]["uid"]

        Path(first).write_text(yaml.safe_dump(two_workloads("e2e-prune", with_second=False)))
        hybridorch("apply", first, env=cluster)

        names = {(o["kind"], o["metadata"]["name"]) for o in get(cluster, "deployments,services,configmaps",
                                                                  "-n", "e2e-prune")}
        assert ("Deployment", "gone") not in names and ("Service", "gone") not in names
        assert {("Deployment", "keep"), ("Service", "keep"), ("ConfigMap", "users-own"),
                ("ConfigMap", "lookalike")} <= names
        assert get(cluster, "deployments", "-n", "e2e-prune", "--field-selector", "metadata.name=keep")[0][
            "metadata"]["uid"] == keep_uid
        # the neighbouring stack still has both of its workloads
        assert {o["metadata"]["name"] for o in get(cluster, "deployments", "-n", "e2e-neighbour")} == {"keep", "gone"}
    finally:
        deleted = hybridorch("delete", first, env=cluster, check=False)
        hybridorch("delete", other, env=cluster, check=False)
    # the user's objects keep their namespace, and the output says so; the neighbour's namespace is gone
    assert "kept Namespace e2e-prune: it holds objects hybridorch did not make: ConfigMap e2e-prune/lookalike, " \
        "ConfigMap e2e-prune/users-own" in deleted.stdout, deleted.stdout
    assert {c["metadata"]["name"] for c in get(cluster, "configmaps", "-n", "e2e-prune")} >= {"users-own", "lookalike"}
    kubectl(cluster, "delete", "namespace", "e2e-prune", "--wait=false")
    assert [n["metadata"]["name"] for n in get(cluster, "namespaces", "-l", "hybridorch.dev/stack in (e2e-prune,e2e-neighbour)")
            if not n["metadata"].get("deletionTimestamp")] == []


# --- delete keeps what hybridorch did not make, and data -------------------------------------------------

def wait_for(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f}s"
        time.sleep(0.5)


def test_delete_keeps_a_namespace_holding_a_users_object_and_names_it(cluster: dict[str, str],
                                                                      stack_file: Any) -> None:
    path = stack_file(two_workloads("e2e-foreign", with_second=False))
    try:
        hybridorch("apply", path, env=cluster)
        kubectl(cluster, "create", "configmap", "mine", "-n", "e2e-foreign", "--from-literal=k=v")
        out = hybridorch("delete", path, env=cluster).stdout
        assert "deleted Deployment e2e-foreign/keep" in out and "deleted Service e2e-foreign/keep" in out, out
        assert "kept Namespace e2e-foreign: it holds objects hybridorch did not make: ConfigMap e2e-foreign/mine; " \
            "remove it with: kubectl delete namespaces e2e-foreign" in out, out
        assert "deleted Namespace" not in out
        assert get(cluster, "configmaps", "-n", "e2e-foreign", "--field-selector", "metadata.name=mine")[0][
            "data"] == {"k": "v"}
        assert get(cluster, "deployments,services", "-n", "e2e-foreign") == []
        # once the user's object is gone, the namespace hybridorch made goes with the next delete
        kubectl(cluster, "delete", "configmap", "mine", "-n", "e2e-foreign")
        out = hybridorch("delete", path, env=cluster).stdout
        assert "deleted Namespace e2e-foreign" in out and "kept" not in out, out
        assert kubectl(cluster, "get", "namespace", "e2e-foreign", check=False).returncode != 0
    finally:
        hybridorch("delete", path, env=cluster, check=False)
        kubectl(cluster, "delete", "namespace", "e2e-foreign", "--ignore-not-found", "--wait=false")


def test_a_statefulsets_claim_outlives_delete_unless_delete_data(cluster: dict[str, str], stack_file: Any) -> None:
    stack = two_workloads("e2e-claims", with_second=False)
    stack["spec"]["workloads"][0]["volumes"] = [{"name": "data", "mountPath": "/data", "size": "1Gi"}]
    path = stack_file(stack)
    ns, claim = "e2e-claims", "data-keep-0"
    try:
        # no storage provisioner here: the claim stays Pending and so does the pod, hence --no-wait
        hybridorch("apply", path, "--no-wait", env=cluster)
        pvc = wait_for("the StatefulSet controller creates the claim", lambda: get(
            cluster, "persistentvolumeclaims", "-n", ns, "--field-selector", f"metadata.name={claim}"))[0]
        pvc_uid = pvc["metadata"]["uid"]
        # the template retains claims (whenDeleted: Retain), so plain kubectl users keep data too: the StatefulSet
        # is not the claim's owner, and the claim carries the stack's labels, by which --delete-data finds it
        assert not pvc["metadata"].get("ownerReferences"), pvc["metadata"]
        assert pvc["metadata"]["labels"]["hybridorch.dev/stack"] == "e2e-claims", pvc["metadata"]
        out = hybridorch("delete", path, env=cluster).stdout
        assert "deleted StatefulSet e2e-claims/keep" in out, out
        assert f"kept PersistentVolumeClaim {ns}/{claim}: data (kept without --delete-data); remove it with: " \
            f"kubectl delete persistentvolumeclaims -n {ns} {claim}" in out, out
        assert f"kept Namespace {ns}: it holds the data kept above" in out, out
        assert f"data kept: `hybridorch delete {path} --delete-data` removes it too" in out, out
        # the garbage collector has dealt with the StatefulSet's dependents (its pod) and left the claim alone
        wait_for("the StatefulSet's pod is collected", lambda: get(cluster, "pods", "-n", ns) == [])
        time.sleep(2)
        left = get(cluster, "persistentvolumeclaims", "-n", ns)
        assert [(c["metadata"]["uid"], c["metadata"].get("deletionTimestamp")) for c in left] == [(pvc_uid, None)]

        out = hybridorch("delete", path, "--delete-data", env=cluster).stdout
        assert f"deleted PersistentVolumeClaim {ns}/{claim}" in out and f"deleted Namespace {ns}" in out, out
        assert "kept" not in out, out
        assert kubectl(cluster, "get", "namespace", ns, check=False).returncode != 0
    finally:
        hybridorch("delete", path, "--delete-data", env=cluster, check=False)


# --- nothing is applied when the server rejects one object ---------------------------------------------

BAD_TEMPLATE_PATCH = ("    matchLabels: {{ w.selector }}",
                      '    matchLabels: {{ {"app": "mismatch"} if w.name == "bad" else w.selector }}')


def test_one_invalid_object_applies_nothing(cluster: dict[str, str], stack_file: Any, tmp_path: Path) -> None:
    # a user template that makes one Deployment's selector miss its pod labels: valid YAML and valid to the
    # schema, rejected only by the API server's own validation
    templates = tmp_path / "templates" / "kubernetes"
    templates.mkdir(parents=True)
    text = (ROOT / "templates" / "kubernetes" / "workload.yaml.j2").read_text()
    assert BAD_TEMPLATE_PATCH[0] in text
    (templates / "workload.yaml.j2").write_text(text.replace(*BAD_TEMPLATE_PATCH))
    stack = two_workloads("e2e-atomic")
    stack["spec"]["workloads"][1]["name"] = "bad"
    path = stack_file(stack)
    result = hybridorch("apply", path, "--templates", str(tmp_path / "templates"), env=cluster, check=False)
    assert result.returncode == 4
    line = one_line(result.stderr)
    assert "Deployment e2e-atomic/bad rejected by the API server" in line and "selector" in line, line
    assert line.endswith("nothing was applied")
    assert get(cluster, "namespaces", "-l", "hybridorch.dev/stack=e2e-atomic") == []
    assert kubectl(cluster, "get", "namespace", "e2e-atomic", check=False).returncode != 0


# --- one-line errors for a broken environment ------------------------------------------------------------

def test_wrong_context_gives_one_line(cluster: dict[str, str], stack_file: Any) -> None:
    path = stack_file(two_workloads("e2e-ctx"))
    result = hybridorch("apply", path, "--context", "no-such-context", env=cluster, check=False)
    assert result.returncode == 4
    assert "kubeconfig has no context 'no-such-context'" in one_line(result.stderr)


def test_missing_kubeconfig_gives_one_line(cluster: dict[str, str], stack_file: Any, tmp_path: Path) -> None:
    path = stack_file(two_workloads("e2e-nokc"))
    env = {**cluster, "KUBECONFIG": str(tmp_path / "none")}
    result = hybridorch("status", path, "--target", "kubernetes", env=env, check=False)
    assert result.returncode == 4
    assert "no Kubernetes cluster configured" in one_line(result.stderr)


def test_rbac_denial_gives_one_line(cluster: dict[str, str], stack_file: Any, tmp_path: Path) -> None:
    ns = "e2e-rbac-viewer"
    kubectl(cluster, "create", "namespace", ns)
    try:
        kubectl(cluster, "create", "serviceaccount", "viewer", "-n", ns)
        kubectl(cluster, "create", "clusterrolebinding", "e2e-rbac-viewer", "--clusterrole=view",
                f"--serviceaccount={ns}:viewer")
        token = kubectl(cluster, "create", "token", "viewer", "-n", ns, "--duration=10m").stdout.strip()
        config = yaml.safe_load(Path(cluster["KUBECONFIG"]).read_text())
        config["users"] = [{"name": "viewer", "user": {"token": token}}]
        for c in config["contexts"]:
            c["context"]["user"] = "viewer"
        viewer = tmp_path / "viewer-kubeconfig"
        viewer.write_text(yaml.safe_dump(config))
        path = stack_file(two_workloads("e2e-rbac"))
        result = hybridorch("apply", path, env={**cluster, "KUBECONFIG": str(viewer)}, check=False)
        assert result.returncode == 4
        line = one_line(result.stderr)
        assert line.startswith("error: permission denied: system:serviceaccount:e2e-rbac-viewer:viewer may not")
        assert "RBAC" in line
    finally:
        kubectl(cluster, "delete", "clusterrolebinding", "e2e-rbac-viewer", "--ignore-not-found")
        kubectl(cluster, "delete", "namespace", ns, "--ignore-not-found")
    assert get(cluster, "namespaces", "-l", "hybridorch.dev/stack=e2e-rbac") == []


def test_missing_kubevirt_crd_gives_one_line_and_applies_nothing(cluster: dict[str, str], stack_file: Any,
                                                                  tmp_path: Path) -> None:
    stack = two_workloads("e2e-nocrd", with_second=False)
    stack["spec"]["workloads"].append({"name": "vm", "runtime": "vm", "ports": [22], "trust": "trusted",
                                       "resources": {"cpu": "1", "memory": "256Mi"}})
    path = stack_file(stack)
    kubectl(cluster, "delete", "crd", "virtualmachines.kubevirt.io")
    try:
        # a fresh HOME: kubectl's discovery cache must not remember the CRD just deleted
        fresh = tmp_path / "home"
        fresh.mkdir()
        result = hybridorch("apply", path, env={**cluster, "HOME": str(fresh)}, check=False)
        assert result.returncode == 4
        line = one_line(result.stderr)
        assert "does not know kind VirtualMachine (kubevirt.io/v1): install KubeVirt" in line, line
        assert get(cluster, "namespaces", "-l", "hybridorch.dev/stack=e2e-nocrd") == []
    finally:
        proc = cluster_cmd("up")   # puts the CRDs back
        assert proc.returncode == 0, proc.stderr[-2000:]


def test_stopped_api_server_gives_one_line(cluster: dict[str, str], stack_file: Any) -> None:
    path = stack_file(two_workloads("e2e-stopped"))
    stop = cluster_cmd("stop")
    assert stop.returncode == 0, stop.stderr
    try:
        t0 = time.monotonic()
        result = hybridorch("apply", path, env=cluster, check=False, timeout=120)
        assert time.monotonic() - t0 < 60   # fails fast, no long retry loop
        assert result.returncode == 4
        line = one_line(result.stderr)
        assert "cannot reach the Kubernetes API server at" in line and "start the cluster" in line, line
    finally:
        t0 = time.monotonic()
        start = cluster_cmd("start")
        TIMINGS["cluster restart"] = time.monotonic() - t0
        assert start.returncode == 0, start.stderr


# --- logs ---------------------------------------------------------------------------------------------------

def test_logs_come_through_the_api_server_from_each_pod(cluster: dict[str, str], stack_file: Any) -> None:
    sys.path.insert(0, str(CLUSTER.parent))
    from cluster import FAKE_LOG_LINES  # what kwok's fake kubelet serves as every container's log

    path = stack_file(two_workloads("e2e-logs", with_second=False))
    missing = hybridorch("logs", path, "keep", "--target", "kubernetes", env=cluster, check=False)
    assert missing.returncode == 4
    assert "workload keep is not in the cluster: apply the stack first" in one_line(missing.stderr)
    try:
        hybridorch("apply", path, env=cluster)
        pod = get(cluster, "pods", "-n", "e2e-logs", "-l", "hybridorch.dev/workload=keep")[0]["metadata"]["name"]
        out = hybridorch("logs", path, "keep", "--target", "kubernetes", env=cluster).stdout.splitlines()
        assert out == [f"[pod/{pod}/keep] {line}" for line in FAKE_LOG_LINES]
        last = hybridorch("logs", path, "keep", "--target", "kubernetes", "--tail", "1", env=cluster).stdout
        assert last.splitlines() == [f"[pod/{pod}/keep] {FAKE_LOG_LINES[-1]}"]
    finally:
        hybridorch("delete", path, env=cluster, check=False)


def test_a_runtimeclass_another_stack_uses_survives_delete(cluster: dict[str, str], stack_file: Any) -> None:
    stacks = []
    for name in ("e2e-sandbox-a", "e2e-sandbox-b"):
        stack = two_workloads(name, with_second=False)
        stack["spec"]["workloads"][0]["trust"] = "untrusted"   # -> sandboxed under the balanced policy
        stacks.append(stack_file(stack))
    try:
        for path in stacks:
            hybridorch("apply", path, env=cluster)
        assert get(cluster, "deployments", "-n", "e2e-sandbox-a")[0]["spec"]["template"]["spec"][
            "runtimeClassName"] == "hybridorch-kata"
        hybridorch("delete", stacks[1], env=cluster)   # b applied last: it carries the RuntimeClass's labels
        assert kubectl(cluster, "get", "runtimeclass", "hybridorch-kata", check=False).returncode == 0
        assert [d["metadata"]["name"] for d in get(cluster, "deployments", "-n", "e2e-sandbox-a")] == ["keep"]
        # the last stack to go takes the shared RuntimeClass, though its labels name the other stack
        hybridorch("delete", stacks[0], env=cluster)
        assert kubectl(cluster, "get", "runtimeclass", "hybridorch-kata", check=False).returncode != 0
    finally:
        for path in stacks:
            hybridorch("delete", path, env=cluster, check=False)
        kubectl(cluster, "delete", "runtimeclass", "hybridorch-kata", "--ignore-not-found")


# --- images the nodes cannot have, pods that cannot get ready: one line, before or instead of a long wait -------

def riscv_stack(name: str) -> dict[str, Any]:
    """A container workload for riscv64 nodes, of which the kwok cluster has none (unless a test adds one)."""
    return {"apiVersion": "hybridorch.dev/v1alpha1", "kind": "Stack", "metadata": {"name": name},
            "spec": {"hosts": [{"name": "rv", "os": "linux", "arch": "riscv64", "cpu": "8", "memory": "16Gi"}],
                     "workloads": [{"name": "board", "image": "hybridorch.local/httpd:1", "arch": "riscv64",
                                    "ports": [8080], "trust": "trusted"}]}}


def test_a_local_image_a_real_node_cannot_pull_is_one_line_before_anything_is_applied(
        cluster: dict[str, str], stack_file: Any) -> None:
    # a Node object without kwok's annotation stands for a real node (it reports no images); riscv64, so only this
    # test's pods could land on it and parallel tests on the shared cluster are unaffected
    node = "e2e-riscv64-real"
    kubectl(cluster, "apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": {
            "kubernetes.io/arch": "riscv64", "kubernetes.io/os": "linux", "kubernetes.io/hostname": node}}}))
    path = stack_file(riscv_stack("e2e-localimg"))
    try:
        t0 = time.monotonic()
        result = hybridorch("apply", path, env=cluster, check=False)
        took = time.monotonic() - t0
        assert result.returncode == 4, result.stderr
        line = one_line(result.stderr)
        assert line.startswith("error: image hybridorch.local/httpd:1-") and "(workload board)" in line, line
        assert f"node {node} of the current kubeconfig context cannot pull it: push it" in line, line
        assert line.endswith("nothing was applied"), line
        assert get(cluster, "namespaces", "-l", "hybridorch.dev/stack=e2e-localimg") == []
        assert took < 30, took
        # --no-load: the user says the nodes have it; the apply goes ahead (and the pod waits for a kubelet)
        hybridorch("apply", path, "--no-load", "--no-wait", env=cluster)
        assert [d["metadata"]["name"] for d in get(cluster, "deployments", "-n", "e2e-localimg")] == ["board"]
    finally:
        hybridorch("delete", path, env=cluster, check=False)
        kubectl(cluster, "delete", "node", node, "--ignore-not-found")


def test_an_unschedulable_pod_fails_the_apply_fast_with_the_schedulers_reason(cluster: dict[str, str],
                                                                             stack_file: Any) -> None:
    path = stack_file(riscv_stack("e2e-unsched"))
    try:
        t0 = time.monotonic()
        result = hybridorch("apply", path, "--timeout", "120", env=cluster, check=False)
        took = time.monotonic() - t0
        assert result.returncode == 4, result.stderr
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert "Traceback" not in result.stderr
        # progress: a line per workload as its state changes (the pod may fail before the Deployment is seen),
        # then the error
        assert all(ln.startswith("board: pending") for ln in lines[:-1]), lines
        error = lines[-1]
        assert error.startswith("error: workload board failed: pod board-"), error
        assert ": Unschedulable: 0/" in error and "node affinity/selector" in error, error
        assert "kubectl describe -n e2e-unsched pod board-" in error, error
        assert took < 30, f"{took:.1f}s: not fail-fast"
    finally:
        hybridorch("delete", path, env=cluster, check=False)
