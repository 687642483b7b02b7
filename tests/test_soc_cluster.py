"""soc-test on a cluster, the parts that need none: Job names, log timestamps, what the scheduler's refusal means,
and that a board's console gives the same verdicts whichever target booted it."""
from __future__ import annotations

from pathlib import Path

import pytest

from hybridorch.backends import kube_soc
from hybridorch.backends.events import EventKind
from hybridorch.ops import soc
from hybridorch.vm import console
from hybridorch.vm.boot import ConsoleLine, GuestRun

ROOT = Path(__file__).resolve().parents[1]


def node(name: str, cpu: str, memory: str, arch: str = "amd64", taints: list | None = None,
         unschedulable: bool = False) -> dict:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/arch": arch}},
            "spec": {"taints": taints or [], "unschedulable": unschedulable},
            "status": {"allocatable": {"cpu": cpu, "memory": memory}}}


def test_job_names_fit_a_label_and_differ_per_run() -> None:
    long = "b" * 63
    assert len(kube_soc.job_name(long, "0123abcd")) <= 63
    assert kube_soc.job_name("soc-arm64", "0123abcd") == "soc-soc-arm64-0123abcd"
    assert not kube_soc.job_name("a" * 45 + "-x", "0123abcd").count("--")


def test_log_lines_carry_kubelets_timestamps() -> None:
    when, text = kube_soc.parse_log_line("2026-12-06T01:02:03.500000000Z @@HYB BOOTED 1.2 x86_64")
    assert text == "@@HYB BOOTED 1.2 x86_64" and when is not None
    later, _ = kube_soc.parse_log_line("2026-12-06T01:02:05.250Z x")
    assert later is not None and abs(later - when - 1.75) < 1e-6
    assert kube_soc.parse_log_line("no stamp here") == (None, "no stamp here")
    assert kube_soc.parse_log_line("") == (None, "")


def test_a_board_fits_nowhere_only_when_no_node_could_ever_hold_it() -> None:
    control = node("cp", "2", "23Gi", taints=[{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}])
    workers = [control, node("w1", "2", "23Gi"), node("w2", "2", "23Gi")]
    assert kube_soc.fits_nowhere(1, 1024, "amd64", workers) is None          # busy nodes: wait
    why = kube_soc.fits_nowhere(16, 1024, "amd64", workers)
    assert why is not None and "needs 16 CPUs" in why and "has 2 CPUs" in why
    assert kube_soc.fits_nowhere(1, 64 * 1024, "amd64", workers) is not None
    assert kube_soc.fits_nowhere(1, 512, "arm64", workers) == "no schedulable untainted node of arch arm64"
    assert kube_soc.fits_nowhere(1, 512, "amd64", [control]) is not None
    assert kube_soc.fits_nowhere(1, 512, "amd64", [node("c", "2", "4Gi", unschedulable=True)]) is not None
    assert kube_soc.fits_nowhere(1, 512, "amd64", [node("m", "1500m", "24453220Ki")]) is None


def test_what_kubelet_and_the_scheduler_say() -> None:
    pod = {"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                      "message": "0/3 nodes are available:\n 2 Insufficient memory."}],
                      "initContainerStatuses": [{"name": "initramfs",
                                                 "state": {"waiting": {"reason": "ErrImageNeverPull",
                                                                       "message": "not present"}}}],
                      "containerStatuses": [{"name": "qemu", "state": {"waiting": {"reason": "PodInitializing"}}}]}}
    assert kube_soc.unschedulable(pod) == "0/3 nodes are available: 2 Insufficient memory."
    assert kube_soc.waiting_reasons(pod) == [("initramfs", "ErrImageNeverPull", "not present"),
                                             ("qemu", "PodInitializing", "")]
    assert kube_soc.qemu_state(pod) == {"waiting": {"reason": "PodInitializing"}}
    assert kube_soc.unschedulable({"status": {}}) is None


def _run(lines: list[str], *, finished: bool = True, timed_out: bool = False) -> GuestRun:
    return GuestRun("arm64", "tcg", tuple(ConsoleLine(float(i), t) for i, t in enumerate(lines)), True, finished,
                    timed_out, float(len(lines)), "tail")


def _console(plan: soc.SocPlan, outputs: dict[str, tuple[int, str]]) -> list[str]:
    import base64

    lines = ["@@HYB BOOTED 1.0 aarch64", "@@HYB READY"]
    for name, (rc, out) in outputs.items():
        lines.append(f"@@HYB START {name} 2.0")
        if out:
            lines.append(f"@@HYB OUT {name} {base64.b64encode(out.encode()).decode()}")
        lines.append(f"@@HYB RESULT {name} {rc} 0 2.0 2.5")
    return lines


