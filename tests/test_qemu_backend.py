"""QEMU backend's pure helpers: where each replica's state lives, which replica forwards host ports, and which
forward a readiness probe connects to. Booting real VMs is in e2e/test_qemu.py."""
from __future__ import annotations

import re

import pytest

from hybridorch.backends.qemu import Forward, _forwards, vm_label
from hybridorch.backends.qemu_status import ready_forward
from hybridorch.core.labels import replica_dir
from hybridorch.core.schema import DNS_LABEL
from hybridorch.render.domain import replica_forwards
from hybridorch.core.spec import Port, Readiness, Workload

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
    from hybridorch.render.stack import render_plan
    from hybridorch.render.domain import LocalFacts
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


def test_a_named_containerdisk_is_always_what_the_domain_boots(tmp_path):
    # no machine fact turns the user's disk into the busybox guest: a missing disk is refused by `up` instead
    xml = _local_render(tmp_path, {}).file("ledger-vm/domain.xml").content
    assert f'<source file="{tmp_path}/st/shop/ledger-vm/disk.qcow2"/>' in xml
    assert f"<kernel>{tmp_path}/g/amd64/vmlinuz</kernel>" not in xml   # the busybox guest's kernel


def test_replicas_get_their_own_domain_and_only_replica_0_forwards():
    from hybridorch.render.domain import LocalFacts, domain_context

    vm = {"name": "web", "guest_arch": "x86_64", "accelerated": False, "bus": "virtio", "memory_mib": 64,
          "labels": {"hybridorch.dev/stack": "s"}, "cores": 1, "machine": "q35", "windows": False,
          "user_data": None, "nic_model": "virtio"}
    facts = LocalFacts.placeholder("/c")
    one = domain_context(facts, vm, stack="s", arch="amd64", replica=1, has_disk=False,
                         forwards=replica_forwards(_forwards(WEB), 1), emulated=False)
    assert one["name"] == "hyb-s-web-1" and one["forwards"] == [] and one["labels"]["hybridorch.dev/replica"] == "1"
    assert one["initrd"] == "/c/state/s/web.1/initrd.img" and one["memory_mib"] == 128


def test_one_domain_context_for_stack_vms_and_one_shot_guests():
    """A soc-test board's (or the KVM probe's) domain comes from the same builder as a stack's VM: same keys."""
    from hybridorch.render.domain import LocalFacts, domain_context, guest_domain_context

    facts = LocalFacts.placeholder("/c")
    board = guest_domain_context(facts, name="hyb-soc-x", arch="arm64", accel="tcg", cpus=2, memory_mib=256,
                                 initrd="/w/initrd.img", console_log="/w/console.log", labels={"a": "b"})
    vm = {"name": "web", "guest_arch": "x86_64", "accelerated": False, "bus": "virtio", "memory_mib": 64,
          "labels": {}, "cores": 1, "machine": "q35", "windows": False, "user_data": None, "nic_model": "virtio"}
    stacked = domain_context(facts, vm, stack="s", arch="amd64", replica=0, has_disk=False, forwards=(),
                             emulated=False)
    assert set(board) == set(stacked)
    assert (board["machine"], board["cpu"], board["arch"], board["kernel"]) == \
        ("virt", "cortex-a57", "aarch64", "/c/guests/arm64/vmlinuz")
    assert board["cmdline"] == "console=ttyAMA0 quiet loglevel=3 panic=-1" and board["forwards"] == []


def test_forwards_are_read_back_from_the_rendered_domain_and_from_qemu():
    from hybridorch.render.domain import forwards_in
    from hybridorch.vm.libvirt import usernet_ports

    xml = '<qemu:arg value="user,id=hyb0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=tcp::0-:443"/>'
    assert forwards_in(xml) == (Forward("127.0.0.1", 8080, 80), Forward("0.0.0.0", 0, 443))
    assert str(Forward("0.0.0.0", 0, 443)) == "0.0.0.0:*->443/tcp"   # not bound yet
    usernet = """Hub -1 (hyb0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[HOST_FORWARD]  15       127.0.0.1  8080       10.0.2.15    80     0     0
  TCP[HOST_FORWARD]  14               *  45565       10.0.2.15   443     0     0
  UDP[236 sec]       21       10.0.2.15  33000         8.8.8.8    53     0     0
"""
    assert usernet_ports(usernet) == {80: 8080, 443: 45565}


# --- sandboxed placements: Docker's gVisor/Kata runtime, else their own VM (never runc on the host kernel) ----------

