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


# --- the rendered domain is what boots: names, labels, accelerator, paths and forwards come from one place ----

def _local_render(tmp_path, facts_kw):
    from hybridorch import api
    from hybridorch.render import render_plan
    from hybridorch.vm.domain import LocalFacts
    from tests.conftest import ROOT

    plan = api.plan_stack(str(ROOT / "examples" / "shop.yaml"))
    facts = LocalFacts(cache_dir=str(tmp_path), state_dir=str(tmp_path / "st"), guests_dir=str(tmp_path / "g"),
                       emulators={"amd64": "/opt/q/qemu-system-x86_64"}, run_as="+0:+0", **facts_kw)
    return render_plan(plan, "local", local=facts)


def test_local_domain_uses_the_machines_facts_and_labels(tmp_path):
    import xml.etree.ElementTree as ET

    from hybridorch.vm.libvirt import labels_of

    xml = _local_render(tmp_path, {"accelerators": {"amd64": "tcg"}}).file("ledger-vm/domain.xml").content
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu"                     # the probe said TCG, whatever the placement wanted
    assert root.findtext("name") == "hyb-shop-ledger-vm-0"
    assert root.findtext("devices/emulator") == "/opt/q/qemu-system-x86_64"
    assert root.find("devices/disk/source").get("file") == f"{tmp_path}/st/shop/ledger-vm/disk.qcow2"
    assert root.find("devices/serial/source").get("path") == f"{tmp_path}/st/shop/ledger-vm/console.log"
    labels = labels_of(xml)
    assert labels["hybridorch.dev/stack"] == "shop" and labels["hybridorch.dev/replica"] == "0"
    assert "hostfwd=tcp:127.0.0.1:8091-:8091" in xml


def test_missing_containerdisk_renders_the_busybox_stand_in(tmp_path):
    xml = _local_render(tmp_path, {"missing_disks": frozenset({"hybridorch.local/ledger-disk:1"})}) \
        .file("ledger-vm/domain.xml").content
    assert f"<kernel>{tmp_path}/g/amd64/vmlinuz</kernel>" in xml and "disk.qcow2" not in xml


def test_replicas_get_their_own_domain_and_only_replica_0_forwards():
    from hybridorch.vm.domain import LocalFacts, domain_context

    vm = {"name": "web", "guest_arch": "x86_64", "accelerated": False, "bus": "virtio", "memory_mib": 64,
          "labels": {"hybridorch.dev/stack": "s"}, "cores": 1, "machine": "q35", "windows": False,
          "user_data": None, "nic_model": "virtio"}
    facts = LocalFacts.placeholder("/c")
    one = domain_context(facts, vm, stack="s", arch="amd64", replica=1, has_disk=False,
                         forwards=replica_forwards(_forwards(WEB), 1), emulated=False)
    assert one["name"] == "hyb-s-web-1" and one["forwards"] == [] and one["labels"]["hybridorch.dev/replica"] == "1"
    assert one["initrd"] == "/c/state/s/web.1/initrd.img" and one["memory_mib"] == 128
