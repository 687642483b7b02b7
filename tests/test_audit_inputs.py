"""Hostile and malformed files given to `hybridorch audit`, one class at a time: each ends in exit 2 with exactly one
line per error (or exit 1 with the finding when the input is valid but risky), no traceback, and no secret from
the input in the output. Table-driven; each case names the class of issue 19 it covers."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner

from hybridorch.cli import cli
from tests.conftest import ROOT

SECRET = "s3cr3t-TOKEN-7f1e"
ERROR_LINE = re.compile(r"^[^\n]+?(:\d+)?: \S.*$")


def pod(meta: str = "{name: p}", spec: str = "{containers: [{name: c}]}", kind: str = "Pod") -> str:
    return f"apiVersion: v1\nkind: {kind}\nmetadata: {meta}\nspec: {spec}\n"


def vm(domain: str) -> str:
    return (f"apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {{name: {SECRET}}}\nspec:\n  template:\n"
            f"    spec:\n      domain: {domain}\n")


def alias_bomb() -> str:
    levels = [f"a0: &a0 [{SECRET}, {SECRET}, {SECRET}]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 12)]
    return "\n".join(levels) + "\n"


def billion_laughs() -> str:
    entities = [f'<!ENTITY e0 "{SECRET}">'] + [f'<!ENTITY e{i} "' + f"&e{i - 1};" * 10 + '">' for i in range(1, 10)]
    return '<?xml version="1.0"?>\n<!DOCTYPE domain [' + "".join(entities) + "]>\n<domain>&e9;</domain>\n"


@dataclass(frozen=True)
class Case:
    name: str          # the class of issue 19 and the input
    content: str | bytes
    code: int          # 2 bad input, 1 a finding at or above --fail-on low
    expect: str        # in stderr (code 2) or stdout (code 1)
    suffix: str = ".yaml"


CASES = [
    # blocking and exhaustion
    Case("exhaustion: YAML alias bomb", alias_bomb(), 2, "aliases expand to more than"),
    Case("exhaustion: billion laughs", billion_laughs(), 2, "entity declarations are not accepted", ".xml"),
    Case("exhaustion: 2M &amp;", "<domain><name>d</name>" + "<description>" + "&amp;" * 2_000_000
         + "</description></domain>", 1, "HYB001", ".xml"),
    Case("tracebacks: deep YAML nesting", "kind: Pod\nx: " + "[" * 100_000 + "]" * 100_000 + "\n", 2,
         "nested deeper than"),
    Case("tracebacks: deep XML nesting", "<domain>" + "<a>" * 100_000 + "</a>" * 100_000 + "</domain>", 2,
         "XML nested deeper than", ".xml"),
    # wrong types: each one line, never an exception
    Case("types: metadata as a list", pod(meta=f"[{SECRET}]"), 2, ":3: metadata: expected a mapping, found a list"),
    Case("types: containers as strings", pod(spec=f"{{containers: {SECRET}}}"), 2,
         "spec.containers: expected a list, found text"),
    Case("types: containers items as strings", pod(spec=f"{{containers: [{SECRET}]}}"), 2,
         "spec.containers[0]: expected a mapping, found text"),
    Case("types: kind as a list", pod(kind=f"[{SECRET}]"), 2, ":2: kind: expected text, found a list"),
    Case("types: kind as a map", pod(kind=f"{{x: {SECRET}}}"), 2, ":2: kind: expected text, found a mapping"),
    Case("types: name as a list", pod(meta=f"{{name: [{SECRET}]}}"), 2, "metadata.name: expected text, found a list"),
    Case("types: name as a map", pod(meta=f"{{name: {{a: {SECRET}}}}}"), 2, "metadata.name: expected text"),
    Case("types: ports as a mapping", pod(spec=f"{{containers: [{{name: c, ports: {{p: {SECRET}}}}}]}}"), 2,
         "spec.containers[0].ports: expected a list, found a mapping"),
    Case("types: containerPort abc", pod(spec=f"{{containers: [{{name: c, ports: [{{containerPort: {SECRET}}}]}}]}}"),
         2, "containerPort: expected a port number, found text"),
    Case("types: containerPort out of range", pod(spec="{containers: [{name: c, ports: [{containerPort: 70000}]}]}"),
         2, "containerPort: expected a port number from 0 to 65535"),
    Case("types: VM cores many", vm("{cpu: {cores: many}}"), 2, "domain.cpu.cores: expected a whole number of CPUs"),
    Case("types: VM cores .inf", vm("{cpu: {cores: .inf}}"), 2, "cores: expected a whole number of CPUs, found a "
                                                                 "number"),
    Case("types: VM cores 5000 digits", vm("{cpu: {cores: " + "9" * 5000 + "}}"), 2, "cores: expected a whole number"),
    Case("types: VM cpu 1.2.3", vm("{resources: {limits: {cpu: '1.2.3'}}}"), 2, "expected a quantity"),
    Case("types: ttl label an int", pod(meta="{name: p, labels: {hybridorch.dev/ttl: 3600}}"), 2,
         "metadata.labels: expected text, found a number"),
    Case("types: template oops", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {template: oops}\n",
         2, "spec.template: expected a pod template"),
    Case("types: Deployment without a template", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"
         "spec: {replicas: 1}\n", 2, "spec.template: is missing"),
    Case("types: VMI domain as text", "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n"
         f"metadata: {{name: v}}\nspec: {{domain: {SECRET}}}\n", 2, ":4: spec.domain: expected a mapping, found text"),
    Case("types: limits cpu 1.2.3 at its key",
         pod(spec="{containers: [{name: c, resources: {limits: {cpu: '1.2.3'}}}]}"), 2,
         "spec.containers[0].resources.limits.cpu: expected a quantity"),
    Case("types: privileged as text", pod(spec="{containers: [{name: c, securityContext: {privileged: 'yes'}}]}"), 2,
         "privileged: expected true or false, found text"),
    # missed findings
    Case("findings: kind List items", "apiVersion: v1\nkind: List\nitems:\n- " + pod(
        spec="{hostNetwork: true, containers: [{name: c}]}").replace("\n", "\n  ") + "\n", 1, "HYB006"),
    Case("findings: typed FooList items", "apiVersion: v1\nkind: PodList\nitems:\n- " + pod(
        spec="{containers: [{name: c, securityContext: {privileged: true}}]}").replace("\n", "\n  ") + "\n", 1,
         "HYB005"),
    Case("findings: ephemeral containers", pod(spec="{ephemeralContainers: [{name: e, securityContext: {privileged: "
         "true}}], containers: [{name: c, resources: {limits: {cpu: 1, memory: 1Gi}}}]}"), 1, "HYB005"),
    Case("findings: VirtualMachinePool", "apiVersion: pool.kubevirt.io/v1alpha1\nkind: VirtualMachinePool\nmetadata: "
         "{name: p}\nspec: {virtualMachineTemplate: {spec: {template: {spec: {domain: {cpu: {cores: 64}}}}}}}\n", 1,
         "HYB002"),
    Case("findings: unquoted timestamp runs the TTL rule", pod(
        meta="{name: p, creationTimestamp: 2020-01-01T00:00:00Z, labels: {hybridorch.dev/ttl: 1h}}",
        spec="{containers: [{name: c, resources: {limits: {cpu: 1, memory: 1Gi}}}]}"), 1, "HYB014"),
    Case("findings: unquoted date runs the TTL rule", pod(
        meta="{name: p, creationTimestamp: 2020-01-01, labels: {hybridorch.dev/ttl: 1h}}",
        spec="{containers: [{name: c, resources: {limits: {cpu: 1, memory: 1Gi}}}]}"), 1, "HYB014"),
    Case("findings: a foreign kind Stack does not hide what follows",
         f"apiVersion: example.com/v1\nkind: Stack\nmetadata: {{name: {SECRET}}}\n---\n"
         + pod(spec="{containers: [{name: c, securityContext: {privileged: true}}]}"), 1, "HYB005"),
    Case("findings: a BOM before #cloud-config", "\ufeff#cloud-config\npackages: [qemu-guest-agent]\n", 1, "HYB004",
         ""),
    Case("findings: merge keys are followed", "base: &b {name: c, securityContext: {privileged: true}}\n"
         + pod(spec="{containers: [{<<: *b}]}"), 1, "HYB005"),
    # disclosure and messages
    Case("disclosure: an unknown alias name", f"kind: Pod\nmetadata: *{SECRET}\n", 2, "an alias names no anchor"),
    Case("disclosure: a bad flow token", f"kind: Pod\nmetadata: {{{SECRET}: [}}\n", 2, "YAML syntax error"),
    Case("messages: a NUL byte", f"kind: Pod\nmetadata: {{name: {SECRET}}}\x00\nmore: 1\n".encode(), 2,
         ":2: is a binary file (a NUL byte)"),
    Case("messages: a control character", f"kind: Pod\nmetadata: {{name: '{SECRET}\x1b]0;x\x07'}}\n", 2,
         ":2: YAML syntax error: a control or other character"),
    Case("messages: invalid UTF-8", b"kind: Pod\nmetadata: {name: \xff\xfe}\n", 2, ":2: is not UTF-8 text"),
    Case("messages: a huge number in XML", f"<domain><name>{SECRET}</name><vcpu>{'9' * 5000}</vcpu>"
         "<memory>1</memory></domain>", 2, "vcpu: expected a whole number of CPUs", ".xml"),
    Case("messages: a huge character reference in XML", "<domain><name>&#99999999999999999999;</name></domain>", 2,
         ":1: XML syntax error: reference to invalid character number", ".xml"),
    Case("messages: a huge hostfwd port in XML", "<domain xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
         "<qemu:commandline><qemu:arg value='user,hostfwd=tcp::" + "2" * 5000 + "-:22'/></qemu:commandline>"
         "</domain>", 2, "a hostfwd port is not a port number", ".xml"),
    Case("messages: external entity", f'<!DOCTYPE domain [<!ENTITY x SYSTEM "file:///{SECRET}">]><domain>&x;'
         "</domain>", 2, "entity declarations are not accepted", ".xml"),
    Case("messages: not a document", "- just\n- a list\n", 2, ":1: not a Kubernetes object"),
]


def invoke(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)   # an exception is the failure looked for
    return result.exit_code, result.stdout, result.stderr


def check_answer(code: int, out: str, err: str, want: int, expect: str) -> None:
    assert code == want, (code, out[-1000:], err[-1000:])
    assert "Traceback" not in out + err
    assert SECRET not in out + err
    if want == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and ERROR_LINE.match(lines[0]), lines
        assert expect in lines[0], lines
    else:
        assert expect in out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_class_of_bad_input_is_one_line(case: Case, tmp_path: Path) -> None:
    path = tmp_path / f"input{case.suffix}"
    path.write_bytes(case.content if isinstance(case.content, bytes) else case.content.encode())
    started = time.monotonic()
    code, out, err = invoke(["audit", "--fail-on", "low", str(path)])
    assert time.monotonic() - started < 30, "bounded work"
    check_answer(code, out, err, case.code, case.expect)


def run_bounded(args: list[str], timeout: float = 30) -> tuple[int, str, str]:
    """A real process with a timeout: a FIFO or device must not block the tool (the timeout is the guard)."""
    done = subprocess.run([sys.executable, "-m", "hybridorch", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return done.returncode, done.stdout, done.stderr


SPECIAL: list[tuple[str, Callable[[Path], str], str]] = [
    ("blocking: a FIFO", lambda d: (os.mkfifo(d / "fifo.yaml"), str(d / "fifo.yaml"))[1], "it is a FIFO"),
    ("exhaustion: /dev/zero", lambda d: "/dev/zero", "it is a device"),
    ("exhaustion: a sparse 1.5 GB file", lambda d: _sparse(d / "big.yaml", 1536 * 2**20), "input limit"),
    ("messages: a directory", lambda d: str(d), "it is a directory"),
    ("messages: a missing file", lambda d: str(d / "missing.yaml"), "cannot read file"),
]


def _sparse(path: Path, size: int) -> str:
    with open(path, "wb") as fh:
        fh.truncate(size)
    return str(path)


@pytest.mark.parametrize("name,make,expect", SPECIAL, ids=[s[0] for s in SPECIAL])
def test_files_that_are_not_regular_or_too_big_are_refused_in_one_line(name: str, make: Callable[[Path], str],
                                                                       expect: str, tmp_path: Path) -> None:
    path = make(tmp_path)
    code, out, err = run_bounded(["audit", path])
    check_answer(code, out, err, 2, expect)


def test_a_5000_digit_policy_duration_is_one_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("apiVersion: hybridorch.dev/v1alpha1\nkind: Policy\nmetadata: {name: p}\nspec:\n"
                      f"  maxSnapshotAge: {'9' * 5000}d\n")
    code, out, err = invoke(["audit", "--policy", str(policy), str(ROOT / "examples" / "shop.yaml")])
    assert code == 2 and "Traceback" not in out + err
    assert err.count("\n") == 1 and "spec.maxSnapshotAge" in err, err


def test_every_problem_of_a_file_is_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(pod(meta="[x]") + "---\n" + pod(spec="{containers: [{name: c, ports: {a: 1}}]}"))
    code, out, err = invoke(["audit", str(path)])
    check_lines = err.splitlines()
    assert code == 2 and len(check_lines) == 2 and all(ERROR_LINE.match(ln) for ln in check_lines), err
    assert check_lines[0].startswith(f"{path}:3: metadata") and check_lines[1].startswith(f"{path}:9: spec.containers")


def test_a_hybridorch_stack_is_known_by_apiversion_and_kind(tmp_path: Path) -> None:
    # the real stack is planned (its findings name its workloads); another apiVersion's Stack is a foreign object
    code, out, _ = invoke(["audit", "--fail-on", "never", str(ROOT / "examples" / "insecure.yaml")])
    assert code == 0 and "workload" in out
    foreign = tmp_path / "foreign.yaml"
    foreign.write_text("apiVersion: example.com/v1\nkind: Stack\nmetadata: {name: s}\nspec: {workloads: 3}\n")
    code, out, err = invoke(["audit", str(foreign)])
    assert code == 0 and out.strip() == "no findings", (out, err)
