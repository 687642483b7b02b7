"""Errors about input files (stack, hosts, policy, SocTest plan) say file, line, field path and what is wrong in
words, and never quote what the file holds: no values, no unknown keys, no map keys, no images, no names. A file
with many problems prints at most 20 of them and one `FILE: and N more problems` line. Image references follow the
Docker/OCI grammar; durations and quantities of any size are refused in words, never with a crash."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from hybridorch.cli import cli
from hybridorch.core.durations import MAX_SECONDS, is_duration, parse_duration
from hybridorch.core.spec import image_problem, load_hosts, load_stack
from hybridorch.errors import MAX_PROBLEM_LINES, HybridorchError, Problem, SpecError
from hybridorch.ops.soc import load_soc_plan
from tests.conftest import ROOT

SECRET = "SECRET-7f3a"
LINE = re.compile(r"^[^:]+:\d+: [^ ]*: \S")   # FILE:LINE: PATH: message
HEAD = "apiVersion: hybridorch.dev/v1alpha1\n"


def stack(workload: str = "", spec: str = "", meta: str = "") -> str:
    return (HEAD + f"kind: Stack\nmetadata:\n  name: s\n{meta}spec:\n{spec}  workloads:\n"
            "    - name: web\n      image: hybridorch.local/httpd:1\n" + workload)


def hosts(pool: str) -> str:
    return HEAD + "kind: Hosts\nmetadata: {name: lab}\nspec:\n  pools:\n    - {name: p, count: 1" + pool + "}\n"


def policy(spec: str) -> str:
    return HEAD + "kind: Policy\nmetadata: {name: p}\nspec:\n" + spec


def soc(container: str = "", target: str = "", extra: str = "") -> str:
    return (HEAD + "kind: SocTest\nmetadata: {name: t}\nspec:\n  target:\n    arch: amd64\n" + target + extra
            + "  containers:\n    - {name: c, command: [\"true\"]" + (container or ", image: busybox") + "}\n")


# (content, field path of the problem, words of the message): every value below carries SECRET
STACKS = [
    (stack(f"      {SECRET}: 1\n"), "spec.workloads[0]", "unknown field (allowed: name, image,"),
    (stack(spec=f"  {SECRET}: x\n"), "spec", "unknown field (allowed: policy, hosts, workloads)"),
    (stack() + f"{SECRET}: 1\n", "", "unknown field (allowed: apiVersion, kind, metadata, spec)"),
    (stack(f"      ttl: {SECRET}\n"), "spec.workloads[0].ttl", "must be a duration such as 30m"),
    (stack(f"      resources: {{memory: {SECRET}}}\n"), "spec.workloads[0].resources.memory",
     "not a valid memory quantity"),
    (stack(f"      runtime: {SECRET}\n"), "spec.workloads[0].runtime", "must be one of: auto, container,"),
    (stack(f"      requires: [{SECRET}]\n"), "spec.workloads[0].requires[0]", "must be one of: privileged,"),
    (stack(f"      command: {SECRET}\n"), "spec.workloads[0].command", "expected a list, got text"),
    (stack(f"      labels: {{team: '{SECRET} x'}}\n"), "spec.workloads[0].labels", "must be a label value"),
    (stack(f"      labels: {{'{SECRET}/../x': v}}\n"), "spec.workloads[0].labels",
     "invalid key: a key must be a label"),
    (stack(f"      env: {{'A {SECRET}': v}}\n"), "spec.workloads[0].env", "invalid key: a key must be an environment"),
    (stack(f"      allowFrom: ['{SECRET}']\n"), "spec.workloads[0].allowFrom[0]", "must be a DNS-1123 label"),
    (stack(f"      allowFrom: [{SECRET.lower()}]\n"), "spec.workloads[0].allowFrom[0]", "not a tenant of this stack"),
    (stack().replace("name: web", f"name: \"a\\n{SECRET}\""), "spec.workloads[0].name", "must be a DNS-1123"),
    (stack().replace("name: web", f"name: \"\\e]0;x\\a{SECRET}\""), "spec.workloads[0].name", "must be a DNS"),
    (stack().replace("hybridorch.local/httpd:1", f"\"{SECRET}@@ bad\""), "spec.workloads[0].image",
     "must be an image reference"),
    (stack().replace("hybridorch.local/httpd:1", f"\"img\\n{SECRET}\""), "spec.workloads[0].image",
     "must be an image reference"),
    (stack(f"      vm: {{disk: {{image: '-{SECRET}'}}}}\n"), "spec.workloads[0].vm.disk.image",
     "must be an image reference"),
    (stack(f"      runtime: nested\n      containers: [{{name: c, image: 'UP/{SECRET}'}}]\n").replace(
        "      image: hybridorch.local/httpd:1\n", ""), "spec.workloads[0].containers[0].image",
     "must be an image reference"),
    (stack(f"      ports: [{{port: 80, hostPort: 8080}}]\n") + "    - {name: " + SECRET.lower()
     + ", image: x, ports: [{port: 81, hostPort: 8080}]}\n", "spec.workloads[1].ports[0].hostPort",
     "already published by spec.workloads[0]"),
    (stack(spec=f"  policy: {SECRET}.yaml\n"), "spec.policy", "neither a built-in policy"),
    (stack(spec=f"  policy: ../{SECRET}.yaml\n"), "spec.policy", "outside the stack's directory"),
    (stack(spec=f"  hosts: [{{name: p, arch: {SECRET}}}]\n"), "spec.hosts[0].arch", "must be one of: amd64,"),
    (stack("    - name: " + SECRET.lower() + "\n      image: x\n").replace("name: web", "name: " + SECRET.lower()),
     "spec.workloads[1].name", "duplicate workload name (first at spec.workloads[0])"),
    (stack("    - " + SECRET + "\n"), "spec.workloads[1]", "expected a mapping, got text"),
]


@pytest.mark.parametrize("content,path,words", STACKS, ids=[str(i) for i in range(len(STACKS))])
def test_stack_errors_quote_nothing_of_the_file(tmp_path: Path, content: str, path: str, words: str) -> None:
    file = tmp_path / "s.yaml"
    file.write_text(content)
    result = CliRunner().invoke(cli, ["validate", str(file)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert SECRET not in result.output and SECRET.lower() not in result.output, result.output
    lines = result.stderr.splitlines()
    where = f"{file}:" + r"\d+: " + (re.escape(path) + ": " if path else "")
    assert any(re.match(where + ".*" + re.escape(words), ln) for ln in lines), lines


SIDE_FILES = [
    ("hosts", hosts(f", {SECRET}: 1"), "spec.pools[0]", "unknown field (allowed: name, os,"),
    ("hosts", hosts(f", cpu: 'abc{SECRET}'"), "spec.pools[0].cpu", "not a valid CPU quantity"),
    ("hosts", hosts(f", arch: {SECRET}"), "spec.pools[0].arch", "must be one of: amd64, arm64, riscv64"),
    ("hosts", hosts(", memory: " + "9" * 5000), "spec.pools[0].memory", "not a valid memory quantity"),
    ("hosts", hosts(", idleWatts: 500, peakWatts: 100"), "spec.pools[0].idleWatts", "must not be above peakWatts"),
    ("policy", policy(f"  base: {SECRET}\n"), "spec.base", "must be one of: secure, balanced, efficient"),
    ("policy", policy(f"  overheads: {{vm: {{cpu: {SECRET}, memory: 1Gi}}}}\n"), "spec.overheads.vm.cpu",
     "not a valid CPU quantity"),
    ("policy", policy(f"  {SECRET}: 1\n"), "spec", "unknown field (allowed: base,"),
    ("policy", policy("  maxSnapshotAge: " + "9" * 12 + "w\n"), "spec.maxSnapshotAge",
     "must not be longer than 100 years"),
    ("soc", soc(target=f"    memory: {SECRET}\n"), "spec.target.memory", "not a valid memory quantity"),
    ("soc", soc(extra=f"  {SECRET}: 1\n"), "spec", "unknown field (allowed: target, guest, containers)"),
    ("soc", soc(extra=f"  guest: {{kernel: {SECRET}}}\n"), "spec.guest.kernel", "must be one of: debian"),
    ("soc", soc(f", image: busybox, expect: {{output: '({SECRET}'}}"), "spec.containers[0].expect.output",
     "not a regular expression: missing ), unterminated subpattern at position 0"),
    ("soc", soc(f", image: '{SECRET} bad'"), "spec.containers[0].image", "must be an image reference"),
    ("soc", soc(", image: 'UPPER CASE:@@'"), "spec.containers[0].image", "must be an image reference"),
    ("soc", soc(f", image: busybox, rootfs: ../{SECRET}"), "spec.containers[0].rootfs", "outside the plan's"),
]


@pytest.mark.parametrize("role,content,path,words", SIDE_FILES, ids=[str(i) for i in range(len(SIDE_FILES))])
def test_hosts_policy_and_plan_errors_quote_nothing(tmp_path: Path, role: str, content: str, path: str,
                                                   words: str) -> None:
    side = tmp_path / "side.yaml"
    side.write_text(content)
    good = tmp_path / "s.yaml"
    good.write_text(stack())
    args = {"hosts": ["--hosts", str(side), "plan", str(good)], "policy": ["plan", "--policy", str(side), str(good)],
            "soc": ["soc-test", str(side)]}[role]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert SECRET not in result.output and "UPPER" not in result.output, result.output
    lines = result.stderr.splitlines()
    assert lines and all(LINE.match(ln) for ln in lines), lines
    assert any(ln.startswith(f"{side}:") and f": {path}: {words}" in ln for ln in lines), lines


def test_the_capacity_check_reports_inverted_watts_at_the_file_and_line(tmp_path: Path) -> None:
    side = tmp_path / "h.yaml"
    side.write_text(hosts(", idleWatts: 500, peakWatts: 100"))
    good = tmp_path / "s.yaml"
    good.write_text(stack())
    result = CliRunner().invoke(cli, ["capacity", "--hosts", str(side), str(good)], catch_exceptions=False)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"{side}:6: spec.pools[0].idleWatts: must not be above peakWatts (an idle "
                                          "host draws less power than a busy one)"]
    with pytest.raises(SpecError):
        load_stack(str(_write(tmp_path / "t.yaml", stack(spec="  hosts: [{name: p, idleWatts: 9, peakWatts: 8}]\n"))))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_an_unknown_key_is_never_part_of_the_path(tmp_path: Path) -> None:
    path = str(_write(tmp_path / "s.yaml", stack("      timout: 5\n")))
    with pytest.raises(SpecError) as err:
        load_stack(path)
    (problem,) = err.value.problems
    assert (problem.line, problem.path) == (9, "spec.workloads[0]")
    assert problem.message.startswith("unknown field (allowed: name, image,") and "timout" not in str(problem)


def test_a_plan_with_a_bad_image_gets_one_problem_not_two(tmp_path: Path) -> None:
    path = str(_write(tmp_path / "p.yaml", soc(", image: 'no such image'")))
    with pytest.raises(SpecError) as err:
        load_soc_plan(path)
    assert [(p.line, p.path) for p in err.value.problems] == [(8, "spec.containers[0].image")]


# --- at most 20 problem lines a file ------------------------------------------------------------------------------

def test_many_problems_print_twenty_lines_and_a_count(tmp_path: Path) -> None:
    workloads = "".join(f"    - {{name: w{i}, image: x, ttl: 0s}}\n" for i in range(30))
    path = _write(tmp_path / "s.yaml", HEAD + "kind: Stack\nmetadata: {name: s}\nspec:\n  workloads:\n" + workloads)
    result = CliRunner().invoke(cli, ["validate", str(path)], catch_exceptions=False)
    lines = result.stderr.splitlines()
    assert result.exit_code == 2 and len(lines) == MAX_PROBLEM_LINES + 1 == 21
    assert lines[-1] == f"{path}: and 10 more problems"
    assert lines[0] == f"{path}:6: spec.workloads[0].ttl: " + lines[0].split(".ttl: ", 1)[1]


def test_the_cap_is_per_file_and_keeps_every_problem() -> None:
    problems = [Problem("a.yaml", i + 1, "x", "bad") for i in range(25)] + [Problem("b.yaml", 1, "y", "bad")]
    err = SpecError(problems)
    assert len(err.problems) == 26   # all kept: audit and the API still see every one
    assert err.lines()[20] == "a.yaml: and 5 more problems" and err.lines()[21:] == ["b.yaml:1: y: bad"]
    assert SpecError(problems[:21]).lines()[-1] == "a.yaml: and 1 more problem"
    assert len(SpecError(problems[:20]).lines()) == 20


# --- image references -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("image", [
    "busybox", "x", "local/web:1", "postgres:16", "docker:24-cli", "hybridorch.local/httpd:1",
    "hybridorch.local/httpd:1-f5caad274ecc", "quay.io/coreos/etcd:v3.5.0", "localhost:5000/team/app:latest",
    "registry.example.com:443/a/b/c", "a_b__c-d---e.f/g", "Registry.Example.com/x", "[::1]:5000/x",
    "busybox@sha256:" + "a" * 64, "busybox:1.36@sha256:" + "0" * 64, "x:" + "t" * 128, "a" * 255,
])
def test_valid_image_references(image: str) -> None:
    assert image_problem(image) is None


@pytest.mark.parametrize("image", [
    "", "--privileged", "-v/:/host", "hybridorch.local/../../etc:1", "a/..", "a//b", "/a", "a/", "x:", ":1",
    "x@sha256:abc", "x@md5:" + "a" * 32, "UPPER/x", "Busybox", "a b", "a\tb", "img\nFORGED", "web\u202e",
    "a\x1b[31m", "x:" + "t" * 129, "x:-tag", "a" * 256, "h.io/" + "a" * 251, "a..b", "a.-b",
])
def test_invalid_image_references(image: str) -> None:
    message = image_problem(image)
    assert message and (not image or image not in message)


def test_project_examples_and_plans_pass_the_image_grammar() -> None:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        text = path.read_text()
        if "kind: Stack" in text:
            assert load_stack(str(path)).workloads
        elif "kind: SocTest" in text:
            assert load_soc_plan(str(path)).containers
        elif "kind: Hosts" in text:
            assert load_hosts(str(path))


# --- durations and quantities of any size -------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["9" * 5000 + "d", "9" * 13 + "s", "999999999999w", "36501d", "1" * 4301 + "s"])
def test_huge_durations_are_refused_not_crashed(text: str) -> None:
    assert not is_duration(text)
    with pytest.raises(HybridorchError) as err:
        parse_duration(text)
    assert err.value.exit_code == 2 and not isinstance(err.value, (ValueError, OverflowError))
    assert parse_duration("36500d") == MAX_SECONDS and is_duration("999999999999s") is False


@pytest.mark.parametrize("ttl,words", [("9" * 12 + "w", "longer than 100 years"), ("9" * 61 + "w", "100 years"),
                                       ("9" * 5000 + "d", "must be a duration")])
def test_a_huge_ttl_in_a_stack_is_a_located_error(tmp_path: Path, ttl: str, words: str) -> None:
    path = str(_write(tmp_path / "s.yaml", stack(f"      ttl: '{ttl}'\n")))
    with pytest.raises(SpecError) as err:
        load_stack(path)
    (problem,) = err.value.problems
    assert problem.path == "spec.workloads[0].ttl" and words in problem.message and "999" not in problem.message


def test_audit_of_a_manifest_with_a_huge_ttl_label_does_not_crash(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "m.yaml", (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n  namespace: n\n"
        "  creationTimestamp: '2020-01-01T00:00:00Z'\n  labels:\n    hybridorch.dev/ttl: '" + "9" * 5000 + "d'\n"
        "spec:\n  replicas: 1\n  template:\n    spec:\n      containers:\n"
        "        - {name: c, image: 'nginx:1', resources: {limits: {cpu: 100m, memory: 64Mi}}}\n"))
    result = CliRunner().invoke(cli, ["audit", "--fail-on", "never", str(manifest)])
    assert result.exit_code == 0, result.output


def test_audit_max_image_age_of_5000_digits_is_exit_2() -> None:
    shop = str(ROOT / "examples" / "shop.yaml")
    result = CliRunner().invoke(cli, ["audit", "--max-image-age", "9" * 5000 + "d", shop])
    assert result.exit_code == 2 and "internal error" not in result.output, result.output[:300]


@pytest.mark.parametrize("resources,fld", [("{cpu: '1e999999'}", "cpu"), ("{cpu: 1e999999}", "cpu"),
                                           ("{memory: " + "9" * 5000 + "}", "memory"),
                                           ("{memory: '" + "9" * 5000 + "Ki'}", "memory")])
def test_huge_quantities_are_refused_in_words(tmp_path: Path, resources: str, fld: str) -> None:
    path = str(_write(tmp_path / "s.yaml", stack(f"      resources: {resources}\n")))
    with pytest.raises(SpecError) as err:
        load_stack(path)
    (problem,) = err.value.problems
    assert problem.path == f"spec.workloads[0].resources.{fld}" and "not a valid" in problem.message
    assert "999" not in str(problem)


def test_values_typed_on_the_command_line_may_be_quoted(tmp_path: Path) -> None:
    good = _write(tmp_path / "s.yaml", stack())
    result = CliRunner().invoke(cli, ["plan", "--policy", SECRET, str(good)])
    assert result.exit_code == 2 and SECRET in result.output   # the user's own word, said back to them
