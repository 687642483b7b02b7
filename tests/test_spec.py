"""Stack spec loading: defaults, typed model, and malformed specs reported with file, line and field."""
from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from hybridorch.errors import SpecError
from hybridorch.core.spec import Stack, load_stack, stack_json_schema
from tests.conftest import ROOT

HEADER = """\
apiVersion: hybridorch.dev/v1alpha1
kind: Stack
metadata: {name: demo}
spec:
  workloads:
"""


def test_minimal_stack_gets_documented_defaults(write_stack):
    stack = load_stack(write_stack(HEADER + "    - {name: web, image: local/web:1}\n"))
    assert isinstance(stack, Stack)
    w = stack.workloads[0]
    # runtime auto: no runtime of its own (None), the policy decides
    assert (w.replicas, w.os, w.arch, w.trust, w.tenant, w.runtime) == (1, "linux", "amd64", "internal", "demo", None)
    assert (w.resources.cpu_millis, w.resources.memory_bytes) == (250, 256 * 2**20)
    assert stack.policy == "balanced"
    assert [(h.os, h.arch, h.virtualization) for h in stack.hosts] == [("linux", "amd64", True)]


def test_full_workload_is_typed(write_stack):
    stack = load_stack(write_stack(HEADER + """\
    - name: web
      image: local/web:1
      ports: [8080, {port: 53, protocol: UDP, name: dns, hostPort: 5353, public: true}]
      replicas: 2
      resources: {cpu: "1.5", memory: 1Gi}
      env: {A: "1"}
      volumes: [{name: data, mountPath: /data, size: 2Gi}]
"""))
    w = stack.workloads[0]
    assert [(p.port, p.protocol, p.published, p.public) for p in w.ports] == [(8080, "TCP", 8080, False),
                                                                               (53, "UDP", 5353, True)]
    assert w.resources.cpu_millis == 1500 and w.resources.memory_bytes == 2**30
    assert w.volumes[0].mount_path == "/data" and w.env == {"A": "1"} and w.vcpus == 2


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")
                                           if "kind: Stack" in p.read_text()))
def test_examples_load(example):
    stack = load_stack(str(ROOT / "examples" / example))
    assert stack.workloads


