"""The kubernetes backend's decisions before and after apply, on objects as the API server returns them: is this
a kind cluster, which images do the pods run, can a node run a local image, which pod state or event is a failure
to report at once (and which is not). e2e/test_kubernetes.py and e2e/test_kind.py run them against clusters."""
from __future__ import annotations

import time
from typing import Any

import pytest

from hybridorch.api import render
from hybridorch.backends.kind import kind_cluster_name
from hybridorch.backends.kube_images import _matches, _node_has, pod_images
from hybridorch.backends.kubewatch import Failure, event_failure, pod_failure
from tests.conftest import ROOT


@pytest.mark.parametrize("context,provider_ids,expected", [
    ("kind-hybridorch", [], "hybridorch"),
    ("kind-", [], None),
    ("prod", ["kind://docker/dev/dev-control-plane"], "dev"),       # renamed context, kind nodes
    ("kind-a", ["kind://podman/b/b-worker"], "b"),                    # the nodes know best
    ("prod", ["aws:///eu-west-1a/i-0abc", ""], None),
    (None, [], None),
    ("kwok-hybridorch-e2e", ["kwok://fake"], None),
])
def test_kind_cluster_is_known_by_context_or_provider_id(context: str | None, provider_ids: list[str],
                                                           expected: str | None):
    assert kind_cluster_name(context, provider_ids) == expected


def test_pod_images_are_the_rendered_content_tagged_references():
    docs = list(render(str(ROOT / "examples" / "shop.yaml")).documents)
    found = pod_images(docs)
    # web, api, the plugin and payments share one recipe: one image, tagged by the recipe's content
    assert len(found) == 1
    (ref, (workload, selector)), = found.items()
    assert ref.startswith("hybridorch.local/httpd:1-") and len(ref.rsplit("-", 1)[1]) == 12
    assert workload == "web" and selector["kubernetes.io/arch"] == "amd64"
    # the VM's containerDisk is not a pod image: no KubeVirt controller runs it from these nodes' stores
    assert not any("ledger-disk" in r for r in found)


def test_where_kubevirt_runs_a_vms_disk_and_kernel_image_reach_the_nodes_too():
    docs = list(render(str(ROOT / "examples" / "shop.yaml")).documents)
    found = pod_images(docs, vms=True)
    (disk,) = [r for r in found if "ledger-disk" in r]
    # one image serves as the containerDisk and as the kernelBoot container, content-tagged like pods' images
    assert disk.startswith("hybridorch.local/ledger-disk:1-") and len(disk.rsplit("-", 1)[1]) == 12
    workload, selector = found[disk]
    assert workload == "ledger-vm" and selector["kubernetes.io/arch"] == "amd64"
    (vm,) = [d for d in docs if d["kind"] == "VirtualMachine"]
    spec = vm["spec"]["template"]["spec"]
    assert spec["domain"]["firmware"]["kernelBoot"]["container"]["image"] == disk
    assert {"name": "rootdisk", "containerDisk": {"image": disk, "imagePullPolicy": "IfNotPresent"}} in spec["volumes"]


def node(labels: dict[str, str], images: list[list[str]] = (), fake: bool = False) -> dict[str, Any]:
    return {"metadata": {"name": "n", "labels": labels,
                         "annotations": {"kwok.x-k8s.io/node": "fake"} if fake else {}},
            "status": {"images": [{"names": names} for names in images]}}


@pytest.mark.parametrize("n,ref,has", [
    (node({}, [["hybridorch.local/httpd:1-abc", "sha256:1"]]), "hybridorch.local/httpd:1-abc", True),
    (node({}, [["docker.io/hybridorch.local/httpd:1-abc"]]), "hybridorch.local/httpd:1-abc", True),
    (node({}, [["hybridorch.local/httpd:1-old"]]), "hybridorch.local/httpd:1-abc", False),
    (node({}), "hybridorch.local/httpd:1-abc", False),
    (node({}, fake=True), "hybridorch.local/httpd:1-abc", True),      # kwok runs nothing, pulls nothing
])
def test_a_node_has_a_local_image_when_it_reports_it(n: dict[str, Any], ref: str, has: bool):
    assert _node_has(n, ref) is has


