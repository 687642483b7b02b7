"""End-to-end tests of `hybridorch apply/status/logs/delete --target kubernetes` on the session's real kind cluster
(e2e/conftest.py `kind_cluster`: `kind create cluster` from the locally built node image, a real kubelet and
containerd, KubeVirt's CRDs). Pods really run here: the node is this 2-CPU machine, about 0.9 CPU of which the
control plane requests, so the stacks applied here ask for 50m CPU per container. No KubeVirt controller runs
(offline, CRDs only): VMs are accepted objects, never booted, and the tests say so. The node image has no sandbox
runtime and no node is labelled hybridorch.dev/virtualization, so sandboxed pods stay Unschedulable (asserted).
The tests that need fake nodes or a stoppable API server run on kwok: e2e/test_kwok_fake_nodes.py.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.conftest import ROOT, error_lines, hybridorch, kube_get as get, kubectl, progress_lines, \
    reinstall_kubevirt_crds

pytestmark = pytest.mark.e2e

EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml")
                  if (yaml.safe_load(p.read_text()) or {}).get("kind") == "Stack")
PREFIX = "e2e-"   # namespace prefix of the examples applied here, so they never meet a user's namespaces
SMALL_CPU = "50m"   # per container: what fits beside the control plane on the 2-CPU kind node


@pytest.fixture
def cluster(kind_cluster: dict[str, str]) -> dict[str, str]:
    """The session's kind cluster: KUBECONFIG, HOME and kubectl (HYBRIDORCH_KUBECTL) for it."""
    return kind_cluster


def plan_of(path: str) -> dict[str, Any]:
    return json.loads(hybridorch("plan", path, "-o", "json").stdout)


def one_line(stderr: str) -> str:
    lines = error_lines(stderr)   # progress lines (images loaded, workload states) are not errors
    assert len(lines) == 1, f"expected one error line, got:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


def wait_for(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f}s"
        time.sleep(0.5)


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
# container workloads of the examples that cannot get Ready on any real kubelet, and why (the audit's example)
NEVER_READY = {("insecure", "debug-shell"): "declares port 22 (the exposed ssh the audit flags) while its image "
                                            "serves 8080, so its readiness probe never passes"}


