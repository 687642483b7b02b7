"""End-to-end: `vm` workloads as real local QEMU guests (TCG here), and every way bringing one up can fail."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, free_ports, hybridorch, require
from hybridorch import api
from hybridorch.backends.qemu import QemuBackend
from hybridorch.errors import BackendError
from hybridorch.vm.guestimage import guest_dir

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _qemu_ready() -> None:
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 missing (e2e/packages.txt)")
    require((guest_dir("amd64") / "guest.json").exists(),
            "no amd64 guest cached: run e2e/setup.d/20-guests.sh")


def live_qemus(state_dir: Path) -> list[int]:
    """Running (non-zombie) processes whose command line points into this test's state dir."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        # QEMU only: a `virsh create DIR/domain.xml` client names the state dir too
        if str(state_dir) in cmd and "qemu-system" in cmd.split("\0")[0] and state != "Z":
            pids.append(int(entry.name))
    return pids


def vm_stack(name: str, workloads: str) -> str:
    return f"""
        apiVersion: hybridorch.dev/v1alpha1
        kind: Stack
        metadata:
          name: {name}
        spec:
          workloads:
        {workloads}
        """


def http_get(port: int, path: str = "/") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return resp.read().decode()


def test_vm_serves_http_is_idempotent_and_down_cleans(state_dir: Path, stack_file) -> None:
    p1, p2 = free_ports(2)
    body = f"""
            - name: web
              runtime: vm
              resources: {{cpu: "1", memory: 192Mi}}
              ports: [{{port: 80, hostPort: {p1}}}]
            - name: other
              runtime: vm
              resources: {{cpu: "1", memory: MEM}}
              ports: [{{port: 8000, hostPort: {p2}}}]
    """
    path = stack_file(vm_stack("e2e-qemu", body.replace("MEM", "160Mi")), "stack.yaml")
    hybridorch("up", path)
    assert "<h1>web</h1>" in http_get(p1)
    assert "<h1>other</h1>" in http_get(p2)

    status = {s["name"]: s for s in json.loads(hybridorch("status", path, "-o", "json").stdout)}
    assert status["web"]["state"] == "ready" and status["web"]["accelerator"] in ("tcg", "kvm")
    expected_accel = "tcg" if "kvm\": false" in (Path.home() / ".cache/hybridorch/kvm-probe.json").read_text() \
        else "kvm"
    assert status["web"]["accelerator"] == expected_accel
    assert f"127.0.0.1:{p1}->80/tcp" in status["web"]["ports"]
    pids = {n: s["pid"] for n, s in status.items()}
    # libvirt runs exactly the rendered domain, visible to virsh with the stack's labels
    listed = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--name"], capture_output=True, text=True).stdout
    assert {"hyb-e2e-qemu-web-0", "hyb-e2e-qemu-other-0"} <= set(listed.split())
    dumped = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", "hyb-e2e-qemu-web-0"], capture_output=True,
                            text=True).stdout
    assert 'key="hybridorch.dev/stack" value="e2e-qemu"' in dumped
    rendered = hybridorch("render", path, "--target", "local", "--out", "-").stdout
    assert "hyb-e2e-qemu-web-0" in rendered and str(state_dir / "e2e-qemu" / "web" / "initrd.img") in rendered
    assert status["web"]["guest"] == "busybox" and "busybox guest" in status["web"]["detail"]

    logs = hybridorch("logs", path, "web").stdout
    assert "@@HYB BOOTED" in logs and "x86_64" in logs

    # unchanged spec: nothing restarts
    started = time.monotonic()
    hybridorch("up", path)
    assert time.monotonic() - started < 10
    again = {s["name"]: s["pid"] for s in json.loads(hybridorch("status", path, "-o", "json").stdout)}
    assert again == pids

    # one VM changed: only that one is replaced
    Path(path).write_text(Path(path).read_text().replace("160Mi", "176Mi"))
    hybridorch("up", path)
    changed = {s["name"]: s["pid"] for s in json.loads(hybridorch("status", path, "-o", "json").stdout)}
    assert changed["web"] == pids["web"] and changed["other"] != pids["other"]
    assert "<h1>other</h1>" in http_get(p2)
    assert sorted(live_qemus(state_dir)) == sorted(changed.values())

    out = hybridorch("down", path).stdout
    assert "removed vm web" in out and "removed vm other" in out
    assert live_qemus(state_dir) == []
    assert not (state_dir / "e2e-qemu").exists()
    listed = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True,
                            text=True).stdout
    assert not [n for n in listed.split() if n.startswith("hyb-e2e-qemu-")]