# (body appended after the header, expected line, expected field path, words in the message)
MALFORMED = [
    ("    - {name: web, image: x, resources: {cpu: 5 cores}}\n", 6, "spec.workloads[0].resources.cpu",
     "not a valid CPU quantity"),
    ("    - {name: web, image: x, resources: {memory: lots}}\n", 6, "spec.workloads[0].resources.memory",
     "not a valid memory quantity"),
    ("    - {name: web, image: x, resources: {memory: 0.5}}\n", 6, "spec.workloads[0].resources.memory",
     "whole number of bytes"),
    ("    - {name: Web_1, image: x}\n", 6, "spec.workloads[0].name", "DNS-1123"),
    ("    - {name: web, image: x}\n    - {name: web, image: y}\n", 7, "spec.workloads[1].name",
     "duplicate workload name (first at spec.workloads[0])"),
    ("    - {name: web, image: x, replicas: two}\n", 6, "spec.workloads[0].replicas", "expected an integer, got text"),
    ("    - {name: web, image: x, replicas: -1}\n", 6, "spec.workloads[0].replicas", "must be at least 0"),
    ("    - {name: web, image: x, ports: [70000]}\n", 6, "spec.workloads[0].ports[0]", "must be at most 65535"),
    ("    - {name: web, image: x, ports: [80, 80]}\n", 6, "spec.workloads[0].ports[1]", "the same port and protocol as spec.workloads[0].ports[0]"),
    ("    - {name: web, image: x, os: macos}\n", 6, "spec.workloads[0].os", "must be one of: linux, windows"),
    ("    - {name: web, image: x, arch: sparc}\n", 6, "spec.workloads[0].arch", "must be one of"),
    ("    - {name: web, image: x, trust: maybe}\n", 6, "spec.workloads[0].trust", "must be one of"),
    ("    - {name: web, image: x, runtime: lxc}\n", 6, "spec.workloads[0].runtime", "must be one of"),
    ("    - {name: web, image: x, requires: [root]}\n", 6, "spec.workloads[0].requires[0]", "must be one of"),
    ("    - {name: web, image: x, imgae: y}\n", 6, "spec.workloads[0]", "unknown field (did you mean image? allowed: "),
    ("    - {image: x}\n", 6, "spec.workloads[0].name", "required field is missing"),
    ("    - {name: web}\n", 6, "spec.workloads[0].image", "an image is required"),
    ("    - {name: web, image: x, os: windows, runtime: container}\n", 6, "spec.workloads[0].runtime",
     "contradicts rule foreign-os"),
    ("    - {name: web, image: x, trust: untrusted, runtime: container}\n", 6, "spec.workloads[0].runtime",
     "contradicts rule untrusted-isolation"),
    ("    - {name: web, image: x, requires: [custom-kernel], runtime: sandboxed}\n", 6, "spec.workloads[0].runtime",
     "contradicts rule own-kernel"),
    ("    - {name: web, image: x, arch: arm64, runtime: container}\n", 6, "spec.workloads[0].runtime",
     "contradicts rule foreign-arch"),
    ("    - {name: web, image: x, requires: [host-devices], runtime: container}\n", 6, "spec.workloads[0].runtime",
     "contradicts rule shared-kernel-escape"),
    ("    - {name: web, runtime: nested}\n", 6, "spec.workloads[0].runtime", "needs a `containers` list"),
    ("    - {name: web, image: x, os: windows, arch: riscv64}\n", 6, "spec.workloads[0].arch", "no Windows for riscv64"),
    # two explicit hostPorts collide (the same container port without them does not: test_same_port_twice...)
    ("    - {name: web, image: x, ports: [{port: 80, hostPort: 8080}]}\n"
     "    - {name: api, image: x, ports: [{port: 81, hostPort: 8080}]}\n", 7,
     "spec.workloads[1].ports[0].hostPort", "the hostPort is already published by spec.workloads[0]"),
    ("    - {name: web, image: x, env: {1BAD: v}}\n", 6, "spec.workloads[0].env", "invalid key: a key must be an "
     "environment variable name"),
    ("    - {name: web, image: x, ready: {port: 9}}\n", 6, "spec.workloads[0].ready.port",
     "must be one of the workload's ports"),
    ("    - name: web\n      image: x\n      image: y\n", 8, "spec.workloads[0].image", "duplicate key"),
    ("    - {name: web, image: x, resources: 2}\n", 6, "spec.workloads[0].resources", "expected a mapping"),
    ("    - {name: web, image: x, resources: {cpu: 100000}}\n", 0, "spec.hosts", "more than a host"),
    ("    - {name: web, image: x, ports: {a: 1}}\n", 6, "spec.workloads[0].ports", "expected a list"),
    ("    - {name: web, image: x, containers: [{name: a, image: b}], runtime: vm}\n", 6,
     "spec.workloads[0].containers", "need runtime nested"),
    ("    - {name: web, image: x, vm: {disk: {image: a, pvc: b}}}\n", 6, "spec.workloads[0].vm.disk",
     "either image or pvc"),
    ("    - {name: web, image: x, writableRoot: yes please}\n", 6, "spec.workloads[0].writableRoot", "expected true or false, got text"),
    ("    - {name: web, image: x, runtime: vm, writableRoot: true}\n", 6, "spec.workloads[0].writableRoot",
     "a VM's disk is its own"),
]


def test_same_port_twice_is_valid_and_each_gets_a_host_port(write_stack):
    """Two workloads on 8080 (the most common port of web services) are a valid stack; locally the first keeps
    8080 and the second gets an automatic host port (None), unless an explicit hostPort claims 8080 first."""
    from hybridorch.core.runtime import assign_host_ports

    stack = load_stack(write_stack(HEADER + "    - {name: web, image: x, ports: [8080]}\n"
                                            "    - {name: api, image: x, ports: [8080, 9000]}\n"
                                            "    - {name: admin, image: x, ports: [{port: 80, hostPort: 9000}]}\n"))
    assert assign_host_ports(stack.workloads) == {("web", 8080, "TCP"): 8080, ("api", 8080, "TCP"): None,
                                                  ("api", 9000, "TCP"): None, ("admin", 80, "TCP"): 9000}


