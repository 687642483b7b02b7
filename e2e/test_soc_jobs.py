"""End-to-end: `soc-test --target kubernetes` runs each board as a Job on a kind cluster with two workers (QEMU TCG
in the pod, runc in the guest) and gives the verdicts the same plans get on this machine: passing and failing
tests, a test killed at its timeout, a board past its deadline and a board no node can hold. Jobs are seen by
`ps` and removed by `gc` once past their ttl; Ctrl-C and bad input leave nothing running."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import ROOT, error_lines, hybridorch, kubectl, progress_lines

pytestmark = pytest.mark.e2e

PLANS = [str(ROOT / "examples" / "soc-arm64.yaml"), str(ROOT / "examples" / "soc-amd64.yaml"),
         str(ROOT / "e2e" / "boards" / "deadline.yaml"), str(ROOT / "e2e" / "boards" / "too-big.yaml")]


@pytest.fixture
def soc_cluster(kind_two_workers: dict[str, str]) -> dict[str, str]:
    """The two-worker cluster's environment, with this machine's cache (the guests a board image is built from):
    the fixture's HOME is its own."""
    return {**kind_two_workers, "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")}


def verdicts(junit: Path) -> dict[str, object]:
    """Per plan: whether it ran to the end (no suite error) and each test's outcome."""
    out: dict[str, object] = {}
    for suite in ET.parse(junit).getroot().findall("testsuite"):
        cases = {}
        for case in suite.iter("testcase"):
            failure, error = case.find("failure"), case.find("error")
            cases[case.get("name")] = ("failure" if failure is not None else "error" if error is not None
                                       else "passed")
        out[str(suite.get("name"))] = cases
    return out


def suite_props(junit: Path) -> dict[str, dict[str, str]]:
    return {str(s.get("name")): {p.get("name"): p.get("value") for p in s.find("properties")}
            for s in ET.parse(junit).getroot().findall("testsuite")}


def suite_error(junit: Path, plan: str) -> str:
    suite = next(s for s in ET.parse(junit).getroot().findall("testsuite") if s.get("name") == plan)
    return " ".join(e.get("message") or "" for e in suite.iter("error"))