@pytest.mark.parametrize("choice, runtime, in_vm", [
    ("auto", None, True),            # no sandbox runtime in Docker: its own VM
    ("auto", "runsc", False),        # Docker's gVisor
    ("auto", "kata", False),
    ("vm", "runsc", True),           # forced: its own VM whatever Docker has
    ("vm", None, True),
    ("runtime", "runsc", False),
    ("runtime", None, False),        # forced runtime without one: the local backend refuses (never runc)
])
def test_where_a_local_sandbox_runs(choice: str, runtime: str | None, in_vm: bool) -> None:
    from hybridorch.render.domain import sandbox_in_vm

    from hybridorch.core.runtime import LocalSandbox

    assert sandbox_in_vm(LocalSandbox(choice), runtime) is in_vm


def test_the_best_registered_sandbox_runtime_wins_and_runc_is_none():
    from hybridorch.render.domain import sandbox_runtime_of

    assert sandbox_runtime_of(["runc", "hybridorch-runc", "io.containerd.runc.v2"]) is None
    assert sandbox_runtime_of(["kata", "runc", "runsc"]) == "runsc"
    assert sandbox_runtime_of(["io.containerd.kata.v2"]) == "io.containerd.kata.v2"


def _shop_plan(local_sandbox: str = "auto"):
    from dataclasses import replace

    from hybridorch import api
    from hybridorch.core.runtime import LocalSandbox
    from tests.conftest import ROOT

    plan = api.plan_stack(str(ROOT / "examples" / "shop.yaml"))
    return replace(plan, profile=replace(plan.profile, local_sandbox=LocalSandbox(local_sandbox)))


def _render(tmp_path, plan, **facts_kw):
    from hybridorch.render.stack import render_plan
    from hybridorch.render.domain import LocalFacts

    facts = LocalFacts(cache_dir=str(tmp_path), state_dir=str(tmp_path / "st"), guests_dir=str(tmp_path / "g"),
                       run_as="+0:+0", **facts_kw)
    return render_plan(plan, "local", local=facts)


def test_a_sandbox_without_docker_runtime_renders_its_own_small_isolated_vm(tmp_path):
    import xml.etree.ElementTree as ET

    from hybridorch.vm.libvirt import labels_of

    rendered = _render(tmp_path, _shop_plan(), sandbox_runtime=None, accelerators={"amd64": "tcg"})
    xml = rendered.file("recommender-plugin/domain.xml").content
    root = ET.fromstring(xml)
    assert root.findtext("name") == "hyb-shop-recommender-plugin-0"
    # the container's 64Mi limit plus the guest kernel and the initramfs holding its image
    assert root.findtext("memory") == "128" and root.find("memory").get("unit") == "MiB"
    assert root.findtext("vcpu") == "1"
    # the container's CPU limit (250m) and the policy's sandbox overhead (250m) as the vCPU's CFS quota
    assert root.findtext("cputune/quota") == "50000" and root.findtext("cputune/period") == "100000"
    assert root.find("os/initrd").text == f"{tmp_path}/st/shop/recommender-plugin/initrd.img"
    labels = labels_of(xml)
    assert labels["hybridorch.dev/runtime"] == "sandboxed" and labels["hybridorch.dev/tenant"] == "shop"
    # reachable only through its published port, and reaching nothing itself
    assert "user,id=hyb0,restrict=on,hostfwd=tcp:127.0.0.1:8082-:8082" in xml
    # TCG's translation cache bounded, so the VM's host memory stays within the policy's sandbox overhead
    assert root.find("features/tcg/tb-cache").text == "32" and root.find("features/acpi") is not None
    kvm = _render(tmp_path, _shop_plan(), sandbox_runtime=None, accelerators={"amd64": "kvm"})
    assert "tb-cache" not in kvm.file("recommender-plugin/domain.xml").content   # no TCG, no translation cache
    # a full VM keeps its user network as it was
    ledger = rendered.file("ledger-vm/domain.xml").content
    assert "restrict=on" not in ledger and "tb-cache" not in ledger and "cputune" not in ledger


def test_a_sandbox_with_docker_runtime_renders_no_vm_unless_the_policy_says_vm(tmp_path):
    paths = {f.path.split("/")[0] for f in _render(tmp_path, _shop_plan(), sandbox_runtime="runsc").files}
    assert "recommender-plugin" not in paths and "ledger-vm" in paths
    forced = _render(tmp_path, _shop_plan("vm"), sandbox_runtime="runsc")
    assert "restrict=on" in forced.file("recommender-plugin/domain.xml").content
    # the machine-independent rendering (render without this machine's facts) assumes Docker has gVisor
    from hybridorch.render.domain import LocalFacts

    assert LocalFacts.placeholder("/c").sandbox_runtime == "runsc"