def test_writable_root_is_an_opt_out(write_stack):
    stack = load_stack(write_stack(HEADER + "    - {name: web, image: x, writableRoot: true}\n"
                                            "    - {name: api, image: x}\n"))
    assert [w.writable_root for w in stack.workloads] == [True, False]


@pytest.mark.parametrize("body,line,path,words", MALFORMED, ids=[m[2] + ":" + m[3][:20] for m in MALFORMED])
def test_malformed_spec_is_one_located_line(write_stack, body, line, path, words):
    from hybridorch.api import plan_stack

    file = write_stack(HEADER + body)
    with pytest.raises(SpecError) as info:
        plan_stack(file)
    problems = info.value.problems
    assert any(p.path == path and words in p.message and p.line == line for p in problems), problems
    assert all("\n" not in str(p) for p in problems)
    prefix = f"{file}:{line}: {path}: " if line else f"{file}: {path}: "
    assert any(str(p).startswith(prefix) for p in problems)


@pytest.mark.parametrize("text,line,words", [
    ("apiVersion: v1\nkind: Stack\nmetadata: {name: a}\nspec: {workloads: [{name: a, image: b}]}\n", 1,
     "not a hybridorch Stack file (it needs apiVersion: hybridorch.dev/v1alpha1 and kind: Stack)"),
    ("kind: Stack\n", 1, "not a hybridorch Stack file"),
    ("apiVersion: hybridorch.dev/v1alpha1\nkind: Policy\n", 2, "not a hybridorch Stack file (it needs "
     "apiVersion: hybridorch.dev/v1alpha1 and kind: Stack): it is a 'Policy'"),
    ("", 1, "the file is empty"),
    ("spec: [\n", 2, "YAML syntax error"),
    ("a: 1\n---\nb: 2\n", 2, "expected one YAML document"),
    ("- 1\n", 1, "not a hybridorch Stack file"),
])
def test_malformed_documents(write_stack, text, line, words):
    with pytest.raises(SpecError) as info:
        load_stack(write_stack(text))
    assert any(p.line == line and words in p.message for p in info.value.problems), info.value.problems


def test_all_errors_in_a_file_are_reported(write_stack):
    body = """\
    - {name: web, image: x, resources: {cpu: 5 cores}}
    - {name: api, image: x, os: macos}
    - {name: web, image: x}
"""
    with pytest.raises(SpecError) as info:
        load_stack(write_stack(HEADER + body))
    assert [p.line for p in info.value.problems] == [6, 7, 8]


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError) as info:
        load_stack(str(tmp_path / "nope.yaml"))
    assert "cannot read file" in str(info.value)


def test_json_schema_accepts_examples_and_rejects_unknown_fields():
    schema = stack_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for example in (ROOT / "examples").glob("*.yaml"):
        data = yaml.safe_load(example.read_text())
        if data.get("kind") == "Stack":
            assert not list(validator.iter_errors(data)), example
    bad = yaml.safe_load(HEADER + "    - {name: web, image: x, imgae: y}\n")
    assert list(validator.iter_errors(bad))


def test_shipped_json_schema_is_current():
    shipped = json.loads((ROOT / "hybridorch" / "data" / "stack-v1alpha1.schema.json").read_text())
    assert shipped == stack_json_schema(), "refresh: hybridorch schema > hybridorch/data/stack-v1alpha1.schema.json"


def test_duplicate_host_pool_is_located_even_after_a_broken_pool(write_stack):
    # the index in the error is the pool's own, not its position among the pools that typed correctly
    text = HEADER.replace("  workloads:\n", """\
  hosts:
    - {name: a, arch: m68k}
    - {name: b}
    - {name: b}
  workloads:
""") + "    - {name: web, image: x}\n"
    with pytest.raises(SpecError) as info:
        load_stack(write_stack(text))
    assert any(p.path == "spec.hosts[2].name" and p.line == 8 and "duplicate host pool (first at spec.hosts[1])"
               in p.message for p in info.value.problems), info.value.problems