def small_copy(example: Path, directory: Path) -> Path:
    """The example with SMALL_CPU per container (its policy file and image recipes beside it, as in examples/):
    the example's own requests (the shop's 1.25 CPU of containers) do not fit beside the control plane."""
    shutil.copytree(example.parent, directory, dirs_exist_ok=True)
    stack = yaml.safe_load(example.read_text())
    for w in stack["spec"]["workloads"]:
        if w.get("runtime") not in ("vm", "nested") and not w.get("containers") and "vm" not in w:
            w.setdefault("resources", {})["cpu"] = SMALL_CPU
    path = directory / example.name
    path.write_text(yaml.safe_dump(stack, sort_keys=False))
    return path


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_apply_example_creates_the_kinds_of_each_runtime_and_rolls_out(example: Path, cluster: dict[str, str],
                                                                        tmp_path: Path,
                                                                        cluster_timings: dict[str, float]) -> None:
    path = str(small_copy(example, tmp_path / "examples"))
    plan = plan_of(path)
    stack = plan["stack"]
    runtime = {p["workload"]: p["runtime"] for p in plan["placements"]}
    should_run = {w for w, r in runtime.items() if r == "container" and (stack, w) not in NEVER_READY}
    t0 = time.monotonic()
    # --no-wait, then wait for what can run here: apply's own wait would (rightly) fail on a sandboxed pod that no
    # node can take; that fail-fast is test_an_unschedulable_pod_fails_the_apply_fast_with_the_schedulers_reason
    result = hybridorch("apply", path, "--namespace-prefix", PREFIX, "--no-wait", env=cluster, timeout=600)

    def states() -> dict[str, dict[str, Any]]:
        return {s["name"]: s for s in json.loads(hybridorch("status", path, "--target", "kubernetes", "-o", "json",
                                                            env=cluster).stdout)}

    wait_for(f"{sorted(should_run)} ready on the kind node",
             lambda: all(states()[w]["state"] == "ready" for w in should_run), timeout=240)
    cluster_timings[f"apply-to-ready {example.stem}"] = time.monotonic() - t0
    objects = get(cluster, "deployments,statefulsets,virtualmachines", "-A", "-l", f"hybridorch.dev/stack={stack}")
    by_workload: dict[str, list[dict[str, Any]]] = {}
    for o in objects:
        by_workload.setdefault(o["metadata"]["labels"]["hybridorch.dev/workload"], []).append(o)
    for p in plan["placements"]:
        name, rt = p["workload"], p["runtime"]
        kinds = {o["kind"] for o in by_workload.get(name, [])}
        expected = "StatefulSet" if rt in ("container", "sandboxed") and kinds == {"StatefulSet"} \
            else EXPECTED_KIND[rt]
        assert kinds == {expected}, f"{name} ({rt}): {kinds}"
        for o in by_workload[name]:
            assert o["metadata"]["namespace"] == PREFIX + p["tenant"]
            pod = o["spec"]["template"]["spec"]
            assert pod["nodeSelector"]["kubernetes.io/arch"] == p["host"]["arch"]
            if rt == "sandboxed":
                assert pod["runtimeClassName"] == "hybridorch-kata"
            elif o["kind"] != "VirtualMachine":
                assert "runtimeClassName" not in pod
            if name in should_run:
                # a real kubelet ran the readiness probes: the rollout really completed
                assert o["status"].get("readyReplicas") == o["spec"]["replicas"], o["status"]
    if any(p["runtime"] == "sandboxed" for p in plan["placements"]):
        rc = get(cluster, "runtimeclasses", "-l", f"hybridorch.dev/stack={stack}")
        assert [r["metadata"]["name"] for r in rc] == ["hybridorch-kata"]
    nodes = {n["metadata"]["name"]: n for n in get(cluster, "nodes")}
    for pod in get(cluster, "pods", "-A", "-l", f"hybridorch.dev/stack={stack}"):
        workload = pod["metadata"]["labels"]["hybridorch.dev/workload"]
        if runtime[workload] == "sandboxed":
            # the RuntimeClass schedules sandboxed pods onto nodes labelled hybridorch.dev/virtualization, and no
            # node of this cluster has a sandbox runtime: the scheduler says so, nothing pretends it ran
            scheduled = {c["type"]: c for c in pod["status"].get("conditions", [])}["PodScheduled"]
            assert pod["status"]["phase"] == "Pending" and scheduled["reason"] == "Unschedulable", pod["status"]
            assert "hybridorch.dev/virtualization" not in nodes[next(iter(nodes))]["metadata"]["labels"]
            continue
        # every other pod runs on the kind node (its labels satisfy the placement) in containerd
        node = nodes[pod["spec"]["nodeName"]]
        assert node["spec"]["providerID"].startswith("kind://")
        for key, value in pod["spec"]["nodeSelector"].items():
            assert node["metadata"]["labels"].get(key) == value, (pod["metadata"]["name"], key)
        assert pod["status"]["phase"] == "Running", pod["status"]
        assert all(c["containerID"].startswith("containerd://") for c in pod["status"]["containerStatuses"])
        if (stack, workload) in NEVER_READY:
            assert not any(c["ready"] for c in pod["status"]["containerStatuses"]), NEVER_READY[(stack, workload)]
    # the CLI's table names every workload
    for p in plan["placements"]:
        assert p["workload"] in result.stdout

    # re-applying changes nothing: kubectl diff of the rendered stream is empty, no spec changes (generation)
    rendered = hybridorch("render", path, "--namespace-prefix", PREFIX).stdout
    diff = kubectl(cluster, "diff", "--server-side", "--field-manager=hybridorch", "--force-conflicts", "-f", "-",
                   stdin=rendered, check=False)
    assert diff.returncode == 0 and diff.stdout == "", diff.stdout[:2000]
    before = {o["metadata"]["uid"]: o["metadata"]["generation"] for o in objects}
    hybridorch("apply", path, "--namespace-prefix", PREFIX, "--no-wait", env=cluster)
    after = get(cluster, "deployments,statefulsets,virtualmachines", "-A", "-l", f"hybridorch.dev/stack={stack}")
    assert {o["metadata"]["uid"]: o["metadata"]["generation"] for o in after} == before

    status = states()
    for p in plan["placements"]:
        name = p["workload"]
        if name in should_run:
            assert status[name]["state"] == "ready", status[name]
        elif EXPECTED_KIND[p["runtime"]] == "VirtualMachine":
            # the API server accepted the VM; no KubeVirt controller runs here to boot it
            assert status[name]["state"] == "pending", status[name]
            assert status[name]["detail"] == "accepted; no KubeVirt controller in the cluster runs it", status[name]
        else:
            assert status[name]["state"] == "pending", status[name]

    out = hybridorch("delete", path, env=cluster, timeout=600)
    assert "Namespace" in out.stdout or "Namespace" in out.stderr
    left = get(cluster, "all,namespaces,virtualmachines,runtimeclasses", "-A", "-l", f"hybridorch.dev/stack={stack}")
    assert left == []
    status = json.loads(hybridorch("status", path, "--target", "kubernetes", "-o", "json", env=cluster).stdout)
    assert {s["state"] for s in status} == {"absent"}


