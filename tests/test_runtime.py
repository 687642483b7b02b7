"""runtime.py, the shared facts: the rules every layer applies (readiness port, host publishing, an image moved
into a VM), the arch table and the cache root, checked on workloads loaded from real stack YAML."""
from __future__ import annotations

import json
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
