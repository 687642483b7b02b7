"""QEMU backend's pure helpers: where each replica's state lives, which replica forwards host ports, and which
forward a readiness probe connects to. Booting real VMs is in e2e/test_qemu.py."""
from __future__ import annotations

import re

import pytest

from hybridorch.backends.qemu import Forward, _forwards, ready_forward, replica_dir, replica_forwards, vm_label
from hybridorch.schema import DNS_LABEL
from hybridorch.spec import Port, Readiness, Workload

WEB = Workload(name="web", image="x", runtime="vm", replicas=3,
               ports=(Port(80, host_port=8080), Port(443, host_port=8443, public=True)))


def test_replica_0_keeps_the_workload_dir_and_others_cannot_collide_with_a_workload_name():
    assert [replica_dir("web", i) for i in range(3)] == ["web", "web.1", "web.2"]
    # no workload can be named like another workload's replica dir
    assert not re.fullmatch(DNS_LABEL, replica_dir("web", 1))
    assert [vm_label("web", i) for i in range(2)] == ["web", "web replica 1"]


def test_only_replica_0_forwards_host_ports():
    forwards = _forwards(WEB)
    assert forwards == (Forward("127.0.0.1", 8080, 80), Forward("0.0.0.0", 8443, 443))
    assert replica_forwards(forwards, 0) == forwards
    assert replica_forwards(forwards, 1) == replica_forwards(forwards, 2) == ()


@pytest.mark.parametrize("ready, replica, expected", [
    (None, 0, Forward("127.0.0.1", 8080, 80)),               # no readiness: the first forwarded port
    (Readiness(port=443), 0, Forward("0.0.0.0", 8443, 443)),
    (Readiness(marker="up"), 0, None),                       # a marker alone: console only
    (Readiness(port=9999), 0, None),                         # a port nobody forwards cannot be probed
    (None, 1, None),                                         # replicas > 0: no forwards, console marker
    (Readiness(port=443), 2, None),
])
def test_ready_forward(ready: Readiness | None, replica: int, expected: Forward | None) -> None:
    w = Workload(name="web", image="x", runtime="vm", ports=WEB.ports, ready=ready)
    assert ready_forward(w, replica_forwards(_forwards(w), replica)) == expected
