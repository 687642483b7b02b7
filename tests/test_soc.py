"""SocTest plans without QEMU: loading with file:line errors, turning guest console lines into results, the
report table and JUnit XML."""
from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import ROOT
from hybridorch.errors import SpecError, TestFailure
from hybridorch.ops.soc import (PlanResult, SocReport, TestResult, check_report, format_report, junit_xml,
                            load_soc_plan, parse_results, program_for_plan, write_junit)

PLAN = """\
apiVersion: hybridorch.dev/v1alpha1
kind: SocTest
metadata:
  name: board
spec:
  target:
    arch: {arch}
    machine: {machine}
  containers:
    - name: arch
      image: busybox
      command: ["uname", "-m"]
      expect: {{output: "^aarch64$"}}
      timeout: 20
    - name: exits-two
      image: busybox
      command: ["sh", "-c", "exit 2"]
      expect: {{exitCode: 2}}
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return str(path)


def test_examples_load() -> None:
    arm = load_soc_plan(str(ROOT / "examples" / "soc-arm64.yaml"))
    assert (arm.arch, arm.machine, arm.memory_mib, arm.cpus) == ("arm64", "virt", 512, 1)
    assert [c.name for c in arm.containers][0] == "runs-on-aarch64"
    amd = load_soc_plan(str(ROOT / "examples" / "soc-amd64.yaml"))
    assert amd.arch == "amd64" and amd.machine == "q35"


def test_plan_defaults_and_program(tmp_path: Path) -> None:
    plan = load_soc_plan(write(tmp_path, PLAN.format(arch="arm64", machine="virt")))
    assert plan.timeout == 900 and plan.containers[1].timeout == 60 and plan.containers[1].exit_code == 2
    program = program_for_plan(plan)
    assert not program.services and not program.network
    assert [(c.name, c.rootfs, c.timeout) for c in program.containers] == [("arch", "busybox", 20),
                                                                          ("exits-two", "busybox", 60)]


@pytest.mark.parametrize("arch,machine,line,field,message", [
    ("riscv64", "virt", 7, "spec.target.arch", "Debian 12 ships no riscv64"),   # runtime.guest_refusal
    ("arm64", "q35", 8, "spec.target.machine", "not a machine of this arch: use virt"),
    ("amd64", "virt", 8, "spec.target.machine", "use q35 or pc"),
])
def test_target_errors_name_line_and_field(tmp_path: Path, arch: str, machine: str, line: int, field: str,
                                           message: str) -> None:
    path = write(tmp_path, PLAN.format(arch=arch, machine=machine))
    with pytest.raises(SpecError) as err:
        load_soc_plan(path)
    assert len(err.value.problems) == 1
    text = str(err.value.problems[0])
    assert text.startswith(f"{path}:{line}: {field}: ") and message in text


def test_container_errors_are_all_reported(tmp_path: Path) -> None:
    text = PLAN.format(arch="arm64", machine="virt").replace(
        '      expect: {output: "^aarch64$"}', '      expect: {output: "(unclosed"}\n      rootfs: /nonexistent'
    ).replace("name: exits-two", "name: arch").replace("timeout: 20", "timout: 20")
    with pytest.raises(SpecError) as err:
        load_soc_plan(write(tmp_path, text))
    messages = [str(p) for p in err.value.problems]
    assert any(":13: spec.containers[0].expect.output: not a regular expression: missing ), unterminated "
               "subpattern at position 0" in m for m in messages)
    assert any("spec.containers[0].rootfs: give either image or rootfs" in m for m in messages)
    assert any("spec.containers[0]: unknown field (did you mean timeout? allowed: name, image," in m for m in messages)
    assert any("spec.containers[1].name: duplicate test name (first at spec.containers[0])" in m for m in messages)
    assert not any("unclosed" in m or "timout" in m or "'arch'" in m for m in messages)  # nothing of the file quoted


def guest_lines(name: str, rc: int, output: str, timed_out: bool = False) -> list[str]:
    b64 = base64.b64encode(output.encode()).decode()
    return [f"@@HYB START {name} 1.00", f"@@HYB OUT {name} {b64[:8]}", f"@@HYB OUT {name} {b64[8:]}",
            f"@@HYB RESULT {name} {rc} {int(timed_out)} 1.00 3.50"]


def test_parse_results_judges_exit_code_output_and_missing(tmp_path: Path) -> None:
    plan = load_soc_plan(write(tmp_path, PLAN.format(arch="arm64", machine="virt")))
    noise = ["[    1.2] random kernel line", "@@HYB BOOTED 1.0 aarch64"]
    results = parse_results(plan, noise + guest_lines("arch", 0, "aarch64\n") + guest_lines("exits-two", 2, ""))
    assert [(r.outcome, r.exit_code, r.duration) for r in results] == [("passed", 0, 2.5), ("passed", 2, 2.5)]
    assert results[0].output == "aarch64\n"

    results = parse_results(plan, guest_lines("arch", 0, "x86_64\n") + guest_lines("exits-two", 0, ""))
    assert results[0].outcome == "failed" and "does not match" in results[0].message
    assert results[1].message == "expected exit code 2, got 0"

    results = parse_results(plan, guest_lines("arch", 137, "", timed_out=True))
    assert results[0].outcome == "failed" and results[0].message == "timed out after 20s (killed)"
    assert results[1].outcome == "error" and results[1].exit_code is None


def sample_report() -> SocReport:
    ok = TestResult("arch", "passed", 0, 1.25, "aarch64\n")
    bad = TestResult("broken", "failed", 3, 0.5, "sensor 3: checksum mismatch\n", "expected exit code 0, got 3")
    lost = TestResult("lost", "error", None, 0.0, "", "the guest did not run")
    return SocReport((PlanResult("a", "a.yaml", "arm64", "tcg", (ok, bad), 1.5, 3.0, 6.0),
                      PlanResult("b", "b.yaml", "amd64", "", (lost,), error="the amd64 guest did not boot")), 7.0)


def test_report_table_and_failure() -> None:
    report = sample_report()
    text = format_report(report)
    assert "a     arm64  broken  FAILED  3     0.5s  expected exit code 0, got 3" in text
    assert "a: arm64 on QEMU tcg, boot 1.5s, first result 3.0s, total 6.0s" in text
    assert "b: error: the amd64 guest did not boot" in text
    assert text.splitlines()[-1] == "1 passed, 1 failed, 1 errors in 7.0s"
    with pytest.raises(TestFailure, match="1 failed, 1 errors, 1 passed; plans that did not run: b"):
        check_report(report)
    check_report(SocReport((report.plans[0].__class__("c", "c.yaml", "arm64", "tcg",
                                                        (report.plans[0].tests[0],)),), 1.0))


def test_junit_xml(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    write_junit(sample_report(), str(path))
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    a, b = root.findall("testsuite")
    assert (a.get("name"), a.get("tests"), a.get("failures"), a.get("errors")) == ("a", "2", "1", "0")
    failure = a.find("testcase[@name='broken']/failure")
    assert failure is not None and failure.get("message") == "expected exit code 0, got 3"
    assert "checksum mismatch" in (failure.text or "")
    assert b.get("errors") == "1" and b.find("testcase/error").get("message") == "the amd64 guest did not boot"
    props = {p.get("name"): p.get("value") for p in a.find("properties")}
    assert props["arch"] == "arm64" and props["accelerator"] == "tcg"
    assert junit_xml(sample_report()).get("name") == "hybridorch soc-test"