def test_the_sandbox_vm_memory_is_the_limit_plus_the_guest_and_its_vcpus_share_the_cpu_limit():
    from hybridorch.render.domain import MIN_INITRAMFS_MIB, SANDBOX_GUEST_MIB, sandbox_memory_mib, vcpu_quota_us

    assert vcpu_quota_us(250, 1) == 25_000 and vcpu_quota_us(1500, 2) == 75_000
    assert vcpu_quota_us(5, 1) == 1000   # libvirt's floor

    assert sandbox_memory_mib(32) == MIN_INITRAMFS_MIB
    assert sandbox_memory_mib(512) == 512 + SANDBOX_GUEST_MIB


def test_a_sandbox_vm_runs_the_workloads_image_with_its_command_and_env():
    from hybridorch.backends.qemu import program_for
    from hybridorch.core.runtime import Runtime

    w = Workload(name="plug", image="hybridorch.local/httpd:1", runtime="sandboxed", command=("httpd", "-f"),
                 args=("-p", "8082"), env={"PAGE_TITLE": "t"}, ports=(Port(8082),))
    (run,) = program_for(w, Runtime.SANDBOXED, "shop").containers
    assert run.command == ("httpd", "-f", "-p", "8082") and run.rootfs == "docker:hybridorch.local/httpd:1"
    assert run.env == {"PAGE_TITLE": "t", "HYBRIDORCH_STACK": "shop", "HYBRIDORCH_WORKLOAD": "plug",
                       "HYBRIDORCH_REPLICA": "0"}
    assert program_for(w, Runtime.SANDBOXED, "shop", 2).containers[0].env["HYBRIDORCH_REPLICA"] == "2"
    assert run.host_network and run.timeout == 0     # a service on the guest's network, where the forward lands
    assert run.read_only                             # the one hardening rule: read-only root, a tmpfs /tmp
    writable = Workload(name="plug", image="x:1", runtime="sandboxed", writable_root=True)
    assert not program_for(writable, Runtime.SANDBOXED).containers[0].read_only
    # args alone go to the image's entrypoint, which only the exported image knows (vm.image_export.materialize)
    (run,) = program_for(Workload(name="plug", image="x:1", runtime="sandboxed", args=("-v",)), Runtime.SANDBOXED).containers
    assert run.command == ()


def test_the_local_backend_sends_sandboxes_in_vms_to_the_vm_side():
    from hybridorch.backends.local import LocalBackend

    plan = _shop_plan()
    sides = {kind: [p.name for p in part.placements] for kind, part in LocalBackend.split(plan)}
    assert sides == {"containers": ["web", "api", "recommender-plugin", "payments"], "vms": ["ledger-vm"]}
    sides = {kind: [p.name for p in part.placements]
             for kind, part in LocalBackend.split(plan, frozenset({"recommender-plugin"}))}
    assert sides == {"containers": ["web", "api", "payments"], "vms": ["recommender-plugin", "ledger-vm"]}


def test_forced_runtime_without_one_is_refused_before_anything_starts(monkeypatch, tmp_path):
    """Docker without a sandbox runtime cannot be produced for real where CI registers runsc: the engine's answer
    (backends.local.sandbox_runtime) is replaced, and named so, here only."""
    from hybridorch.backends import local
    from hybridorch.errors import BackendError

    monkeypatch.setenv("HYBRIDORCH_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(local, "sandbox_runtime", lambda: None)   # fault: no gVisor/Kata registered
    backend = local.LocalBackend()
    with pytest.raises(BackendError, match="localSandbox is runtime, but the Docker engine has no gVisor"):
        backend.up(_shop_plan("runtime"), None)   # type: ignore[arg-type]
    assert backend.sandbox_vms(_shop_plan("auto"), up=True) == frozenset({"recommender-plugin"})
    monkeypatch.setattr(local, "sandbox_runtime", lambda: "runsc")
    assert backend.sandbox_vms(_shop_plan("auto"), up=True) == frozenset()
    assert backend.sandbox_vms(_shop_plan("vm"), up=True) == frozenset({"recommender-plugin"})
    # status looks where the sandbox really is: a VM started before runsc was registered is still found
    (tmp_path / "shop" / "recommender-plugin").mkdir(parents=True)
    (tmp_path / "shop" / "recommender-plugin" / "state.json").write_text("{}")
    assert backend.sandbox_vms(_shop_plan("auto")) == frozenset({"recommender-plugin"})
