"""Engine events (hybridorch.backends.events) at the points the backends emit them: Kubernetes objects applied,
watched states and removals (pure helpers), Docker's readiness wait and failures (a fake engine)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from hybridorch.backends import kube_objects, kube_status
from hybridorch.backends.base import WorkloadStatus
from hybridorch.backends.docker import ContainerSpec, DockerBackend
from hybridorch.backends.events import KIND_OF_STATE, Event, EventKind
from hybridorch.core.plan import plan_stack
from hybridorch.core.runtime import Runtime, State
from hybridorch.errors import BackendError


def doc(kind: str, name: str, workload: str | None) -> dict[str, Any]:
    labels = {"hybridorch.dev/workload": workload} if workload else {}
    return {"kind": kind, "metadata": {"name": name, "namespace": "shop", "labels": labels}}


def test_every_status_state_but_absent_has_its_event() -> None:
    assert set(KIND_OF_STATE) == set(State) - {State.ABSENT}


def test_applied_and_removed_events_name_each_workloads_kinds() -> None:
    docs = [doc("Namespace", "shop", None), doc("Service", "web", "web"), doc("Deployment", "web", "web"),
            doc("StatefulSet", "db", "db")]
    assert [(e.workload, e.kind, e.detail) for e in kube_objects.applied_events(docs)] == [
        ("web", EventKind.APPLIED, "Service, Deployment"), ("db", EventKind.APPLIED, "StatefulSet")]
    gone = kube_objects.removed_events(docs, ["Deployment shop/web", "Namespace shop"])
    assert [(e.workload, e.kind, e.detail) for e in gone] == [("web", EventKind.REMOVED, "Deployment")]


def test_watched_states_become_one_event_per_change() -> None:
    seen: list[Event] = []
    shown: dict[str, Any] = {}
    pending = WorkloadStatus("web", Runtime.CONTAINER, State.PENDING, detail="0/2 ready")
    kube_status.tell_changes(seen.append, [pending, WorkloadStatus("db", Runtime.CONTAINER, State.ABSENT)], shown)
    kube_status.tell_changes(seen.append, [pending], shown)    # nothing changed: nothing said
    kube_status.tell_changes(seen.append, [WorkloadStatus("web", Runtime.CONTAINER, State.READY, detail="2/2 ready"),
                                           WorkloadStatus("vm", Runtime.VM, State.PENDING, detail=kube_status.ACCEPTED)],
                             shown)
    assert [(e.workload, e.kind, e.detail) for e in seen] == [
        ("web", EventKind.PENDING, "0/2 ready"), ("web", EventKind.READY, "2/2 ready"),
        ("vm", EventKind.ACCEPTED, "")]


# --- Docker: the readiness wait tells each workload's ready or failed state -----------------------------------

class FakeContainers:
    def __init__(self, states: dict[str, dict[str, Any]]) -> None:
        self.states = states

    def get(self, name: str) -> Any:
        return SimpleNamespace(name=name, attrs={"State": self.states[name]}, logs=lambda **kw: b"last words\n")


def docker_with(states: dict[str, dict[str, Any]], seen: list[Event]) -> DockerBackend:
    backend = DockerBackend(events=seen.append)
    backend._docker = SimpleNamespace(containers=FakeContainers(states), api=SimpleNamespace(base_url="fake"))
    backend._errors = SimpleNamespace(APIError=type("APIError", (Exception,), {}),
                                      DockerException=type("DockerException", (Exception,), {}))
    return backend


def spec(name: str, workload: str, replica: int) -> ContainerSpec:
    return ContainerSpec(name, workload, replica, "container", "net", workload, create={})


@pytest.fixture
def jobs_plan(write_stack: Any) -> Any:
    path = write_stack("""\
        apiVersion: hybridorch.dev/v1alpha1
        kind: Stack
        metadata: {name: demo}
        spec:
          workloads:
            - {name: jobs, image: local/jobs:1, replicas: 2, trust: trusted}
            - {name: cron, image: local/cron:1, trust: trusted}
        """)
    return plan_stack(path, solver_budget=0)


def test_docker_says_ready_once_per_workload_when_all_its_replicas_are(jobs_plan: Any) -> None:
    seen: list[Event] = []
    running = {"Status": "running"}
    backend = docker_with({"demo-jobs-0": running, "demo-jobs-1": running, "demo-cron-0": running}, seen)
    backend._wait(jobs_plan, [spec("demo-jobs-0", "jobs", 0), spec("demo-jobs-1", "jobs", 1),
                              spec("demo-cron-0", "cron", 0)], timeout=5)
    assert [(e.workload, e.kind, e.detail) for e in seen] == [("jobs", EventKind.READY, "2/2 replicas"),
                                                              ("cron", EventKind.READY, "1/1 replicas")]


def test_docker_says_failed_before_the_error(jobs_plan: Any) -> None:
    seen: list[Event] = []
    backend = docker_with({"demo-cron-0": {"Status": "exited", "ExitCode": 3}}, seen)
    with pytest.raises(BackendError, match="exited with code 3; last log line: last words"):
        backend._wait(jobs_plan, [spec("demo-cron-0", "cron", 0)], timeout=5)
    assert [(e.workload, e.kind, e.detail) for e in seen] == [("cron", EventKind.FAILED, "demo-cron-0 exited (3)")]