def run_pods(env: dict[str, str], namespace: str) -> list[dict]:
    out = kubectl(env, "get", "pods,jobs", "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout)["items"] if out.returncode == 0 else []


def test_boards_as_jobs_give_the_local_verdicts_on_both_workers(soc_cluster: dict[str, str],
                                                               tmp_path: Path, state_dir: Path,
                                                               cluster_timings: dict[str, float]) -> None:
    env = soc_cluster
    local_xml, cluster_xml = tmp_path / "local.xml", tmp_path / "cluster.xml"
    started = time.monotonic()
    local = hybridorch("soc-test", *PLANS, "-j", "2", "--junit", str(local_xml), check=False, timeout=900)
    cluster_timings["soc-test 4 boards, local -j 2"] = time.monotonic() - started
    assert local.returncode == 1 and "Traceback" not in local.stderr, local.stderr
    started = time.monotonic()
    cluster = hybridorch("soc-test", "--target", "kubernetes", *PLANS, "--junit", str(cluster_xml), env=env,
                         check=False, timeout=900)
    cluster_timings["soc-test 4 boards, kubernetes"] = time.monotonic() - started
    assert cluster.returncode == 1 and "Traceback" not in cluster.stderr, cluster.stderr
    assert verdicts(cluster_xml) == verdicts(local_xml), cluster.stdout
    expected = {"runs-on-aarch64": "passed", "isolated-pid-namespace": "passed", "deliberately-failing": "failure"}
    assert verdicts(cluster_xml)["soc-arm64"] == expected
    assert verdicts(cluster_xml)["board-deadline"] == {"reports-in-time": "passed", "outlives-the-board": "error"}

    # the same reasons, said the same way where they can be
    assert "exceeded target.timeout (40s)" in suite_error(cluster_xml, "board-deadline")
    assert "exceeded target.timeout (40s)" in suite_error(local_xml, "board-deadline")
    assert "cannot run here" in suite_error(local_xml, "board-too-big")
    too_big = suite_error(cluster_xml, "board-too-big")
    assert "cannot be scheduled" in too_big and "Insufficient memory" in too_big, too_big
    amd = ET.parse(cluster_xml).getroot().find("testsuite[@name='soc-amd64']")
    hang = amd.find("testcase[@name='hangs-and-is-killed']/failure")
    assert hang is not None and hang.get("message") == "timed out after 5s (killed)"
    assert amd.find("testcase[@name='runs-on-x86-64']/system-out").text.strip() == "x86_64"

    # the boards that ran used both workers, each in a pod of its own
    props = suite_props(cluster_xml)
    ran = {p["node"] for name, p in props.items() if name != "board-too-big"}
    assert ran == {"hybridorch-soc-worker", "hybridorch-soc-worker2"}, props
    assert all(p["target"] == "kubernetes" and p["accelerator"] == "tcg" for n, p in props.items()
               if n != "board-too-big")

    # one progress line per board as it is scheduled, boots and finishes
    lines = progress_lines(cluster.stderr)
    for plan in ("soc-arm64", "soc-amd64", "board-deadline"):
        for state in ("scheduled", "booting", "booted"):
            assert any(f"] {plan}: {state} " in ln for ln in lines), (plan, state, cluster.stderr)
    assert any("] soc-arm64: finished (2 passed, 1 failed, 0 errors" in ln for ln in lines), cluster.stderr
    assert any("] board-too-big: failed (cannot be scheduled" in ln for ln in lines), cluster.stderr
    assert "in a pod on node hybridorch-soc-worker" in cluster.stdout

    # Jobs stay for their ttl with the stack labels: ps lists them; gc takes one once its ttl label says expired
    jobs = json.loads(kubectl(env, "get", "jobs", "-n", "hybridorch-soc", "-o", "json").stdout)["items"]
    mine = [j for j in jobs if j["metadata"]["labels"].get("hybridorch.dev/stack") == "soc-arm64"]
    assert mine and mine[0]["spec"]["ttlSecondsAfterFinished"] == 3600
    assert mine[0]["metadata"]["labels"]["hybridorch.dev/ttl"] == "1h"
    assert not any(j["metadata"]["labels"].get("hybridorch.dev/stack") == "board-too-big" for j in jobs)
    rows = json.loads(hybridorch("ps", "--target", "kubernetes", "-o", "json", env=env).stdout)
    listed = {(r["kind"], r["stack"]) for r in rows}
    assert {("Job", "soc-arm64"), ("Job", "soc-amd64"), ("Job", "board-deadline")} <= listed, rows
    name = mine[0]["metadata"]["name"]
    kubectl(env, "label", "--overwrite", "job", name, "-n", "hybridorch-soc", "hybridorch.dev/ttl=1s")
    time.sleep(2)
    gc = hybridorch("gc", "--target", "kubernetes", env=env)
    assert name in gc.stdout + gc.stderr, gc.stdout + gc.stderr
    left = kubectl(env, "get", "jobs,pods", "-n", "hybridorch-soc", "-l", f"job-name={name}", "-o", "name").stdout
    assert kubectl(env, "get", "job", name, "-n", "hybridorch-soc", check=False).returncode != 0, left


def test_ctrl_c_deletes_every_job_and_pod(soc_cluster: dict[str, str], tmp_path: Path) -> None:
    env = soc_cluster
    namespace = f"e2e-soc-cancel-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen([sys.executable, "-m", "hybridorch", "soc-test", "--target", "kubernetes",
                             "--namespace", namespace, PLANS[0], PLANS[1]], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env})
    seen = []
    assert proc.stderr is not None
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        seen.append(line)
        if ": booting (" in line or time.monotonic() > deadline:
            break
    assert any(": booting (" in ln for ln in seen), "".join(seen)
    assert run_pods(env, namespace), "a board's pod runs before Ctrl-C"
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "Traceback" not in rest
    assert run_pods(env, namespace) == [], "nothing of the interrupted run is left"
    kubectl(env, "delete", "namespace", namespace, "--wait=false")


def _plan(tmp_path: Path, name: str) -> str:
    """A fresh plan: its initramfs (and so its board image) exists nowhere yet."""
    text = (ROOT / "examples" / "soc-amd64.yaml").read_text().replace("name: soc-amd64", f"name: {name}")
    text = text.replace('command: ["uname", "-m"]', f'command: ["echo", "{uuid.uuid4().hex}"]')
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def test_bad_input_is_one_line_exit_2_and_nothing_runs(soc_cluster: dict[str, str], tmp_path: Path) -> None:
    env = soc_cluster
    namespace = f"e2e-soc-bad-{uuid.uuid4().hex[:6]}"
    plan = _plan(tmp_path, "board-fresh")
    cases = {
        "kubeconfig": ({**env, "KUBECONFIG": str(tmp_path / "missing-kubeconfig")}, [], "kubeconfig"),
        "emulator": ({**env, "HYBRIDORCH_QEMU_BINARY": "qemu-system-none"}, [], "QEMU image cannot be built"),
        "image": (env, ["--no-load"], "is not on node"),
    }
    for what, (case_env, extra, needle) in cases.items():
        result = hybridorch("soc-test", "--target", "kubernetes", "--namespace", namespace, *extra, plan,
                            env=case_env, check=False, timeout=300)
        errors = error_lines(result.stderr)
        assert result.returncode == 2, (what, result.stderr)
        assert len(errors) == 1 and needle in errors[0] and "Traceback" not in result.stderr, (what, errors)
        assert [o for o in run_pods(env, namespace)] == [], (what, "nothing left running")
    kubectl(env, "delete", "namespace", namespace, "--ignore-not-found", "--wait=false")