def test_vm_replicas_boot_one_vm_each_and_scale(state_dir: Path, stack_file) -> None:
    (port,) = free_ports(1)
    path = stack_file(vm_stack("e2e-qreplicas", f"""
            - name: web
              runtime: vm
              replicas: 2
              resources: {{cpu: "1", memory: 128Mi}}
              ports: [{{port: 80, hostPort: {port}}}]
    """))
    hybridorch("up", path)
    (row,) = json.loads(hybridorch("status", path, "-o", "json").stdout)
    pids = row["pids"]
    assert row["state"] == "ready" and row["detail"].startswith("2/2 replicas running")
    assert len(set(pids)) == 2 and all(Path(f"/proc/{pid}").exists() for pid in pids)
    assert sorted(live_qemus(state_dir)) == sorted(pids)
    assert row["ports"] == [f"127.0.0.1:{port}->80/tcp"]   # replica 0 only: a host port has one listener
    assert "<h1>web</h1>" in http_get(port)
    stack = state_dir / "e2e-qreplicas"
    assert sorted(d.name for d in stack.iterdir()) == ["web", "web.1"]
    assert "hostfwd" not in Path(f"/proc/{pids[1]}/cmdline").read_bytes().decode(errors="replace")
    assert "@@HYB READY" in (stack / "web.1" / "console.log").read_text(errors="replace")

    hybridorch("up", path)   # unchanged: both VMs stay
    (again,) = json.loads(hybridorch("status", path, "-o", "json").stdout)
    assert again["pids"] == pids and again["state"] == "ready"

    Path(path).write_text(Path(path).read_text().replace("128Mi", "144Mi"))
    hybridorch("up", path)   # changed spec: every replica is replaced
    (changed,) = json.loads(hybridorch("status", path, "-o", "json").stdout)
    assert changed["state"] == "ready" and not set(changed["pids"]) & set(pids)
    assert sorted(live_qemus(state_dir)) == sorted(changed["pids"])
    pids = changed["pids"]

    Path(path).write_text(Path(path).read_text().replace("replicas: 2", "replicas: 1"))
    hybridorch("up", path)   # scale down: exactly replica 1's VM stops
    (one,) = json.loads(hybridorch("status", path, "-o", "json").stdout)
    assert one["pids"] == pids[:1] and one["detail"].startswith("1/1 replicas running")
    assert live_qemus(state_dir) == pids[:1]
    assert sorted(d.name for d in stack.iterdir()) == ["web"]
    assert "<h1>web</h1>" in http_get(port)

    hybridorch("down", path)
    assert live_qemus(state_dir) == []
    assert not stack.exists()


def _plan(path: str):
    return api.plan_stack(path)


def test_qemu_missing_is_one_line_error(state_dir: Path, stack_file, monkeypatch: pytest.MonkeyPatch) -> None:
    (port,) = free_ports(1)
    path = stack_file(vm_stack("e2e-noqemu", f"""
            - name: web
              runtime: vm
              ports: [{{port: 80, hostPort: {port}}}]
    """))
    result = hybridorch("up", path, env={"HYBRIDORCH_QEMU_BINARY": "/nonexistent/qemu-system-x86_64"}, check=False)
    assert result.returncode == 4
    assert result.stderr.strip().splitlines() == [
        "error: QEMU is not installed (/nonexistent/qemu-system-x86_64 not found): apt-get install qemu-system-x86"]
    assert "Traceback" not in result.stderr
    assert list(state_dir.rglob("*.pid")) == [] and live_qemus(state_dir) == []


def test_a_containerdisk_nowhere_to_be_found_is_refused_before_anything_starts(state_dir: Path, stack_file,
                                                                                docker_client) -> None:
    # nothing boots in place of the disk the user named: `up` refuses in one line, and starts nothing at all
    # (the container beside the VM included)
    (port, web_port) = free_ports(2)
    image = "hybridorch.local/e2e-no-such-disk:1"
    path = stack_file(vm_stack("e2e-nodisk", f"""
            - name: web
              image: hybridorch.local/httpd:1
              command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
              ports: [{{port: 8080, hostPort: {web_port}}}]
            - name: db
              runtime: vm
              ports: [{{port: 80, hostPort: {port}}}]
              vm:
                disk: {{image: {image}}}
    """))
    result = hybridorch("up", path, check=False)
    assert result.returncode == 4, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"error: workload db: containerDisk {image} is not in the local Docker engine "
                               "and no recipe builds it"), lines[0]
    assert f"docker pull {image}" in lines[0]
    assert live_qemus(state_dir) == [] and not (state_dir / "e2e-nodisk").exists()
    assert docker_client.containers.list(all=True, filters={"label": "hybridorch.dev/stack=e2e-nodisk"}) == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", web_port), timeout=1).close()


