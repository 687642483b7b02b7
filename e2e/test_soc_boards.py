"""End-to-end: `soc-test` boots real amd64 and arm64 guests (QEMU TCG), runs the example plans' containers
with runc inside them, and reports through JUnit XML; a guest that cannot boot is an error with its console."""
from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import ROOT, require
from hybridorch.errors import TestFailure
from hybridorch.vm.guestimage import guest_dir
from hybridorch.ops.soc import check_report, format_report, run_soc_tests
from test_qemu import live_qemus

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _guests() -> None:
    for arch, binary in (("amd64", "qemu-system-x86_64"), ("arm64", "qemu-system-aarch64")):
        require(shutil.which(binary) is not None, f"{binary} missing (e2e/packages.txt)")
        require((guest_dir(arch) / "guest.json").exists(), f"no {arch} guest cached: run e2e/setup.d/20-guests.sh")


def test_example_plans_in_parallel_with_junit(state_dir: Path, tmp_path: Path) -> None:
    junit = tmp_path / "results.xml"
    plans = [str(ROOT / "examples" / "soc-arm64.yaml"), str(ROOT / "examples" / "soc-amd64.yaml")]
    report = run_soc_tests(plans, str(junit), jobs=2)
    text = format_report(report)

    suites = {s.get("name"): s for s in ET.parse(junit).getroot().findall("testsuite")}
    assert set(suites) == {"soc-arm64", "soc-amd64"}, text
    arm = suites["soc-arm64"]
    outcome = {c.get("name"): ("failure" if c.find("failure") is not None else
                               "error" if c.find("error") is not None else "passed") for c in arm.iter("testcase")}
    assert outcome == {"runs-on-aarch64": "passed", "isolated-pid-namespace": "passed",
                       "deliberately-failing": "failure"}, text
    # the proof it ran on arm64: `uname -m` inside the container said aarch64
    assert arm.find("testcase[@name='runs-on-aarch64']/system-out").text.strip() == "aarch64"
    assert "checksum mismatch" in arm.find("testcase[@name='deliberately-failing']/failure").text
    props = {p.get("name"): p.get("value") for p in arm.find("properties")}
    assert props["arch"] == "arm64" and props["accelerator"] == "tcg"
    assert 0 < float(props["bootSeconds"]) < float(props["firstResultSeconds"])

    amd = suites["soc-amd64"]
    assert amd.find("testcase[@name='runs-on-x86-64']/system-out").text.strip() == "x86_64"
    hang = amd.find("testcase[@name='hangs-and-is-killed']/failure")
    assert hang is not None and hang.get("message") == "timed out after 5s (killed)"
    assert float(amd.find("testcase[@name='hangs-and-is-killed']").get("time")) < 10

    with pytest.raises(TestFailure, match="2 failed, 0 errors, 4 passed"):
        check_report(report)
    assert live_qemus(state_dir) == []
    assert not (state_dir / "soc").exists() or list((state_dir / "soc").iterdir()) == []


def test_guest_that_does_not_boot_is_an_error_with_console(state_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "guests"
    shutil.copytree(guest_dir("amd64"), broken / "amd64")
    # a corrupt initramfs: the kernel finds no /init and panics (a real boot failure, with a console)
    (broken / "amd64" / "base.cpio.gz").write_bytes(bytes(range(256)) * 400)
    monkeypatch.setenv("HYBRIDORCH_GUEST_DIR", str(broken))
    plan = tmp_path / "plan.yaml"
    plan.write_text((ROOT / "examples" / "soc-amd64.yaml").read_text().replace("timeout: 300", "timeout: 20")
                    .replace("name: soc-amd64", "name: broken-board"))
    report = run_soc_tests([str(plan)], None, jobs=1)
    (result,) = report.plans
    assert result.error.startswith("the amd64 guest stopped before booting"), result.error
    assert "last console lines: " in result.error and "Kernel panic" in result.error
    assert all(t.outcome == "error" for t in result.tests)
    assert "broken-board: error:" in format_report(report)
    assert live_qemus(state_dir) == []


def test_ctrl_c_stops_every_board_and_leaves_nothing(state_dir: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    plans = [str(ROOT / "examples" / "soc-arm64.yaml"), str(ROOT / "examples" / "soc-amd64.yaml")]
    proc = subprocess.Popen([sys.executable, "-m", "hybridorch", "soc-test", *plans, "-j", "2"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    deadline = time.monotonic() + 60
    while len(live_qemus(state_dir)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert len(live_qemus(state_dir)) == 2, "both boards should be booting when Ctrl-C comes"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert live_qemus(state_dir) == []
    assert not list((state_dir / "soc").glob("*")), "the boards' work directories must be removed"
    print(f"interrupted after both boards started; stderr: {err.strip()}")