def test_only_nodes_the_pod_may_land_on_matter():
    assert _matches({"kubernetes.io/arch": "arm64"}, {"kubernetes.io/arch": "arm64", "x": "y"})
    assert not _matches({"kubernetes.io/arch": "arm64"}, {"kubernetes.io/arch": "amd64"})


def pod(statuses: list[dict[str, Any]] = (), conditions: list[dict[str, Any]] = (), deleting: bool = False
        ) -> dict[str, Any]:
    meta = {"name": "web-1", "namespace": "shop", "labels": {"hybridorch.dev/workload": "web"}}
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"containerStatuses": list(statuses), "conditions": list(conditions)}}


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"name": "web", "state": {"waiting": {"reason": reason, "message": message}}}


@pytest.mark.parametrize("p,reason", [
    (pod([waiting("ErrImagePull", "rpc error:\n not found")]), "ErrImagePull"),
    (pod([waiting("ImagePullBackOff")]), "ImagePullBackOff"),
    (pod([waiting("CrashLoopBackOff", "back-off 10s")]), "CrashLoopBackOff"),
    (pod([waiting("CreateContainerConfigError", 'secret "x" not found')]), "CreateContainerConfigError"),
    (pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": "0/5 nodes are available"}]), "Unschedulable"),
    (pod([waiting("ContainerCreating")]), None),                        # still on its way
    (pod([{"name": "web", "state": {"running": {}}, "ready": False}]), None),
    (pod([waiting("CrashLoopBackOff")], deleting=True), None),          # an old pod on its way out
    (pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]), None),
])
def test_pod_states_that_waiting_will_not_fix(p: dict[str, Any], reason: str | None):
    found = pod_failure(p)
    assert (found.reason if found else None) == reason
    if found and reason == "ErrImagePull":
        assert found == Failure("web", "shop", "web-1", "web", "ErrImagePull", "rpc error: not found")


# one fixed "apply started" instant: the parameters are stamped at collection, the test may run minutes later
APPLY_STARTED = time.time()


def event(kind: str, name: str, reason: str = "FailedCreate", age: float = 0, type_: str = "Warning"
          ) -> dict[str, Any]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(APPLY_STARTED + 1 - age))
    return {"type": type_, "reason": reason, "message": 'pods "web-x" is forbidden: violates PodSecurity',
            "lastTimestamp": stamp, "involvedObject": {"kind": kind, "namespace": "shop", "name": name}}


@pytest.mark.parametrize("e,workload", [
    (event("ReplicaSet", "web-5d8f7c9b6"), "web"),
    (event("StatefulSet", "db"), "db"),
    (event("ReplicaSet", "other-5d8f7c9b6"), None),                     # not ours
    (event("ReplicaSet", "web-5d8f7c9b6", age=3600), None),             # from an earlier apply
    (event("ReplicaSet", "web-5d8f7c9b6", reason="FailedScheduling"), None),
    (event("ReplicaSet", "web-5d8f7c9b6", type_="Normal"), None),
])
def test_controller_events_that_mean_no_pod_will_come(e: dict[str, Any], workload: str | None):
    found = event_failure(e, {("shop", "web"): "web", ("shop", "db"): "db"}, since=APPLY_STARTED)
    assert (found.workload if found else None) == workload


def test_failure_is_one_line_with_the_reason_and_last_logs():
    f = Failure("web", "shop", "web-1", "web", "CrashLoopBackOff", "back-off 10s restarting failed container")
    line = f.line(["starting", "panic: no config"])
    assert "\n" not in line
    assert line.startswith("workload web failed: pod web-1: CrashLoopBackOff: back-off 10s")
    assert "last log lines: starting | panic: no config" in line and "kubectl describe -n shop pod web-1" in line
