"""A ttl or a maximum age of zero means "expired at once": `0s`, `0m`, `0h0m` are refused in one line, in the
stack (metadata.ttl, a workload's ttl, snapshots.maxAge), in a policy file (maxSnapshotAge) and in the JSON schema."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from hybridorch.core.durations import POSITIVE, parse_duration
from hybridorch.core.policyfile import load_policy
from hybridorch.core.spec import load_stack
from hybridorch.errors import SpecError
from tests.conftest import ROOT

ZERO = ["0s", "0m", "0h0m", "00s", "0d0h0m0s", "0w"]
POSITIVE_ONES = ["1s", "0h1m", "10s", "1d0h", "30m"]


def stack(where: str, value: str) -> str:
    meta = f", ttl: '{value}'" if where == "metadata" else ""
    extra = {"metadata": "", "workload": f", ttl: '{value}'",
             "maxAge": f", runtime: vm, snapshots: {{retain: 2, maxAge: '{value}'}}"}[where]
    return ("apiVersion: hybridorch.dev/v1alpha1\nkind: Stack\n"
            f"metadata: {{name: demo, owner: team{meta}}}\n"
            "spec:\n  workloads:\n"
            f"    - {{name: web, image: local/web:1{extra}}}\n")


FIELDS = {"metadata": "metadata.ttl", "workload": "spec.workloads[0].ttl",
          "maxAge": "spec.workloads[0].snapshots.maxAge"}


@pytest.mark.parametrize("where", list(FIELDS))
@pytest.mark.parametrize("value", ZERO)
def test_a_zero_duration_is_refused_with_a_one_line_reason(write_stack, where, value):
    path = write_stack(stack(where, value))
    with pytest.raises(SpecError) as err:
        load_stack(path)
    (problem,) = err.value.problems
    assert problem.path == FIELDS[where] and problem.line == (3 if where == "metadata" else 6)
    assert problem.message.startswith("must be a duration") and "positive (zero would mean expired at once)" in \
        problem.message and repr(value) not in problem.message
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("where", list(FIELDS))
@pytest.mark.parametrize("value", POSITIVE_ONES)
def test_a_positive_duration_is_accepted(write_stack, where, value):
    s = load_stack(write_stack(stack(where, value)))
    w = s.workloads[0]
    got = {"metadata": s.ttl, "workload": w.ttl, "maxAge": w.snapshots.max_age if w.snapshots else None}[where]
    assert got == value and parse_duration(value) > 0


@pytest.mark.parametrize("value,ok", [(v, False) for v in ZERO] + [(v, True) for v in POSITIVE_ONES])
def test_the_policy_files_max_snapshot_age_must_be_positive(tmp_path, value, ok):
    policy = tmp_path / "p.yaml"
    policy.write_text("apiVersion: hybridorch.dev/v1alpha1\nkind: Policy\nmetadata: {name: p}\n"
                      f"spec: {{maxSnapshotAge: '{value}'}}\n")
    if ok:
        assert load_policy(str(policy)).max_snapshot_age == value
        return
    with pytest.raises(SpecError) as err:
        load_policy(str(policy))
    assert "spec.maxSnapshotAge" in str(err.value) and "and positive" in str(err.value)


def test_the_json_schema_refuses_zero_too():
    schema = json.loads((ROOT / "hybridorch" / "data" / "stack-v1alpha1.schema.json").read_text())
    ttl = schema["properties"]["metadata"]["properties"]["ttl"]["pattern"]
    for value in ZERO:
        assert not re.search(ttl, value) and not re.fullmatch(POSITIVE, value)
    for value in POSITIVE_ONES:
        assert re.search(ttl, value) and re.fullmatch(POSITIVE, value)


def test_validate_refuses_ttl_0s_in_one_line_with_exit_2(write_stack):
    path = write_stack(stack("metadata", "0s"))
    run = subprocess.run([sys.executable, "-m", "hybridorch", "validate", path], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "metadata.ttl" in lines[0] and "and positive" in lines[0]
