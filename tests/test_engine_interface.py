"""The engine interface (backends/base.py): the registry, the "not supported" default, and `ps`, `gc`, the live
audit and `snapshot` going through it only (a fake target registered in place of the local one stands in)."""
from __future__ import annotations

import calendar
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from hybridorch import api
from hybridorch.backends.base import (REGISTRY, Backend, Kept, LiveContainer, LiveFacts, LiveVM, Made, Managed,
                                      Removal, Snapshot, WorkloadStatus, get_backend)
from hybridorch.core.labels import LABEL_WORKLOAD
from hybridorch.core.plan import plan_stack
from hybridorch.core.runtime import Runtime
from hybridorch.errors import BackendError
from hybridorch.ops.audit_live import audit_running

NOW = calendar.timegm((2026, 11, 28, 18, 0, 0))
DAY = 86400
STACK = """
apiVersion: hybridorch.dev/v1alpha1
kind: Stack
metadata:
  name: fake
spec:
  workloads:
    - name: web
      image: nginx:1.25
      runtime: container
    - name: db
      image: x
      runtime: vm
      snapshots: {retain: 2}
"""


class FakeBackend(Backend):
    """A target that records what it is asked; class attributes, as the registry makes a new instance each time."""

    name = "fake"
    items: list[Managed] = []
    removed: list[tuple[list[Managed], bool]] = []
    snaps: list[Snapshot] = []
    pruned: list[Snapshot] = []

    def up(self, plan: Any, rendered: Any, *, wait: bool = True, timeout: float = 300) -> list[WorkloadStatus]:
        return []

    def status(self, plan: Any) -> list[WorkloadStatus]:
        return []

    def logs(self, plan: Any, workload: str, *, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        return iter(())

    def down(self, plan: Any, *, delete_data: bool = False) -> Removal:
        return Removal()

    def inventory(self) -> list[Managed]:
        return list(self.items)

    def remove(self, items: list[Managed], *, keep_data: bool = True) -> Removal:
        FakeBackend.removed.append((items, keep_data))
        return Removal(tuple(f"{m.kind} {m.name}" for m in items), (Kept("volume v", "data", "docker volume rm v"),))

    def live_facts(self, plan: Any) -> LiveFacts:
        privileged = {"Name": "/fake-web-0", "Config": {"Labels": {LABEL_WORKLOAD: "web"}},
                      "HostConfig": {"Privileged": True, "NanoCpus": 1, "Memory": 1}}
        return LiveFacts(containers=(LiveContainer("web", privileged, None),),
                         vms=(LiveVM("db", {"stack": "fake", "workload": "db", "cpus": 1}),))

    def snapshot_list(self, plan: Any, workload: str) -> list[Snapshot]:
        return list(self.snaps)

    def snapshot_prune(self, plan: Any, workload: str, doomed: list[Snapshot]) -> None:
        FakeBackend.pruned += doomed


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The fake target registered as "local"; the stack file it runs."""
    monkeypatch.setitem(REGISTRY, "local", f"{__name__}:FakeBackend")
    for attr in ("items", "removed", "snaps", "pruned"):
        monkeypatch.setattr(FakeBackend, attr, [])
    path = tmp_path / "stack.yaml"
    path.write_text(textwrap.dedent(STACK).lstrip())
    return path


def test_every_registered_target_implements_the_whole_interface() -> None:
    for target in REGISTRY:
        assert isinstance(get_backend(target), Backend), target   # an abstract method left: TypeError


def test_an_unknown_target_is_named_with_the_known_ones() -> None:
    with pytest.raises(BackendError, match=r"unknown target 'nope': use one of docker, kubernetes, local, qemu"):
        get_backend("nope")


def test_a_target_without_snapshots_says_so(fake: Path) -> None:
    plan = plan_stack(str(fake), solver_budget=0)
    for call in (lambda b: b.snapshot_list(plan, "db"), lambda b: b.snapshot_create(plan, "db", "s"),
                 lambda b: b.snapshot_restore(plan, "db", None), lambda b: b.snapshot_prune(plan, "db", [])):
        with pytest.raises(BackendError, match=r"^snapshots are not supported on target docker$"):
            call(get_backend("docker"))


def test_ps_and_gc_go_through_the_interface_and_keep_data(fake: Path) -> None:
    started = time.time() - DAY    # gc reads the clock: a day old is past a 1h ttl, not past 2d
    old = Managed("local", Made.CONTAINER, "fake-web-0", "", "fake", "web", Runtime.CONTAINER, "me", "1h", started)
    young = Managed("local", Made.VM, "db", "", "fake", "db", Runtime.VM, "me", "2d", started)
    FakeBackend.items = [young, old]
    assert api.ps("local") == [young, old]   # sorted by target, stack, workload, name
    expired, removed = api.gc("local", dry_run=True)
    assert expired == [old] and removed == [] and FakeBackend.removed == []
    expired, removed = api.gc("local")
    assert FakeBackend.removed == [([old], True)]
    assert removed == ["container fake-web-0", "kept volume v: data; remove it with: docker volume rm v"]


def test_the_live_audit_reads_only_the_live_facts(fake: Path) -> None:
    plan = plan_stack(str(fake), solver_budget=0)
    found = {(f.rule, f.workload) for f in audit_running(plan, "local", now=NOW)}
    assert ("HYB005", "web") in found               # the privileged container
    assert ("HYB013", "db") in found                # the running VM without owner and ttl
    with pytest.raises(BackendError, match="unknown live target 'docker'"):
        audit_running(plan, "docker")


def test_snapshot_prune_decides_and_the_target_deletes(fake: Path) -> None:
    FakeBackend.snaps = [Snapshot(f"s{i}", "dom", NOW - i * 3600) for i in range(4)]
    doomed = api.snapshot_prune(str(fake), "db", dry_run=True, now=NOW)
    assert [s.name for s in doomed] == ["s2", "s3"] and FakeBackend.pruned == []   # retain: 2
    assert [s.name for s in api.snapshot_prune(str(fake), "db", "s0", now=NOW)] == ["s0"]
    assert [s.name for s in FakeBackend.pruned] == ["s0"]
    with pytest.raises(BackendError, match="workload db has no snapshot s9"):
        api.snapshot_prune(str(fake), "db", "s9", now=NOW)