# --- prune -------------------------------------------------------------------------------------------------

def two_workloads(name: str, with_second: bool = True) -> dict[str, Any]:
    """Busybox httpd workloads that really serve their declared port (the readiness probe checks it)."""
    small = {"cpu": SMALL_CPU, "memory": "32Mi"}
    workloads = [{"name": "keep", "image": "hybridorch.local/httpd:1", "ports": [8080], "trust": "trusted",
                  "resources": small}]
    if with_second:
        workloads.append({"name": "gone", "image": "hybridorch.local/httpd:1", "ports": [8081], "trust": "trusted",
                          "command": ["httpd", "-f", "-p", "8081", "-h", "/www"], "resources": small})
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
    ns, claim, pod = "e2e-claims", "data-keep-0", "keep-0"
    try:
        # the kind cluster's default StorageClass (`standard`) provisions a host-path volume: the claim binds and
        # the pod runs, so the data written below is real
        hybridorch("apply", path, env=cluster)
        pvc = get(cluster, "persistentvolumeclaims", "-n", ns, "--field-selector", f"metadata.name={claim}")[0]
        assert pvc["status"]["phase"] == "Bound", pvc["status"]
        pvc_uid = pvc["metadata"]["uid"]
        # the template retains claims (whenDeleted: Retain), so plain kubectl users keep data too: the StatefulSet
        # is not the claim's owner, and the claim carries the stack's labels, by which --delete-data finds it
        assert not pvc["metadata"].get("ownerReferences"), pvc["metadata"]
        assert pvc["metadata"]["labels"]["hybridorch.dev/stack"] == "e2e-claims", pvc["metadata"]
        # the volume is a host-path directory on the node, owned by root: the pod (uid 65534, read-only root) may
        # read it but not write it (fsGroup does not apply to host paths), so the proof is written on the node
        volume = get(cluster, "persistentvolumes", "--field-selector", f"metadata.name={pvc['spec']['volumeName']}")[0]
        node = get(cluster, "pods", "-n", ns)[0]["spec"]["nodeName"]   # the kind node container's name
        subprocess.run(["docker", "exec", node, "sh", "-c",
                        f"echo written-before-delete > {volume['spec']['hostPath']['path']}/proof"], check=True)
        assert kubectl(cluster, "exec", "-n", ns, pod, "--", "cat", "/data/proof").stdout == "written-before-delete\n"
        out = hybridorch("delete", path, env=cluster).stdout
        assert "deleted StatefulSet e2e-claims/keep" in out, out
        assert f"kept PersistentVolumeClaim {ns}/{claim}: data (kept without --delete-data); remove it with: " \
            f"kubectl delete persistentvolumeclaims -n {ns} {claim}" in out, out
        assert f"kept Namespace {ns}: it holds the data kept above" in out, out
        assert f"data kept: `hybridorch delete {path} --delete-data` removes it too" in out, out
        # the garbage collector has dealt with the StatefulSet's dependents (its pod, after the kubelet stopped it)
        # and left the claim alone
        wait_for("the StatefulSet's pod is collected", lambda: get(cluster, "pods", "-n", ns) == [], timeout=90)
        time.sleep(2)
        left = get(cluster, "persistentvolumeclaims", "-n", ns)
        assert [(c["metadata"]["uid"], c["metadata"].get("deletionTimestamp")) for c in left] == [(pvc_uid, None)]
        # applied again, the new pod mounts the same claim and finds the data
        hybridorch("apply", path, env=cluster)
        assert kubectl(cluster, "exec", "-n", ns, pod, "--", "cat", "/data/proof").stdout == "written-before-delete\n"
        assert get(cluster, "persistentvolumeclaims", "-n", ns)[0]["metadata"]["uid"] == pvc_uid

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
        reinstall_kubevirt_crds(cluster)


