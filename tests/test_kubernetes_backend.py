"""Fast tests of the kubernetes backend's pure parts: kubectl discovery, error lines, object states, ordering.

The error texts are kubectl's own messages, copied from runs against the e2e cluster (e2e/test_kubernetes.py
produces each of them for real).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hybridorch.backends import kubernetes as k8s
from hybridorch.backends.base import get_backend
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
    assert k8s.find_kubectl() == on_path
    _exe(tmp_path / "cache" / "hybridorch" / "k8s" / "v1.9.0" / "bin" / "kubectl")
    newest = _exe(tmp_path / "cache" / "hybridorch" / "k8s" / "v1.34.4" / "bin" / "kubectl")
    assert k8s.find_kubectl() == newest
    explicit = _exe(tmp_path / "mine" / "kubectl")
    monkeypatch.setenv("HYBRIDORCH_KUBECTL", explicit)
    assert k8s.find_kubectl() == explicit


def test_missing_kubectl_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("HYBRIDORCH_KUBECTL", raising=False)
    with pytest.raises(BackendError, match="kubectl not found: install kubectl"):
        k8s.find_kubectl()
    monkeypatch.setenv("HYBRIDORCH_KUBECTL", str(tmp_path / "nope"))
    with pytest.raises(BackendError, match="not an executable file"):
        k8s.find_kubectl()


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
    line = k8s.explain_kubectl_error(stderr, "here")
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
    assert str(k8s.ObjectRef.of(ns)) == "Namespace a"
    assert str(k8s.ObjectRef.of(dep)) == "Deployment a/w"
    assert k8s.ObjectRef.of(vm).resource == "virtualmachines.kubevirt.io"
    ordered = sorted([vm, dep, ns], key=lambda d: k8s.KIND_ORDER[d["kind"]])
    assert [d["kind"] for d in ordered] == ["Namespace", "Deployment", "VirtualMachine"]


def _deployment(replicas: int, ready: int, generation: int = 1, observed: int = 1) -> dict:
    return {"kind": "Deployment", "metadata": {"name": "w", "generation": generation},
            "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": replicas,
                       "readyReplicas": ready}}


@pytest.mark.parametrize("obj, controller, state", [
    (_deployment(2, 2), None, "ready"),
    (_deployment(2, 1), None, "pending"),
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
    assert k8s._object_state(obj, controller)[0] == state


def test_vm_without_kubevirt_counts_as_settled_when_accepted() -> None:
    vm = {"kind": "VirtualMachine", "metadata": {}, "spec": {"runStrategy": "Always"}}
    state, detail = k8s._object_state(vm, controller=False)
    from hybridorch.backends.base import WorkloadStatus

    assert k8s._settled(WorkloadStatus("v", "vm", state, detail=detail))
    state, detail = k8s._object_state(vm, controller=True)
    assert not k8s._settled(WorkloadStatus("v", "vm", state, detail=detail))


def test_stream_is_one_json_document_per_object() -> None:
    text = k8s._stream([{"kind": "A"}, {"kind": "B"}])
    assert text == '---\n{"kind": "A"}\n---\n{"kind": "B"}\n'
    assert os.linesep not in text.replace("\n", "")
