"""End-to-end tests that need what only the kwok cluster has (e2e/conftest.py `kwok_cluster`: a real kube-apiserver,
controller-manager and scheduler built from source, with kwok faking many nodes): nodes of foreign architectures,
a Node object that stands for a real node which is not a kind node, and an API server the test can stop and
start again. Everything that can run on a real node is in e2e/test_kubernetes.py, on the kind cluster.
"""
from __future__ import annotations

import json
import time
from typing import Any

import pytest

from e2e.conftest import cluster_cmd, hybridorch, kube_get as get, kubectl
from e2e.test_kubernetes import one_line, riscv_stack, two_workloads

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster(kwok_cluster: dict[str, str]) -> dict[str, str]:
    return kwok_cluster


def test_each_architecture_lands_on_its_own_fake_nodes(cluster: dict[str, str], stack_file: Any) -> None:
    # host pools of both architectures: the plan places each workload by its arch, the scheduler follows the
    # rendered nodeSelector onto kwok's arm64 and amd64 nodes (which mark the pods ready)
    stack = two_workloads("e2e-arches")
    stack["spec"]["hosts"] = [{"name": "x86", "os": "linux", "arch": "amd64", "cpu": "8", "memory": "32Gi"},
                              {"name": "arm", "os": "linux", "arch": "arm64", "cpu": "8", "memory": "32Gi"}]
    stack["spec"]["workloads"][1]["arch"] = "arm64"
    path = stack_file(stack)
    try:
        hybridorch("apply", path, "--timeout", "120", env=cluster)
        nodes = {n["metadata"]["name"]: n["metadata"]["labels"]["kubernetes.io/arch"] for n in get(cluster, "nodes")}
        placed = {p["metadata"]["labels"]["hybridorch.dev/workload"]: nodes[p["spec"]["nodeName"]]
                  for p in get(cluster, "pods", "-n", "e2e-arches")}
        assert placed == {"keep": "amd64", "gone": "arm64"}, placed
    finally:
        hybridorch("delete", path, env=cluster, check=False)


def test_stopped_api_server_gives_one_line(cluster: dict[str, str], stack_file: Any,
                                           cluster_timings: dict[str, float]) -> None:
    path = stack_file(two_workloads("e2e-stopped"))
    stop = cluster_cmd("local", "stop")
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
        start = cluster_cmd("local", "start")
        cluster_timings["kwok cluster restart"] = time.monotonic() - t0
        assert start.returncode == 0, start.stderr


def test_a_local_image_a_real_node_cannot_pull_is_one_line_before_anything_is_applied(
        cluster: dict[str, str], stack_file: Any) -> None:
    # a Node object without kwok's annotation stands for a real node of a cluster that is not kind (it reports no
    # images, and nothing loads images into it); riscv64, so only this test's pods could land on it
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
