"""runtime.py, the shared facts: the rules every layer applies (readiness port, host publishing, an image moved
into a VM), the arch table and the cache root, checked on workloads loaded from real stack YAML."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from hybridorch.core import runtime
from hybridorch.core.runtime import ARCHES, Runtime, State
from hybridorch.core.spec import Workload, load_stack

HEADER = "apiVersion: hybridorch.dev/v1alpha1\nkind: Stack\nmetadata: {name: facts}\nspec:\n  workloads:\n"


def workload(body: str) -> Workload:
    text = HEADER + "\n".join("    " + line for line in ("- " + body.strip()).splitlines()) + "\n"
    return load_stack("facts.yaml", text).workloads[0]


@pytest.mark.parametrize("body, port", [
    ("name: w\n  image: x\n  ports: [8080, 9090]", 8080),                                # the first TCP port
    ("name: w\n  image: x\n  ports: [{port: 53, protocol: UDP}, 8080]", 8080),           # UDP never answers a probe
    ("name: w\n  image: x\n  ports: [8080, 9090]\n  ready: {port: 9090}", 9090),        # ready.port wins
    ("name: w\n  image: x\n  ports: [8080]\n  ready: {marker: up}", None),              # the log line is the check
    ("name: w\n  image: x", None),                                                       # nothing to connect to
    ("name: w\n  runtime: nested\n  containers: [{name: c, image: busybox, command: [sh], ports: [7000]}]", 7000),
])
def test_readiness_port(body: str, port: int | None) -> None:
    assert runtime.readiness_port(workload(body)) == port


def test_host_publishing_rule() -> None:
    assert runtime.host_address(public=False) == "127.0.0.1"
    assert runtime.host_address(public=True) == "0.0.0.0"
    assert [runtime.publishes_host_ports(r) for r in range(3)] == [True, False, False]


@pytest.mark.parametrize("body, inside", [
    ("name: w\n  image: app:1\n  requires: [kernel-modules]", True),     # placed in a VM, the image runs inside it
    ("name: w\n  image: disk:1\n  runtime: vm", False),                   # an explicit vm: the image is its disk
    ("name: w\n  image: app:1\n  vm: {disk: {image: d:1}}", False),       # a VM with its own boot disk
    ("name: w\n  runtime: vm", False),                                    # no image at all
])
def test_runs_image_in_vm(body: str, inside: bool) -> None:
    assert runtime.runs_image_in_vm(workload(body)) is inside


def test_arch_table_is_complete_for_local_guests() -> None:
    assert runtime.LOCAL_ARCHES == ("amd64", "arm64")
    for arch in runtime.LOCAL_ARCHES:
        info = ARCHES[arch]
        assert info.binary and info.package and info.kernel_package and info.triplet and info.loader
        assert info.machine == info.machines[0] and info.console and "virtio_net" in info.modules
    assert runtime.local_arch("riscv64") is None and ARCHES["riscv64"].uname == "riscv64"
    assert {runtime.HOST_ARCHES[ARCHES[a].uname] for a in runtime.LOCAL_ARCHES} == set(runtime.LOCAL_ARCHES)


def test_cache_root_follows_xdg_then_home() -> None:
    assert runtime.cache_root({"XDG_CACHE_HOME": "/x", "HOME": "/h"}) == Path("/x/hybridorch")
    assert runtime.cache_root({"HOME": "/h"}) == Path("/h/.cache/hybridorch")


def test_enums_are_their_names_in_json_and_plain_strings() -> None:
    assert runtime.RUNTIMES == ("container", "sandboxed", "vm", "nested")
    assert json.dumps([Runtime.VM, State.READY]) == '["vm", "ready"]'
    assert f"{State.PENDING}" == "pending" and State.FAILED == "failed"
    assert yaml.safe_dump(str(State.READY)).startswith("ready")   # str() gives the plain string YAML can write


@pytest.mark.parametrize("member", [m for enum in (Runtime, State, runtime.LocalSandbox, runtime.SandboxClass)
                                    for m in enum])
def test_an_enum_member_writes_and_compares_as_its_value(member: runtime.Named) -> None:
    # Python 3.10 (setup.cfg's floor) has no StrEnum and writes `Runtime.VM` for a plain (str, Enum) member;
    # 3.12 changed format() again: Named pins str(), format() and f-strings to the value on every version
    value = member.value
    assert str(member) == f"{member}" == "%s" % member == format(member) == value
    assert f"{member:>12}|{member:<12}" == f"{value:>12}|{value:<12}"
    assert json.dumps({member: [member]}) == json.dumps({value: [value]})
    assert member == value and hash(member) == hash(value) and value in {member} and member in {value}
    assert type(member)(value) is member
    assert yaml.safe_dump({"x": member.value}) == yaml.safe_dump({"x": value})


def test_the_package_runs_on_the_python_it_declares() -> None:
    import configparser

    from tests.conftest import ROOT

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["options"]["python_requires"] == ">=3.10"
    # StrEnum arrived in 3.11: the enums are (str, Enum) with their value pinned (runtime.Named) instead
    users = [p.name for p in (ROOT / "hybridorch").rglob("*.py")
             if re.search(r"import .*\bStrEnum\b|enum\.StrEnum", p.read_text())]
    assert users == []
    assert issubclass(Runtime, str) and issubclass(State, runtime.Named)


def test_a_runtime_from_outside_is_converted_tolerantly() -> None:
    assert runtime.runtime_of("vm") is Runtime.VM
    assert [runtime.runtime_of(v) for v in (None, "", "VM", "kata", 5, ["vm"])] == [None] * 6
    assert runtime.requested_runtime("auto") is None and runtime.requested_runtime("nested") is Runtime.NESTED


@pytest.mark.parametrize("body, read_only, scratch", [
    ("name: w\n  image: x", True, True),                                        # every container, Docker included
    ("name: w\n  image: x\n  writableRoot: true", False, False),                 # the spec's opt-out
    ("name: w\n  image: x\n  requires: [privileged]", False, False),            # privileged: as Kubernetes renders it
    ("name: w\n  image: x\n  requires: [host-devices]", False, False),
    ("name: w\n  image: x\n  volumes: [{name: t, mountPath: /tmp/}]", True, False),   # a volume is its /tmp
])
def test_one_hardening_rule_for_both_targets(body: str, read_only: bool, scratch: bool) -> None:
    w = workload(body)
    assert (runtime.read_only_root(w), runtime.scratch_tmp(w)) == (read_only, scratch)


def test_host_ports_the_first_keeps_the_number_the_others_get_an_automatic_one() -> None:
    text = HEADER + "".join("    - " + line + "\n" for line in (
        "{name: a, image: x, ports: [8080, {port: 53, protocol: UDP}]}",
        "{name: b, image: x, ports: [8080, {port: 53, protocol: TCP}]}",   # 53/TCP is not 53/UDP
        "{name: c, image: x, ports: [{port: 80, hostPort: 8080}]}",      # an explicit hostPort comes first
        "{name: d, image: x, replicas: 0, ports: [9000]}",               # nothing runs: publishes nothing
        "{name: e, runtime: nested, containers: [{name: i, image: y, command: [sh], ports: [9000]}]}",
    ))
    stack = load_stack("facts.yaml", text)
    assert runtime.assign_host_ports(stack.workloads) == {
        ("a", 8080, "TCP"): None, ("a", 53, "UDP"): 53, ("b", 8080, "TCP"): None, ("b", 53, "TCP"): 53,
        ("c", 80, "TCP"): 8080, ("e", 9000, "TCP"): 9000}
    assert [p.port for p in runtime.local_ports(stack.workloads[4])] == [9000]