def test_port_in_use_is_refused_before_boot(state_dir: Path, stack_file) -> None:
    (port,) = free_ports(1)
    path = stack_file(vm_stack("e2e-portbusy", f"""
            - name: web
              runtime: vm
              ports: [{{port: 80, hostPort: {port}}}]
    """))
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen(1)
        with pytest.raises(BackendError, match=f"port 127.0.0.1:{port} is already in use"):
            QemuBackend().up(_plan(path), None)
    assert live_qemus(state_dir) == []
    assert not any((state_dir / "e2e-portbusy").glob("*/qemu.pid"))


def test_vm_not_ready_in_time_is_killed_and_shows_console(state_dir: Path, stack_file) -> None:
    path = stack_file(vm_stack("e2e-slow", """
            - name: never
              runtime: vm
              command: ["sh", "-c", "echo still-waiting-for-godot"]
              ready: {marker: "this marker is never printed", timeout: 15}
    """))
    with pytest.raises(BackendError) as err:
        QemuBackend().up(_plan(path), None)
    message = str(err.value)
    assert "VM never was not ready within 15s" in message and "last console lines" in message
    assert "\n" not in message
    assert "@@HYB BOOTED" in message or "still-waiting-for-godot" in message
    assert live_qemus(state_dir) == []
    assert not (state_dir / "e2e-slow" / "never").exists()


def test_ctrl_c_during_up_removes_what_was_started(state_dir: Path, stack_file) -> None:
    (port,) = free_ports(1)
    path = stack_file(vm_stack("e2e-ctrlc", f"""
            - name: web
              runtime: vm
              ports: [{{port: 80, hostPort: {port}}}]
              ready: {{marker: "never printed", timeout: 120}}
    """))
    proc = subprocess.Popen([sys.executable, "-m", "hybridorch", "up", path], cwd=ROOT, env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not live_qemus(state_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live_qemus(state_dir), "QEMU never started"
    time.sleep(1)
    proc.send_signal(signal.SIGINT)   # what a terminal's Ctrl-C delivers to the foreground process
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "Traceback" not in stderr
    assert live_qemus(state_dir) == []
    assert not any((state_dir / "e2e-ctrlc").glob("*/qemu.pid"))


def test_container_image_moved_into_a_vm_runs_there_under_runc(state_dir: Path, stack_file, docker_client) -> None:
    # `requires: kernel-modules` makes the policy choose a VM for a container image: the guest must run that
    # image (exported from the local engine) with runc on its own kernel, not a stand-in page
    (port,) = free_ports(1)
    body = f"""
            - name: reports
              image: hybridorch.local/httpd:1
              command: ["httpd", "-f", "-v", "-p", "8081", "-h", "/www"]
              ports: [{{port: 8081, hostPort: {port}}}]
              resources: {{cpu: "1", memory: 256Mi}}
              requires: [kernel-modules]
    """
    path = stack_file(vm_stack("e2e-qemu-image", body), "stack.yaml")
    plan = json.loads(hybridorch("plan", path, "-o", "json").stdout)
    assert plan["placements"][0]["runtime"] == "vm"
    try:
        hybridorch("up", path)
        page = http_get(port)
        # the image's own wrapper wrote this page, with the image's ENV (PAGE_TITLE) applied inside the guest
        assert "<title>hybridorch</title>" in page and "workload reports" in page
        assert not docker_client.containers.list(all=True, filters={"label": "hybridorch.dev/stack=e2e-qemu-image"})
        assert len(live_qemus(state_dir)) == 1
        console = hybridorch("logs", path, "reports").stdout
        assert "@@HYB READY" in console
    finally:
        hybridorch("down", path)
    assert live_qemus(state_dir) == []


def shop_ledger(port: int) -> dict:
    """examples/shop.yaml's ledger-vm, its one port forwarded from `port` on the host."""
    import yaml

    shop = yaml.safe_load((ROOT / "examples" / "shop.yaml").read_text())
    ledger = next(w for w in shop["spec"]["workloads"] if w["name"] == "ledger-vm")
    (guest_port,) = ledger["ports"]
    ledger["ports"] = [{"port": guest_port, "hostPort": port}]
    return ledger


def ledger_stack(name: str, ledger: dict) -> dict:
    return {"apiVersion": "hybridorch.dev/v1alpha1", "kind": "Stack", "metadata": {"name": name},
            "spec": {"workloads": [ledger]}}


def test_vm_boots_the_ledger_disk_it_names_and_is_ready_when_its_service_answers(state_dir: Path,
                                                                                 stack_file) -> None:
    # examples/shop.yaml's ledger-vm alone: its containerDisk (examples/images/ledger-disk, a Debian 12 root
    # made by the recipe's `prepare`) boots through libvirt with its own kernel; the page comes from that OS
    (port,) = free_ports(1)
    ledger = shop_ledger(port)
    path = stack_file(ledger_stack("e2e-qemu-ledger", ledger), "stack.yaml")
    try:
        hybridorch("up", path, timeout=900)   # the first run builds the disk (mmdebstrap, ~1 min)
        # `up` returned ready: the disk's own service answers at once, not only QEMU's port forward
        page = http_get(port)
        assert "hybridorch ledger disk" in page and "Debian GNU/Linux 12 (bookworm)" in page, page
        assert "host: ledger-vm" in page, page   # the hostname the rendered NoCloud seed gave it (cloud-init set it)
        (status,) = json.loads(hybridorch("status", path, "-o", "json").stdout)
        assert status["state"] == "ready" and status["guest"] == "disk", status
        assert f"its own disk {ledger['vm']['disk']['image']}" in status["detail"]
        dumped = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", status["domain"]], capture_output=True,
                                text=True, check=True).stdout
        overlay = state_dir / "e2e-qemu-ledger" / "ledger-vm" / "disk.qcow2"
        assert str(overlay) in dumped and "root=/dev/vda" in dumped
        info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(overlay)], capture_output=True,
                                         text=True, check=True).stdout)
        assert "/disks/" in info["backing-filename"]   # an overlay on the cached base, never the base itself
        console = hybridorch("logs", path, "ledger-vm").stdout
        assert "ledger: serving on :8091 (Debian GNU/Linux 12 (bookworm)" in console
        assert "@@HYB" not in console   # no busybox guest was involved
    finally:
        hybridorch("down", path)
    assert live_qemus(state_dir) == []