# --- logs ---------------------------------------------------------------------------------------------------

def test_logs_come_through_the_api_server_from_each_pod(cluster: dict[str, str], stack_file: Any) -> None:
    stack = two_workloads("e2e-logs", with_second=False)
    stack["spec"]["workloads"][0]["replicas"] = 2
    # what the containers really print (to stdout) before serving; busybox httpd without -v logs nothing more.
    # The image's httpd wrapper by its path: busybox sh would run its own httpd applet, which writes no page
    lines = ("keep starting", "serving on 8080")
    stack["spec"]["workloads"][0]["command"] = [
        "sh", "-c", f"echo '{lines[0]}'; echo '{lines[1]}'; exec /usr/local/bin/httpd -f -p 8080 -h /www"]
    path = stack_file(stack)
    missing = hybridorch("logs", path, "keep", "--target", "kubernetes", env=cluster, check=False)
    assert missing.returncode == 4
    assert "workload keep is not in the cluster: apply the stack first" in one_line(missing.stderr)
    try:
        hybridorch("apply", path, env=cluster)
        pods = sorted(p["metadata"]["name"] for p in get(cluster, "pods", "-n", "e2e-logs", "-l",
                                                         "hybridorch.dev/workload=keep"))
        assert len(pods) == 2, pods
        out = hybridorch("logs", path, "keep", "--target", "kubernetes", env=cluster).stdout.splitlines()
        # each pod's own log, named by its pod (the order of the pods is the tool's)
        assert sorted(out) == sorted(f"[pod/{pod}/keep] {line}" for pod in pods for line in lines), out
        for pod in pods:
            assert [ln for ln in out if ln.startswith(f"[pod/{pod}/")] == [f"[pod/{pod}/keep] {ln}" for ln in lines]
        last = hybridorch("logs", path, "keep", "--target", "kubernetes", "--tail", "1", env=cluster).stdout
        assert sorted(last.splitlines()) == [f"[pod/{pod}/keep] {lines[-1]}" for pod in pods], last
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
            # --no-wait: no node here has a sandbox runtime, so the sandboxed pods stay Unschedulable
            hybridorch("apply", path, "--no-wait", env=cluster)
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
    """A container workload for riscv64 nodes, of which neither cluster has any (unless a test adds one)."""
    return {"apiVersion": "hybridorch.dev/v1alpha1", "kind": "Stack", "metadata": {"name": name},
            "spec": {"hosts": [{"name": "rv", "os": "linux", "arch": "riscv64", "cpu": "8", "memory": "16Gi"}],
                     "workloads": [{"name": "board", "image": "hybridorch.local/httpd:1", "arch": "riscv64",
                                    "ports": [8080], "trust": "trusted", "resources": {"cpu": SMALL_CPU}}]}}


def test_an_unschedulable_pod_fails_the_apply_fast_with_the_schedulers_reason(cluster: dict[str, str],
                                                                             stack_file: Any) -> None:
    path = stack_file(riscv_stack("e2e-unsched"))
    try:
        t0 = time.monotonic()
        result = hybridorch("apply", path, "--timeout", "120", env=cluster, check=False)
        took = time.monotonic() - t0
        assert result.returncode == 4, result.stderr
        assert "Traceback" not in result.stderr
        # progress: a line per workload as its state changes (the pod may fail before the Deployment is seen),
        # then the error
        states = [ln.split("] ", 1)[1] for ln in progress_lines(result.stderr) if "] image " not in ln]
        assert all(s.startswith(("board: applied", "board: pending", "board: failed")) for s in states), states
        lines = error_lines(result.stderr)
        assert len(lines) == 1, result.stderr
        error = lines[0]
        assert error.startswith("error: workload board failed: pod board-"), error
        assert ": Unschedulable: 0/" in error and "node affinity/selector" in error, error
        assert "kubectl describe -n e2e-unsched pod board-" in error, error
        assert took < 30, f"{took:.1f}s: not fail-fast"
    finally:
        hybridorch("delete", path, env=cluster, check=False)
