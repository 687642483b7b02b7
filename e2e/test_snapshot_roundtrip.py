"""End-to-end: snapshot, restore and prune a real local VM (shop's ledger-vm, a Debian disk booted by libvirt).

The ledger guest has no shell, agent or writable service, so the change made after the snapshot is made on its
disk from outside while the domain is off: the guest's own boot (ext4 counts every mount in its superblock) and a
file written into its root filesystem by debugfs through a FUSE export of the qcow2 overlay (qemu-storage-daemon).
After the restore both are gone: the file is absent and the mount count is back to the snapshot's.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from conftest import ROOT, free_ports, hybridorch, require

pytestmark = pytest.mark.e2e

VIRSH = ["virsh", "-q", "-c", "qemu:///system"]


@pytest.fixture(autouse=True)
def _tools() -> None:
    for tool in ("virsh", "qemu-storage-daemon", "debugfs", "qemu-img"):
        require(shutil.which(tool) is not None, f"{tool} missing (e2e/packages.txt)")
    require(Path("/dev/fuse").exists(), "no /dev/fuse for qemu-storage-daemon's FUSE export")


def http_get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
        return resp.read().decode()


def virsh(*args: str) -> str:
    return subprocess.run([*VIRSH, *args], capture_output=True, text=True, check=True, timeout=120).stdout


class RawView:
    """The overlay's guest-visible bytes as a raw file (a FUSE export), for debugfs; only while the domain is off."""

    def __init__(self, overlay: Path, writable: bool) -> None:
        self.path = overlay.parent / "raw.view"
        self.path.touch()
        pidfile = overlay.parent / "qsd.pid"
        subprocess.run(["qemu-storage-daemon", "--blockdev", f"driver=file,filename={overlay},node-name=f",
                        "--blockdev", "driver=qcow2,file=f,node-name=q", "--export",
                        f"type=fuse,id=e,node-name=q,mountpoint={self.path},writable={'on' if writable else 'off'}",
                        "--daemonize", "--pidfile", str(pidfile)], check=True, timeout=60)
        self.pid = int(pidfile.read_text())

    def debugfs(self, request: str, write: bool = False) -> str:
        done = subprocess.run(["debugfs", *(["-w"] if write else []), "-R", request, str(self.path)],
                              capture_output=True, text=True, timeout=60)
        return done.stdout + done.stderr

    def close(self) -> None:
        subprocess.run(["kill", str(self.pid)], check=True)
        deadline = time.monotonic() + 20
        while Path(f"/proc/{self.pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.path.unlink()


def mount_count(view: RawView) -> int:
    for line in view.debugfs("stats").splitlines():
        if line.startswith("Mount count:"):
            return int(line.split(":")[1])
    raise AssertionError("no mount count in debugfs stats")


@pytest.fixture
def ledger(state_dir: Path, stack_file) -> Iterator[tuple[str, int, Path, str]]:
    shop = yaml.safe_load((ROOT / "examples" / "shop.yaml").read_text())
    w = next(w for w in shop["spec"]["workloads"] if w["name"] == "ledger-vm")
    (guest_port,) = w["ports"]
    (port,) = free_ports(1)
    w["ports"] = [{"port": guest_port, "hostPort": port}]
    w["snapshots"] = {"retain": 2, "maxAge": "7d"}
    path = stack_file({"apiVersion": shop["apiVersion"], "kind": "Stack", "metadata": {"name": "e2e-snap"},
                       "spec": {"workloads": [w]}}, "stack.yaml")
    try:
        hybridorch("up", path, timeout=900)   # the first run builds the disk (mmdebstrap, ~1 min)
        yield path, port, state_dir / "e2e-snap" / "ledger-vm" / "disk.qcow2", "hyb-e2e-snap-ledger-vm-0"
    finally:
        hybridorch("down", path)
    assert "hyb-e2e-snap-ledger-vm-0" not in virsh("list", "--all", "--name")   # snapshots do not pin the domain


def test_restore_undoes_a_file_written_after_the_snapshot(ledger: tuple[str, int, Path, str]) -> None:
    path, port, overlay, domain = ledger
    created = hybridorch("snapshot", "create", path, "ledger-vm", "before").stdout
    (name,) = [ln.split()[2] for ln in created.splitlines() if ln.startswith("created snapshot before-")]
    assert name.startswith("before-") and len(name) == len("before-20260101-000000"), name
    (listed,) = json.loads(hybridorch("snapshot", "list", path, "ledger-vm", "-o", "json").stdout)
    assert listed["name"] == name and listed["vm"] == domain and listed["state"] == "running", listed
    assert listed["size"] > 0 and 0 <= listed["ageSeconds"] < 60, listed
    # the snapshot is inside the overlay itself, and libvirt keeps no record that would pin the domain
    assert name in subprocess.run(["qemu-img", "snapshot", "-U", "-l", str(overlay)], capture_output=True, text=True,
                                  check=True).stdout
    assert virsh("snapshot-list", domain, "--name").strip() == ""

    # after the snapshot: the guest boots once more (ext4 counts the mount on its disk), then, with the domain
    # off, a file is written into its root filesystem
    virsh("destroy", domain)
    virsh("start", domain)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            assert "hybridorch ledger disk" in http_get(port)
            break
        except OSError:
            time.sleep(0.5)
    virsh("destroy", domain)
    view = RawView(overlay, writable=True)
    try:
        marker = overlay.parent / "marker.txt"
        marker.write_text("written after the snapshot\n")
        view.debugfs(f"write {marker} /after-snapshot.txt", write=True)
        assert "written after the snapshot" in view.debugfs("cat /after-snapshot.txt")
        mounts_after = mount_count(view)
    finally:
        view.close()

    restore = hybridorch("snapshot", "restore", path, "ledger-vm", name)
    assert f"restored snapshot {name} of {domain}" in restore.stdout
    assert "rolled back to" in restore.stderr and "patches" in restore.stderr, restore.stderr
    # a snapshot of a running VM brings back its memory too: the ledger answers at once, and status follows it
    assert "hybridorch ledger disk" in http_get(port)
    (status,) = json.loads(hybridorch("status", path, "-o", "json").stdout)
    assert status["state"] == "ready", status

    virsh("destroy", domain)
    view = RawView(overlay, writable=False)
    try:
        assert "File not found" in view.debugfs("stat /after-snapshot.txt")
        assert mount_count(view) == mounts_after - 1   # the guest's own later boot is undone as well
    finally:
        view.close()
    virsh("start", domain)


def test_prune_keeps_the_retained_newest_and_removes_the_rest(ledger: tuple[str, int, Path, str]) -> None:
    path, port, overlay, domain = ledger
    names = []
    for prefix in ("one", "two", "three"):
        out = hybridorch("snapshot", "create", path, "ledger-vm", prefix).stdout
        names += [ln.split()[2] for ln in out.splitlines() if ln.startswith("created snapshot ")]
    assert len(names) == 3
    dry = hybridorch("snapshot", "prune", path, "ledger-vm", "--dry-run").stdout
    assert dry.strip() == f"would remove snapshot {names[0]} of {domain}", dry
    assert hybridorch("snapshot", "prune", path, "ledger-vm").stdout.strip() == \
        f"removed snapshot {names[0]} of {domain}"
    listed = [s["name"] for s in json.loads(hybridorch("snapshot", "list", path, "ledger-vm", "-o", "json").stdout)]
    assert listed == names[1:]
    assert "nothing to prune" in hybridorch("snapshot", "prune", path, "ledger-vm").stdout
    # NAME removes exactly that snapshot; an unknown one is a one-line error
    assert f"removed snapshot {names[1]}" in hybridorch("snapshot", "prune", path, "ledger-vm", names[1]).stdout
    missing = hybridorch("snapshot", "restore", path, "ledger-vm", names[0], check=False)
    assert missing.returncode != 0 and missing.stderr.count("\n") == 1 and "no snapshot" in missing.stderr
    qemu_img = subprocess.run(["qemu-img", "snapshot", "-U", "-l", str(overlay)], capture_output=True, text=True,
                              check=True).stdout
    assert names[2] in qemu_img and names[0] not in qemu_img and names[1] not in qemu_img
    assert "hybridorch ledger disk" in http_get(port)   # snapshots of a running VM leave it serving
