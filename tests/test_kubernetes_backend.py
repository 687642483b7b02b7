"""Fast tests of the kubernetes backend's pure parts: kubectl discovery, error lines, object states, ordering.

The error texts are kubectl's own messages, copied from runs against the e2e cluster (e2e/test_kubernetes.py
produces each of them for real).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hybridorch.backends import kube_api, kube_objects, kube_remove, kube_status
from hybridorch.backends import kubernetes as k8s
from hybridorch.backends.base import get_backend
from hybridorch.core.runtime import Runtime, State
from hybridorch.errors import BackendError


def test_registry_finds_the_backend() -> None:
    backend = get_backend("kubernetes", context="ctx", namespace_prefix="p-")
    assert isinstance(backend, k8s.KubernetesBackend)
    assert backend.context == "ctx" and backend.namespace_prefix == "p-"


def _exe(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_find_kubectl_prefers_env_then_newest_cached_build_then_path(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    on_path = _exe(tmp_path / "path" / "kubectl")
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    monkeypatch.delenv("HYBRIDORCH_KUBECTL", raising=False)
    assert kube_api.find_kubectl() == on_path
    _exe(tmp_path / "cache" / "hybridorch" / "k8s" / "v1.9.0" / "bin" / "kubectl")
    newest = _exe(tmp_path / "cache" / "hybridorch" / "k8s" / "v1.34.4" / "bin" / "kubectl")
    assert kube_api.find_kubectl() == newest
    explicit = _exe(tmp_path / "mine" / "kubectl")
    monkeypatch.setenv("HYBRIDORCH_KUBECTL", explicit)
    assert kube_api.find_kubectl() == explicit


def test_missing_kubectl_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("HYBRIDORCH_KUBECTL", raising=False)
    with pytest.raises(BackendError, match="kubectl not found: install kubectl"):
        kube_api.find_kubectl()
    monkeypatch.setenv("HYBRIDORCH_KUBECTL", str(tmp_path / "nope"))
    with pytest.raises(BackendError, match="not an executable file"):
        kube_api.find_kubectl()


@pytest.mark.parametrize("stderr, expected", [
    ('error: context "nope" does not exist', "kubeconfig has no context 'nope'"),
    ("error: context was not found for specified context: nope", "kubeconfig has no context 'nope'"),
    ("The connection to the server localhost:8080 was refused - did you specify the right host or port?",
     "no Kubernetes cluster configured"),
    ('Unable to connect to the server: dial tcp 127.0.0.1:33333: connect: connection refused',
     "cannot reach the Kubernetes API server at 127.0.0.1:33333"),
    ('The connection to the server 127.0.0.1:40000 was refused - did you specify the right host or port?',
     "cannot reach the Kubernetes API server at 127.0.0.1:40000"),
    ('error: resource mapping not found for name: "db" namespace: "x" from "STDIN": no matches for kind '
     '"VirtualMachine" in version "kubevirt.io/v1"\nensure CRDs are installed first',
     "does not know kind VirtualMachine (kubevirt.io/v1): install KubeVirt"),
    ("Error from server (NotFound): the server could not find the requested resource (patch "
     "virtualmachines.kubevirt.io vm)", "does not serve virtualmachines.kubevirt.io: install KubeVirt"),
    ('Error from server (Forbidden): deployments.apps is forbidden: User "system:serviceaccount:x:ro" cannot '
     'list resource "deployments" in API group "apps" in the namespace "shop"',
     "permission denied: system:serviceaccount:x:ro may not list deployments.apps in namespace shop"),
    ('Error from server (Forbidden): namespaces is forbidden: User "bob" cannot list resource "namespaces" in '
     'API group "" at the cluster scope', "permission denied: bob may not list namespaces at cluster scope"),
    ("error: You must be logged in to the server (Unauthorized)", "rejected the credentials"),
    ("error: something else entirely", "kubectl failed (here): something else entirely"),
])
def test_kubectl_errors_become_one_line_with_a_remedy(stderr: str, expected: str) -> None:
    line = kube_api.explain_kubectl_error(stderr, "here")
    assert expected in line
    assert "\n" not in line


def test_rejections_name_the_object_and_the_servers_reason() -> None:
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}}]
    stderr = ('Error from server (Invalid): Deployment.apps "web" is invalid: spec.replicas: Invalid value: -1: '
              'must be greater than or equal to 0\n')
    assert k8s._rejections(stderr, docs) == [
        "Deployment shop/web rejected by the API server: spec.replicas: Invalid value: -1: must be greater than "
        "or equal to 0"]
    err = k8s.ApplyRejected(k8s._rejections(stderr, docs))
    assert str(err).endswith("; nothing was applied") and err.exit_code == 4
    # a connection failure is not about one object: the caller explains it instead
    assert k8s._rejections("error: Unable to connect to the server: dial tcp: connection refused", docs) == []


def test_object_refs_and_apply_order() -> None:
    ns = {"kind": "Namespace", "metadata": {"name": "a"}}
    dep = {"kind": "Deployment", "metadata": {"name": "w", "namespace": "a"}}
    vm = {"kind": "VirtualMachine", "metadata": {"name": "v", "namespace": "a"}}
    assert str(kube_objects.ObjectRef.of(ns)) == "Namespace a"
    assert str(kube_objects.ObjectRef.of(dep)) == "Deployment a/w"
    assert kube_objects.ObjectRef.of(vm).resource == "virtualmachines.kubevirt.io"
    ordered = sorted([vm, dep, ns], key=lambda d: kube_objects.KIND_ORDER[d["kind"]])
    assert [d["kind"] for d in ordered] == ["Namespace", "Deployment", "VirtualMachine"]


def _deployment(replicas: int, ready: int, generation: int = 1, observed: int = 1,
                available: int | None = None) -> dict:
    return {"kind": "Deployment", "metadata": {"name": "w", "generation": generation},
            "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": replicas,
                       "readyReplicas": ready, "availableReplicas": ready if available is None else available}}


@pytest.mark.parametrize("obj, controller, state", [
    (_deployment(2, 2), None, "ready"),
    (_deployment(2, 1), None, "pending"),
    (_deployment(1, 1, available=0), None, "pending"),    # Ready, but not yet for minReadySeconds
    (_deployment(2, 2, generation=2, observed=1), None, "pending"),
    (_deployment(0, 0), None, "stopped"),
    ({"kind": "VirtualMachine", "metadata": {}, "spec": {"runStrategy": "Always"}}, False, "pending"),
    ({"kind": "VirtualMachine", "metadata": {}, "spec": {"runStrategy": "Always"},
      "status": {"ready": True, "printableStatus": "Running"}}, True, "ready"),
    ({"kind": "VirtualMachine", "metadata": {}, "spec": {"runStrategy": "Halted"}}, True, "stopped"),
    ({"kind": "VirtualMachine", "metadata": {}, "spec": {}, "status": {"printableStatus": "ErrImagePull"}},
     True, "failed"),
])
def test_object_state(obj: dict, controller: bool | None, state: str) -> None:
    assert kube_status._object_state(obj, controller)[0] == state


def _vm_status(printable: str, *conditions: tuple[str, str]) -> dict:
    return {"kind": "VirtualMachine", "metadata": {"name": "v", "labels": {"hybridorch.dev/workload": "v"}},
            "spec": {"runStrategy": "Always"},
            "status": {"printableStatus": printable, "conditions": [
                {"type": t, "status": "False", "message": m} for t, m in conditions]}}


def test_a_vm_that_cannot_boot_says_why_in_kubevirts_words_in_one_line() -> None:
    pvc = _vm_status("ErrorPvcNotFound", ("Ready", "virt-launcher pod has not yet been scheduled"),
                     ("Synchronized", "PVC lim/win-disk does not exist,\n waiting for it to appear"))
    assert kube_status._object_state(pvc, True) == (
        State.FAILED, "ErrorPvcNotFound: PVC lim/win-disk does not exist, waiting for it to appear")
    running = _vm_status("Running", ("Ready", "the readiness probe failed"))
    assert kube_status._object_state(running, True) == (State.PENDING,
                                                        "Running; the guest's service does not answer yet")


@pytest.mark.parametrize("message, hinted", [
    ("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.", True),
    ("0/1 nodes are available: 1 Insufficient cpu.", False),   # not the architecture's fault
])
def test_an_emulated_vm_kubevirt_cannot_place_is_told_why(tmp_path: Path, message: str, hinted: bool) -> None:
    from hybridorch.core.plan import plan_stack

    stack = tmp_path / "s.yaml"
    stack.write_text("apiVersion: hybridorch.dev/v1alpha1\nkind: Stack\nmetadata: {name: s}\nspec:\n"
                     "  hosts: [{name: x, os: linux, arch: amd64, cpu: '8', memory: 16Gi, count: 1}]\n"
                     "  workloads:\n    - {name: v, runtime: vm, arch: arm64, resources: {cpu: 100m, memory: 256Mi}}\n")
    plan = plan_stack(str(stack))
    (status,) = kube_status.workload_statuses(plan, [_vm_status("ErrorUnschedulable", ("PodScheduled", message))],
                                              controller=True)
    assert status.state == State.FAILED and message in status.detail
    assert ("own architecture, arm64: it does not emulate it on amd64" in status.detail) is hinted


def test_vm_without_kubevirt_counts_as_settled_when_accepted() -> None:
    vm = {"kind": "VirtualMachine", "metadata": {}, "spec": {"runStrategy": "Always"}}
    state, detail = kube_status._object_state(vm, controller=False)
    from hybridorch.backends.base import WorkloadStatus

    assert kube_status._settled(WorkloadStatus("v", Runtime.VM, state, detail=detail))
    state, detail = kube_status._object_state(vm, controller=True)
    assert not kube_status._settled(WorkloadStatus("v", Runtime.VM, state, detail=detail))


def test_stream_is_one_json_document_per_object() -> None:
    text = k8s._stream([{"kind": "A"}, {"kind": "B"}])
    assert text == '---\n{"kind": "A"}\n---\n{"kind": "B"}\n'
    assert os.linesep not in text.replace("\n", "")


# --- what keeps a namespace (the objects are shaped like `kubectl get -o json` output of the e2e cluster) ----

OURS = {"app.kubernetes.io/managed-by": "hybridorch", "hybridorch.dev/stack": "shop"}


def _obj(kind: str, name: str, uid: str, labels: dict[str, str] | None = None, owner: str | None = None,
         **extra: object) -> dict:
    meta: dict = {"name": name, "namespace": "shop", "uid": uid}
    if labels:
        meta["labels"] = labels
    if owner:
        meta["ownerReferences"] = [{"uid": owner, "kind": "Owner", "name": "x", "apiVersion": "v1"}]
    return {"kind": kind, "metadata": meta, **extra}


NAMESPACE = [
    _obj("Deployment", "web", "d1", OURS),
    _obj("ReplicaSet", "web-5d4f", "rs1", {"app": "web"}, owner="d1"),
    _obj("Pod", "web-5d4f-abcde", "p1", {"app": "web"}, owner="rs1"),
    _obj("Service", "web", "s1", OURS),
    _obj("Endpoints", "web", "e1"),                                    # the endpoints controller sets no owner
    _obj("EndpointSlice", "web-x7k2p", "es1", {"kubernetes.io/service-name": "web"}, owner="s1"),
    _obj("StatefulSet", "db", "ss1", OURS),
    _obj("ControllerRevision", "db-6c9f", "cr1", owner="ss1"),
    _obj("PersistentVolumeClaim", "data-db-0", "pvc1", OURS, owner="ss1"),
    _obj("VirtualMachine", "ledger", "vm1", OURS),
    _obj("DataVolume", "ledger-disk", "dv1", OURS, owner="vm1"),
    _obj("PersistentVolumeClaim", "ledger-disk", "pvc2", owner="dv1"),  # CDI's claim behind the DataVolume
    _obj("ConfigMap", "kube-root-ca.crt", "c0"),
    _obj("ServiceAccount", "default", "sa0"),
    _obj("Secret", "default-token-x", "st0", type="kubernetes.io/service-account-token"),
    _obj("Event", "web.17a", "ev1"),
]
NAMESPACE[14]["metadata"]["annotations"] = {"kubernetes.io/service-account.name": "default"}


def test_a_namespace_with_only_our_objects_and_kubernetes_own_holds_nothing_foreign() -> None:
    assert kube_remove.foreign_objects(NAMESPACE, "shop") == []


def test_objects_hybridorch_did_not_make_are_foreign() -> None:
    mine = _obj("ConfigMap", "settings", "u1")
    other_stack = _obj("Deployment", "api", "u2", {**OURS, "hybridorch.dev/stack": "other"})
    other_pod = _obj("Pod", "api-1", "u3", owner="u2")
    orphan_endpoints = _obj("Endpoints", "not-a-service-of-ours", "u4")
    other_token = _obj("Secret", "ci-token", "u5", type="kubernetes.io/service-account-token")
    going = _obj("ConfigMap", "being-deleted", "u6")
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    items = NAMESPACE + [mine, other_stack, other_pod, orphan_endpoints, other_token, going]
    foreign = [str(kube_objects.ObjectRef.of(o)) for o in kube_remove.foreign_objects(items, "shop")]
    assert foreign == ["ConfigMap shop/settings", "Deployment shop/api", "Pod shop/api-1",
                       "Endpoints shop/not-a-service-of-ours", "Secret shop/ci-token"]


def test_an_owner_chain_that_leaves_the_listing_or_loops_is_not_ours() -> None:
    loop = [_obj("Pod", "a", "a", owner="b"), _obj("Pod", "b", "b", owner="a"), _obj("Pod", "c", "c", owner="gone")]
    assert [o["metadata"]["name"] for o in kube_remove.foreign_objects(loop, "shop")] == ["a", "b", "c"]


def test_data_is_every_claim_and_datavolume_of_the_stack_owned_or_labelled() -> None:
    user_claim = _obj("PersistentVolumeClaim", "mine", "u1")
    data = [str(kube_objects.ObjectRef.of(o)) for o in kube_remove.data_objects(NAMESPACE + [user_claim], "shop")]
    assert data == ["PersistentVolumeClaim shop/data-db-0", "DataVolume shop/ledger-disk",
                    "PersistentVolumeClaim shop/ledger-disk"]
    assert kube_remove.foreign_objects([user_claim], "shop") == [user_claim]


def test_kept_data_says_how_to_remove_it() -> None:
    backend = k8s.KubernetesBackend(context="kind-x")
    ref = kube_objects.ObjectRef("PersistentVolumeClaim", "shop", "data-db-0")
    assert kube_remove.delete_command(backend, ref) == \
        "kubectl --context kind-x delete persistentvolumeclaims -n shop data-db-0"
    assert kube_remove.delete_command(k8s.KubernetesBackend(), kube_objects.ObjectRef("Namespace", "", "shop")) == \
        "kubectl delete namespaces shop"


def test_an_rbac_refusal_of_the_client_reads_like_kubectls():
    # the client's 403 (the stack lock's Lease calls) names who may not do what, as kubectl's refusals do
    from kubernetes.client.exceptions import ApiException

    from hybridorch.backends.kubewatch import explain_api_error

    err = ApiException(status=403, reason="Forbidden")
    err.body = ('{"message": "leases.coordination.k8s.io \\"stack-shop\\" is forbidden: User \\"system:serviceaccount:'
                'x:ro\\" cannot get resource \\"leases\\" in API group \\"coordination.k8s.io\\" in the namespace '
                '\\"hybridorch-system\\""}')
    line = explain_api_error(err, "context kind-e2e, reading the lock of stack shop")
    assert line.startswith("permission denied: system:serviceaccount:x:ro may not get leases.coordination.k8s.io "
                           "in namespace hybridorch-system (context kind-e2e, reading the lock of stack shop)")
    assert "RBAC" in line and "\n" not in line
