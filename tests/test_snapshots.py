"""Snapshot naming, retention selection and the KubeVirt objects (the e2e round trip is e2e/test_snapshots.py)."""
from __future__ import annotations

import calendar
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from hybridorch.ops import snapshots as snaps
from hybridorch.cli import cli
from hybridorch.core.labels import LABEL_STACK, LABEL_WORKLOAD
from hybridorch.core.policy import PROFILES
from hybridorch.core.durations import parse_duration
from hybridorch.core.spec import Snapshots, Workload

DAY = 86400
NOW = calendar.timegm((2026, 11, 28, 18, 0, 0))


def snap(name: str, age_days: float, vm: str = "hyb-s-w-0") -> snaps.Snapshot:
    return snaps.Snapshot(name, vm, NOW - age_days * DAY)


def test_names_carry_a_utc_timestamp_and_sort_by_time() -> None:
    assert snaps.snapshot_name(None, NOW) == "snap-20261128-180000"
    assert snaps.snapshot_name("pre-upgrade", NOW + 61) == "pre-upgrade-20261128-180101"
    assert snaps.check_prefix("pre-upgrade") is None
    for bad in ("Pre", "-x", "x-", "a_b", "a" * 33, ""):
        assert snaps.check_prefix(bad) is not None, bad


def test_prune_keeps_the_newest_retain_within_max_age() -> None:
    found = [snap("a", 10), snap("b", 5), snap("c", 3), snap("d", 1), snap("e", 0)]
    doomed = snaps.select_prune(found, snaps.Retention(3, 7 * DAY), NOW)
    assert [s.name for s in doomed] == ["b", "a"]          # b: beyond the 3 newest; a: also too old
    # age alone: only what is past maxAge goes, however many are left
    assert [s.name for s in snaps.select_prune(found, snaps.Retention(10, 4 * DAY), NOW)] == ["b", "a"]
    # count alone
    assert [s.name for s in snaps.select_prune(found, snaps.Retention(1, None), NOW)] == ["d", "c", "b", "a"]
    # retain 0 removes everything; nothing to remove is an empty list
    assert len(snaps.select_prune(found, snaps.Retention(0, None), NOW)) == 5
    assert snaps.select_prune(found[-2:], snaps.Retention(3, 7 * DAY), NOW) == []


def test_prune_counts_each_replica_on_its_own() -> None:
    found = [snap("x", 2, "vm-0"), snap("y", 1, "vm-0"), snap("x", 2, "vm-1"), snap("y", 1, "vm-1")]
    doomed = snaps.select_prune(found, snaps.Retention(1, None), NOW)
    assert [(s.vm, s.name) for s in doomed] == [("vm-0", "x"), ("vm-1", "x")]


def test_retention_comes_from_the_workload_else_defaults_and_the_policy() -> None:
    w = Workload(name="db", image="x")
    balanced = PROFILES["balanced"]
    assert snaps.retention_for(w, balanced) == snaps.Retention(snaps.DEFAULT_RETAIN,
                                                               parse_duration(balanced.max_snapshot_age))
    own = Workload(name="db", image="x", snapshots=Snapshots(5, "2d"))
    assert snaps.retention_for(own, balanced) == snaps.Retention(5, 2 * DAY)
    count_only = Workload(name="db", image="x", snapshots=Snapshots(2, None))
    assert snaps.retention_for(count_only, PROFILES["secure"]) == snaps.Retention(2, 7 * DAY)


def test_restore_warns_that_patches_are_rolled_back() -> None:
    text = snaps.rollback_warning(snap("snap-1", 3), NOW)
    assert text.startswith("warning: hyb-s-w-0 is rolled back to snap-1, taken 3d ago") and "patches" in text


def test_kubevirt_objects_carry_the_stack_labels_and_point_at_the_vm() -> None:
    # the objects the Kubernetes backend's snapshot side applies (pure: rendered before any kubectl call)
    from hybridorch.backends import kubevirt_snapshots as kubevirt

    s = kubevirt.snapshot_object("shop", "ledger-vm", "ledger-vm", "payments", "snap-20261128-180000")
    assert s["apiVersion"] == "snapshot.kubevirt.io/v1beta1" and s["kind"] == "VirtualMachineSnapshot"
    assert s["metadata"] == {"name": "snap-20261128-180000", "namespace": "payments",
                             "labels": {"app.kubernetes.io/managed-by": "hybridorch", LABEL_STACK: "shop",
                                        LABEL_WORKLOAD: "ledger-vm"}}
    assert s["spec"]["source"] == {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "ledger-vm"}
    # a replica's VM gets its own snapshot object
    assert kubevirt.snapshot_object("shop", "db", "db-1", "ns", "s")["metadata"]["name"] == "s-db-1"
    r = kubevirt.restore_object("shop", "ledger-vm", "ledger-vm", "payments", "snap-20261128-180000")
    assert r["kind"] == "VirtualMachineRestore" and r["metadata"]["labels"][LABEL_STACK] == "shop"
    assert r["spec"] == {"target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "ledger-vm"},
                         "virtualMachineSnapshotName": "snap-20261128-180000"}


STACK = """
apiVersion: hybridorch.dev/v1alpha1
kind: Stack
metadata:
  name: snaps
spec:
  workloads:
    - name: web
      image: nginx:1.25
      runtime: container
"""


def test_a_container_workload_has_no_snapshots(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text(textwrap.dedent(STACK).lstrip())
    result = CliRunner().invoke(cli, ["snapshot", "list", str(path), "web"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "only VMs (vm, nested) have snapshots" in result.output
    assert f"{path}:" in result.output
    result = CliRunner().invoke(cli, ["snapshot", "create", str(path), "web", "Bad_Name"])
    assert result.exit_code == 2 and "is not a snapshot name" in result.output


@pytest.mark.parametrize("workload", ["nope"])
def test_an_unknown_workload_is_a_one_line_error(tmp_path: Path, workload: str) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text(textwrap.dedent(STACK).lstrip())
    result = CliRunner().invoke(cli, ["snapshot", "prune", str(path), workload])
    assert result.exit_code == 2 and "no workload named 'nope'" in result.output
