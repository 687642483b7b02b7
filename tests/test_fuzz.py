"""Property: whatever the input, the CLI answers with exit 0 or 2 and one-line errors, never a traceback.

Inputs come from Hypothesis: stacks generated from the shipped JSON Schema, and byte mutations of the valid example
stacks, hosts, policy and SocTest files. Derandomized with fixed example counts so CI runs the same cases (~15 s).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from hybridorch.cli import cli
from hybridorch.errors import SpecError
from hybridorch.ops.soc import load_soc_plan
from hybridorch.core.spec import stack_json_schema
from tests.conftest import ROOT

ERROR_LINE = re.compile(r"^[^:]+(:\d+)?: .+")
HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture,
          HealthCheck.filter_too_much]


def fixed(examples: int) -> settings:
    """Derandomized, no example database, no deadline: the same cases on every run."""
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=HEALTH)

POLICY = b"""apiVersion: hybridorch.dev/v1alpha1
kind: Policy
metadata: {name: strict-shop}
spec:
  base: balanced
  untrustedRuntime: vm
  separateTenants: true
  headroomPercent: 10
  overheads: {sandboxed: {cpu: 250m, memory: 160Mi}, vm: {cpu: 200m, memory: 256Mi}}
"""
STACKS = sorted(p for p in (ROOT / "examples").glob("*.yaml") if "\nkind: Stack" in p.read_text())
HOSTS = sorted(p for p in (ROOT / "examples").glob("*.yaml") if "\nkind: Hosts" in p.read_text())
SOC_PLANS = sorted(p for p in (ROOT / "examples").glob("*.yaml") if "\nkind: SocTest" in p.read_text())


def check_cli(args: list[str], allowed: tuple[int, ...] = (0, 2)) -> int:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)  # an exception here is the failure we look for
    assert result.exit_code in allowed, (args, result.exit_code, result.output[-2000:])
    assert "Traceback" not in result.output
    if result.exit_code:
        lines = result.stderr.splitlines()
        assert lines and all(ERROR_LINE.match(ln) for ln in lines), lines
    return result.exit_code


def mutations() -> st.SearchStrategy[list[tuple[int, int, bytes]]]:
    """Edits (kind, position, bytes): 0 replace, 1 insert, 2 delete; bytes favour YAML syntax and odd encodings."""
    interesting = st.sampled_from([b":", b"-", b"[", b"{", b"&a", b"*a", b"!!int ", b"\n", b" ", b"'", b'"', b"#",
                                   b"\x00", b"\xff", b"\xc3", b"1e400", b"9" * 30, b"---\n", b"\t", b"..", b"/"])
    return st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10**6), interesting | st.binary(min_size=1,
                                                                                                 max_size=3)),
                    min_size=1, max_size=6)


def mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    for kind, pos, chunk in edits:
        at = pos % (len(data) + 1)
        if kind == 0:
            data = data[:at] + chunk + data[at + len(chunk):]
        elif kind == 1:
            data = data[:at] + chunk + data[at:]
        else:
            data = data[:at] + data[at + len(chunk):]
    return data


@fixed(120)
@given(source=st.sampled_from(STACKS), edits=mutations())
def test_mutated_example_stacks(tmp_path_factory: pytest.TempPathFactory, source: Path,
                                edits: list[tuple[int, int, bytes]]) -> None:
    path = tmp_path_factory.mktemp("m") / source.name
    path.write_bytes(mutate(source.read_bytes(), edits))
    check_cli(["validate", str(path)])
    check_cli(["plan", "-o", "json", str(path)])


@fixed(80)
@given(role=st.sampled_from(["hosts", "policy"]), edits=mutations())
def test_mutated_hosts_and_policy_files(tmp_path_factory: pytest.TempPathFactory, role: str,
                                        edits: list[tuple[int, int, bytes]]) -> None:
    original = HOSTS[0].read_bytes() if role == "hosts" else POLICY
    path = tmp_path_factory.mktemp("m") / f"{role}.yaml"
    path.write_bytes(mutate(original, edits))
    stack = str(ROOT / "examples" / "shop.yaml")
    if role == "hosts":
        check_cli(["--hosts", str(path), "plan", stack])
    else:
        check_cli(["plan", "--policy", str(path), stack])


@fixed(80)
@given(source=st.sampled_from(SOC_PLANS), edits=mutations())
def test_mutated_soc_plans(tmp_path_factory: pytest.TempPathFactory, source: Path,
                           edits: list[tuple[int, int, bytes]]) -> None:
    # the loader, not `soc-test`: a plan that survives the mutation would boot a VM
    path = tmp_path_factory.mktemp("m") / source.name
    path.write_bytes(mutate(source.read_bytes(), edits))
    try:
        load_soc_plan(str(path))
    except SpecError as err:
        assert all(ERROR_LINE.match(ln) and "\n" not in ln for ln in err.lines()), err.lines()


def _small(schema: dict) -> dict:
    """The shipped schema with lists kept short, so generated stacks stay quick to plan and render."""
    if isinstance(schema, dict):
        out = {k: _small(v) for k, v in schema.items()}
        if out.get("type") == "array":
            out["maxItems"] = 3
        return out
    if isinstance(schema, list):
        return [_small(v) for v in schema]
    return schema


@fixed(20)
@given(data=st.data())
def test_stacks_generated_from_the_json_schema(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    stack = data.draw(from_schema(_small(stack_json_schema())))
    path = tmp_path_factory.mktemp("g") / "stack.yaml"
    path.write_text(yaml.safe_dump(stack, sort_keys=False))
    if check_cli(["validate", str(path)]) == 0:
        check_cli(["plan", str(path)])
        check_cli(["render", "--out", "-", str(path)])
