"""The kind node's NetworkPolicy enforcer (e2e/kind/node/kind/manifests/default-cni.yaml) agrees with the cluster
it runs in: kube-router's firewall alone, the image build-node-image.sh makes from versions.sh, the service range
of cluster.yaml, the pod range of the node's CNI config. A mismatch would not fail loudly on the cluster: a wrong
service range only mis-filters traffic, so it is checked here. (The enforcement itself: e2e/test_kind.py.)"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

KIND = Path(__file__).resolve().parent.parent / "e2e" / "kind"


def kube_router() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((KIND / "node" / "kind" / "manifests" / "default-cni.yaml").read_text()))
    [ds] = [d for d in docs if d["kind"] == "DaemonSet"]
    [container] = ds["spec"]["template"]["spec"]["containers"]
    return {"ds": ds, "container": container, "docs": docs}


def args() -> dict[str, str]:
    return dict(a.removeprefix("--").split("=", 1) for a in kube_router()["container"]["args"])


def test_only_the_firewall_runs() -> None:
    a = args()
    # routing stays with the bridge CNI and Services with kube-proxy: only NetworkPolicies are kube-router's
    assert (a["run-firewall"], a["run-router"], a["run-service-proxy"]) == ("true", "false", "false")
    spec = kube_router()["ds"]["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and kube_router()["container"]["securityContext"]["privileged"] is True


def test_the_image_is_the_one_built_from_versions_sh() -> None:
    version = re.search(r'^KUBE_ROUTER_VERSION="([^"]+)"', (KIND / "versions.sh").read_text(), re.M)
    assert version, "versions.sh names no KUBE_ROUTER_VERSION"
    c = kube_router()["container"]
    assert c["image"] == f"hybridorch.local/kube-router:{version.group(1)}"
    assert c["imagePullPolicy"] == "Never"   # preloaded in the node image; there is no registry
    assert 'scratch_image "$KUBE_ROUTER_IMAGE"' in (KIND / "build-node-image.sh").read_text()


def test_the_ranges_are_the_clusters() -> None:
    cluster = yaml.safe_load((KIND / "cluster.yaml").read_text())["networking"]
    assert args()["service-cluster-ip-range"] == cluster["serviceSubnet"]
    cni = json.loads((KIND / "node" / "etc" / "cni" / "net.d" / "10-hybridorch-bridge.conflist").read_text())
    [bridge] = [p for p in cni["plugins"] if p["type"] == "bridge"]
    assert bridge["ipam"]["ranges"][0][0]["subnet"] == cluster["podSubnet"]


def test_its_role_covers_every_informer_it_starts() -> None:
    # kube-router starts these informers even with only the firewall on; a missing verb stalls its cache sync
    [role] = [d for d in kube_router()["docs"] if d["kind"] == "ClusterRole"]
    granted = {(g, r) for rule in role["rules"] if {"list", "watch"} <= set(rule["verbs"])
               for g in rule["apiGroups"] for r in rule["resources"]}
    needed = {("", "pods"), ("", "namespaces"), ("", "nodes"), ("", "services"), ("", "endpoints"),
              ("discovery.k8s.io", "endpointslices"), ("networking.k8s.io", "networkpolicies")}
    assert needed <= granted, needed - granted