def test_the_same_console_gives_the_same_verdicts_on_both_targets() -> None:
    plan = soc.load_soc_plan(str(ROOT / "examples" / "soc-arm64.yaml"))
    outputs = {"runs-on-aarch64": (0, "aarch64\n"), "isolated-pid-namespace": (0, "pid=1\nx\n")}
    lines = _console(plan, outputs) + [console.say_done().split("'")[1]]
    local = soc.plan_result(plan, _run(lines))
    cluster = soc.plan_result(plan, _run(lines), target="kubernetes", node="kind-worker2", phases={"pending": 0.2})
    assert [(t.name, t.outcome, t.message) for t in local.tests] == \
        [(t.name, t.outcome, t.message) for t in cluster.tests]
    assert local.error == cluster.error and cluster.node == "kind-worker2"
    xml = soc.junit_xml(soc.SocReport((cluster,), 1.0))
    props = {p.get("name"): p.get("value") for p in xml.iter("property")}
    assert props["target"] == "kubernetes" and props["node"] == "kind-worker2"


def test_a_deadline_and_a_board_that_never_ran() -> None:
    plan = soc.load_soc_plan(str(ROOT / "examples" / "soc-arm64.yaml"))
    lines = _console(plan, {"runs-on-aarch64": (0, "aarch64\n")})
    timed = soc.plan_result(plan, _run(lines, finished=False, timed_out=True), target="kubernetes")
    assert timed.error.startswith(f"the run exceeded target.timeout ({plan.timeout}s)")
    assert [t.outcome for t in timed.tests][1:] == ["error"] * (len(plan.containers) - 1)
    never = soc.plan_result(plan, None, "cannot be scheduled: it needs 1 CPUs", target="kubernetes")
    assert all(t.outcome == "error" for t in never.tests) and not never.ok
    event = soc.finished_event(never)
    assert event.kind is EventKind.FAILED and "cannot be scheduled" in event.detail


def test_a_board_larger_than_this_machine_is_an_error_without_booting(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    plan = soc.load_soc_plan(str(ROOT / "examples" / "soc-arm64.yaml"))
    monkeypatch.setattr(soc, "host_memory_mib", lambda: 128)
    seen = []
    result = soc.run_plan(plan, tmp_path, events=seen.append)
    assert result.error.startswith("cannot run here: it needs 512Mi of memory and this machine has 128Mi")
    assert all(t.outcome == "error" for t in result.tests) and seen[0].kind is EventKind.FAILED


def test_the_job_of_a_board_is_valid_and_says_what_the_issue_asks() -> None:
    from hybridorch.vm.board_image import BOARD_INITRD, QemuImage

    plan = soc.load_soc_plan(str(ROOT / "examples" / "soc-arm64.yaml"))
    qemu = QemuImage("hybridorch.local/soc-qemu:abc", ("arm64",), {"arm64": "/usr/bin/qemu-system-aarch64"},
                     {"arm64": "/board/arm64/vmlinuz"})
    doc = kube_soc.job_manifest(soc.board_of(plan), "soc-soc-arm64-0123abcd", run_id="0123abcd",
                                namespace="hybridorch-soc", qemu=qemu, board_image_ref="hybridorch.local/soc-board-x:1",
                                initrd_bytes=40 * 2**20, ttl="2h")
    spec, pod = doc["spec"], doc["spec"]["template"]["spec"]
    labels = doc["metadata"]["labels"]
    assert labels["hybridorch.dev/stack"] == "soc-arm64" and labels["hybridorch.dev/ttl"] == "2h"
    assert labels["hybridorch.dev/soc-run"] == "0123abcd" and labels["app.kubernetes.io/managed-by"] == "hybridorch"
    assert spec["backoffLimit"] == 0 and spec["ttlSecondsAfterFinished"] == 7200
    assert pod["activeDeadlineSeconds"] == plan.timeout + kube_soc.START_SLACK
    assert spec["activeDeadlineSeconds"] > pod["activeDeadlineSeconds"] and pod["restartPolicy"] == "Never"
    (qemu_c,) = pod["containers"]
    assert qemu_c["command"][0] == "/usr/bin/qemu-system-aarch64" and BOARD_INITRD in qemu_c["command"]
    assert qemu_c["resources"]["requests"]["cpu"] == "1"
    assert qemu_c["resources"]["requests"]["memory"] == qemu_c["resources"]["limits"]["memory"]
    assert qemu_c["imagePullPolicy"] == "Never" and pod["initContainers"][0]["imagePullPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert pod["volumes"][0]["emptyDir"]["sizeLimit"] == "56Mi"


def test_images_go_only_where_a_board_may_run() -> None:
    control = node("cp", "2", "23Gi", taints=[{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}])
    nodes = [control, node("w1", "2", "23Gi"), node("w2", "2", "23Gi", unschedulable=True),
             node("a1", "2", "8Gi", "arm64")]
    assert kube_soc.eligible_nodes(nodes, "amd64") == ["w1"]
    assert kube_soc.eligible_nodes(nodes, "arm64") == ["a1"]