def test_the_ledger_disks_cloud_init_applies_user_data_before_the_ledger_serves(state_dir: Path,
                                                                               stack_file) -> None:
    # vm.userData goes, merged into the rendered #cloud-config, through the NoCloud seed to the disk's own
    # cloud-init (Debian's): its modules create the user, write the file, run the commands, and set the hostname
    # the user data names over the seed's; the ledger serves /srv/ledger only after cloud-init's final stage
    import hashlib
    import re
    import secrets
    import yaml

    token = f"token {secrets.token_hex(16)}\n"
    (port,) = free_ports(1)
    ledger = shop_ledger(port)
    ledger["vm"]["userData"] = "#cloud-config\n" + yaml.safe_dump({
        "hostname": "ledger-audit",
        "users": ["default", {"name": "auditor", "shell": "/bin/sh"}],
        "write_files": [{"path": "/srv/ledger/token.txt", "content": token}],
        # every boot (bootcmd) and once per instance (runcmd, after write_files and users)
        "bootcmd": [["sh", "-c", "echo boot >> /srv/ledger/boots.txt"]],
        "runcmd": [["sh", "-c", "id auditor > /srv/ledger/auditor.txt; sha256sum /srv/ledger/token.txt "
                    "> /srv/ledger/digest.txt; echo ran >> /srv/ledger/runs.txt"]],
    })
    path = stack_file(ledger_stack("e2e-qemu-userdata", ledger), "stack.yaml")
    try:
        hybridorch("up", path, timeout=900)   # the first run builds the disk (mmdebstrap, ~1 min)
        assert http_get(port, "/token.txt") == token
        assert re.fullmatch(r"uid=\d+\(auditor\) gid=\d+\(auditor\) groups=\d+\(auditor\)\n",
                            http_get(port, "/auditor.txt")), http_get(port, "/auditor.txt")
        assert http_get(port, "/digest.txt").split()[0] == hashlib.sha256(token.encode()).hexdigest()
        assert "host: ledger-audit" in http_get(port), http_get(port)
        assert "hybridorch ledger disk" in http_get(port)
        console = hybridorch("logs", path, "ledger-vm").stdout
        assert "DataSourceNoCloud [seed=/dev/vdb]" in console, console
        assert "ledger: cloud-init" not in console, console   # no stage failed
        assert (http_get(port, "/boots.txt"), http_get(port, "/runs.txt")) == ("boot\n", "ran\n")

        # a second boot of the same instance: per-boot commands run again, per-instance ones do not, and the
        # hostname cloud-init wrote to /etc/hostname stays
        (status,) = json.loads(hybridorch("status", path, "-o", "json").stdout)
        for verb in ("destroy", "start"):
            subprocess.run(["virsh", "-q", "-c", "qemu:///system", verb, status["domain"]], check=True,
                           capture_output=True, timeout=120)
        deadline = time.monotonic() + 180
        while True:
            try:
                boots = http_get(port, "/boots.txt")
                break
            except OSError:
                assert time.monotonic() < deadline, "the ledger did not serve again within 180 s of a reboot"
                time.sleep(0.5)
        assert (boots, http_get(port, "/runs.txt")) == ("boot\nboot\n", "ran\n")
        assert http_get(port, "/token.txt") == token and "host: ledger-audit" in http_get(port)
    finally:
        hybridorch("down", path)
    assert live_qemus(state_dir) == []
