"""End-to-end test of the two-worker kind cluster (e2e/conftest.py `kind_two_workers`: `hybridorch-soc`, beside the
shared one-node cluster): both workers are Ready, a locally built FROM-scratch image loaded into every node runs
to completion as a Job pinned to each worker, with an address from its node's podCIDR, after resolving a name
through the cluster DNS (CoreDNS, which kind starts on the control-plane before the workers join: the query
crosses nodes).
"""
from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from e2e.conftest import SOC_CLUSTER, SOC_WORKERS, kube_get, kubectl

pytestmark = pytest.mark.e2e

IMAGE = "hybridorch.local/e2e-workers:1"


def job(name: str, node: str) -> dict[str, object]:
    """A Job whose one pod runs on `node` (by its hostname label, through the scheduler, as a board's Job would)."""
    script = "nslookup kubernetes.default.svc.cluster.local >/dev/null && echo \"done on $NODE\""
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "nodeSelector": {"kubernetes.io/hostname": node},
                "containers": [{"name": "run", "image": IMAGE, "imagePullPolicy": "Never",
                                "command": ["/bin/busybox", "sh", "-c", script],
                                "env": [{"name": "NODE",
                                         "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}]}}}}


def test_a_job_pinned_to_each_worker_completes(kind_two_workers: dict[str, str], tmp_path: Path) -> None:
    from hybridorch.backends.kind import load_images
    from hybridorch.core.images import static_busybox

    env = kind_two_workers
    nodes = {n["metadata"]["name"]: n for n in kube_get(env, "nodes")}
    assert set(SOC_WORKERS) < set(nodes), sorted(nodes)
    for name in SOC_WORKERS:
        ready = [c["status"] for c in nodes[name]["status"]["conditions"] if c["type"] == "Ready"]
        assert ready == ["True"], (name, nodes[name]["status"]["conditions"])

    context = tmp_path / "image"
    context.mkdir()
    shutil.copy(static_busybox(), context / "busybox")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY busybox /bin/busybox\n")
    subprocess.run(["docker", "build", "-q", "-t", IMAGE, str(context)], check=True, capture_output=True)
    namespace = f"e2e-workers-{uuid.uuid4().hex[:6]}"
    try:
        load_images(SOC_CLUSTER, [IMAGE], lambda event: None)
        kubectl(env, "create", "namespace", namespace)
        jobs = {f"on-{i}": node for i, node in enumerate(SOC_WORKERS)}
        kubectl(env, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": [job(name, node) for name, node in jobs.items()]}))
        waited = kubectl(env, "wait", "-n", namespace, "--for=condition=Complete", "--timeout=120s",
                         *[f"job/{name}" for name in jobs], check=False, timeout=150)
        pods = kube_get(env, "pods", "-n", namespace)
        assert waited.returncode == 0, (waited.stderr, [(p["metadata"]["name"], p["status"]) for p in pods])
        for pod in pods:
            name, node = pod["metadata"]["labels"]["job-name"], pod["spec"]["nodeName"]
            assert node == jobs[name]
            # each node's pods get addresses from its own podCIDR (the per-node CNI config of --workers)
            assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(nodes[node]["spec"]["podCIDR"])
            log = kubectl(env, "logs", "-n", namespace, pod["metadata"]["name"]).stdout
            assert log.strip() == f"done on {node}", log
    finally:
        kubectl(env, "delete", "namespace", namespace, "--wait=false", check=False)
        subprocess.run(["docker", "rmi", "-f", IMAGE], capture_output=True)
