"""`soc-test`: run containerised test suites on an emulated board of the target arch before the hardware exists.

A `kind: SocTest` plan names the board (arch, machine, memory, cpus) and the containers to run; each plan boots
one QEMU guest that runs every container with runc and reports exit codes and output over the serial console.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from hybridorch.errors import BackendError, OutputError, Problem, SpecError, TestFailure
from hybridorch.backends.base import Board, BoardRun
from hybridorch.backends.events import Event, EventKind, EventSink, ignore
from hybridorch.core.runtime import ARCHES, guest_refusal
from hybridorch.ops.files import check_writable, write_whole
from hybridorch.vm import console
from hybridorch.vm.initramfs import ContainerRun, GuestProgram
from hybridorch.core.schema import (DNS_LABEL, DNS_LABEL_WHAT, Errors, Field, ListOf, MapOf, Obj, Quantity, Scalar,
                                    check_document, parse_quantity)
from hybridorch.core.safeload import path_inside
from hybridorch.core.spec import API_VERSION, ENV_NAME, ENV_WHAT, image_problem
from hybridorch.core.text import printable, table

if TYPE_CHECKING:
    from hybridorch.vm.boot import ConsoleLine, GuestRun

SOC_ARCHES = tuple(a for a, info in ARCHES.items() if info.local)


def _regex(value: str) -> str | None:
    try:
        re.compile(value)
    except re.error as err:  # err.msg and err.pos describe the mistake without quoting the pattern
        at = f" at position {err.pos}" if err.pos is not None else ""
        return f"not a regular expression: {err.msg}{at}"
    return None


_name = Scalar(str, pattern=DNS_LABEL, what=DNS_LABEL_WHAT)

SOC_CONTAINER = Obj({
    "name": Field(_name, required=True, doc="Test name, unique in the plan."),
    "image": Field(Scalar(str, validate=image_problem, what="an image reference"),
                   doc="`busybox` (busybox-static of the target arch) or a local Docker image "
                       "built for the target arch (exported with docker export)."),
    "rootfs": Field(Scalar(str), doc="A directory holding the container's root filesystem (relative to the plan)."),
    "command": Field(ListOf(Scalar(str), min_items=1), required=True),
    "env": Field(MapOf(Scalar(str), key_pattern=ENV_NAME, key_what=ENV_WHAT), default=dict),
    "expect": Field(Obj({
        "exitCode": Field(Scalar(int, minimum=0, maximum=255), default=0),
        "output": Field(Scalar(str, validate=_regex), doc="A regular expression the output must match (search)."),
    }), default=lambda: {"exitCode": 0, "output": None}),
    "timeout": Field(Scalar(int, minimum=1, maximum=3600), default=60,
                     doc="Seconds; a container still running then is killed and the test fails."),
}, description="One containerised test run inside the emulated board.")

SOC_TEST = Obj({
    "apiVersion": Field(Scalar(str, enum=(API_VERSION,)), required=True),
    "kind": Field(Scalar(str, enum=("SocTest",)), required=True),
    "metadata": Field(Obj({"name": Field(_name, required=True)}), required=True),
    "spec": Field(Obj({
        "target": Field(Obj({
            "arch": Field(Scalar(str, enum=SOC_ARCHES + ("riscv64",)), required=True),
            "machine": Field(Scalar(str), doc="QEMU machine: q35 or pc (amd64), virt (arm64)."),
            "memory": Field(Quantity("memory"), default="512Mi"),
            "cpus": Field(Scalar(int, minimum=1, maximum=16), default=1),
            "timeout": Field(Scalar(int, minimum=10, maximum=7200), default=900,
                             doc="Seconds for the whole run: boot plus every test."),
        }), required=True),
        "guest": Field(Obj({
            "kernel": Field(Scalar(str, enum=("debian",)), default="debian",
                            doc="Kernel from the Debian linux-image package of the target arch."),
            "userland": Field(Scalar(str, enum=("busybox",)), default="busybox",
                              doc="busybox-static and runc from Debian packages of the target arch."),
        }), default=lambda: {"kernel": "debian", "userland": "busybox"}),
        "containers": Field(ListOf(SOC_CONTAINER, min_items=1), required=True),
    }), required=True),
}, description="A test plan: containers to run on an emulated board of the target architecture.")


# --- typed plan --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SocContainer:
    name: str
    command: tuple[str, ...]
    image: str | None = None
    rootfs: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    exit_code: int = 0
    output: str | None = None
    timeout: int = 60

    @property
    def source(self) -> str:
        """What the guest module's ContainerRun.rootfs expects (docker: images are exported by the backend)."""
        if self.rootfs:
            return self.rootfs
        if self.image in (None, "busybox"):
            return "busybox"
        return f"docker:{self.image}"


@dataclass(frozen=True)
class SocPlan:
    name: str
    file: str
    arch: str
    machine: str
    memory_mib: int
    cpus: int
    timeout: int
    containers: tuple[SocContainer, ...]


def load_soc_plan(path: str, text: str | None = None) -> SocPlan:
    """Load and check a `kind: SocTest` file; SpecError names file, line and field of every problem."""
    errors = Errors(path)
    doc = check_document(path, SOC_TEST, text, errors, raise_errors=False)
    spec = doc.values.get("spec") or {}
    target = spec.get("target") or {}
    arch = target.get("arch")
    refusal = guest_refusal(arch) if isinstance(arch, str) else None
    if refusal:
        errors.add(doc.line("spec.target.arch"), "spec.target.arch", refusal)
    machine = target.get("machine")
    machines = ARCHES[arch].machines if arch in ARCHES else ()
    if machines and machine and machine not in machines:
        errors.add(doc.line("spec.target.machine"), "spec.target.machine",
                   f"not a machine of this arch: use {' or '.join(machines)}")
    memory = parse_quantity(target["memory"]) if target.get("memory") else None
    if memory is not None and memory < 128 * 2**20:
        errors.add(doc.line("spec.target.memory"), "spec.target.memory",
                   "at least 128Mi: the guest's initramfs (runc, container roots) lives in RAM")
    seen: dict[str, int] = {}
    for i, c in enumerate(spec.get("containers") or []):
        if not c:
            continue
        where = f"spec.containers[{i}]"
        if c.get("name") in seen:
            errors.add(doc.line(f"{where}.name"), f"{where}.name",
                       f"duplicate test name (first at spec.containers[{seen[c['name']]}])")
        seen.setdefault(c.get("name"), i)
        if c.get("image") and c.get("rootfs"):
            errors.add(doc.line(f"{where}.rootfs"), f"{where}.rootfs", "give either image or rootfs, not both")
        if not c.get("image") and not c.get("rootfs") and f"{where}.image" not in doc.lines:  # else: told above
            errors.add(doc.line(where), f"{where}.image", "an image (e.g. busybox) or a rootfs directory is required")
        if c.get("rootfs"):
            # its files are copied into the guest and may be printed by the test: it stays in the plan's directory
            root = path_inside(path, c["rootfs"])
            if root is None:
                errors.add(doc.line(f"{where}.rootfs"), f"{where}.rootfs", "outside the plan's directory (an "
                           "absolute path, '..' or a symlink out of it)")
            elif not os.path.isdir(root):
                errors.add(doc.line(f"{where}.rootfs"), f"{where}.rootfs", "not a directory")
            c["rootfs"] = root
    errors.raise_if_any()
    assert isinstance(arch, str)  # required and checked above
    containers = tuple(
        SocContainer(name=c["name"], command=tuple(c["command"]), image=c.get("image"), rootfs=c.get("rootfs"),
                     env=dict(c["env"]), exit_code=c["expect"]["exitCode"], output=c["expect"].get("output"),
                     timeout=c["timeout"])
        for c in spec["containers"])
    return SocPlan(name=doc.values["metadata"]["name"], file=path, arch=arch,
                   machine=machine or ARCHES[arch].machine, memory_mib=int(memory or 512 * 2**20) // 2**20,
                   cpus=target["cpus"], timeout=target["timeout"], containers=containers)


def program_for_plan(plan: SocPlan) -> GuestProgram:
    """Tests run one after the other (each with a watchdog), then the guest powers off; no network needed."""
    return GuestProgram(plan.name, containers=tuple(
        ContainerRun(c.name, c.command, c.source, c.env, timeout=c.timeout) for c in plan.containers),
        services=False, network=False)


# --- results -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TestResult:
    __test__ = False  # not a pytest class

    name: str
    outcome: str            # passed | failed | error
    exit_code: int | None
    duration: float
    output: str = ""
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"


@dataclass(frozen=True)
class PlanResult:
    plan: str
    file: str
    arch: str
    accelerator: str
    tests: tuple[TestResult, ...]
    boot_seconds: float | None = None          # QEMU start to the guest's /init
    first_result_seconds: float | None = None  # QEMU start to the first test result
    total_seconds: float = 0.0
    error: str = ""                             # the plan could not run (guest did not boot, ...)
    target: str = "local"
    node: str = ""                              # the cluster node its pod ran on (target kubernetes)
    phases: dict[str, float] = field(default_factory=dict)   # seconds: images, load, pending, start, boot, tests

    @property
    def ok(self) -> bool:
        return not self.error and all(t.passed for t in self.tests)

    def counts(self) -> dict[str, int]:
        out = {"passed": 0, "failed": 0, "error": 0}
        for t in self.tests:
            out[t.outcome] += 1
        return out


@dataclass(frozen=True)
class SocReport:
    plans: tuple[PlanResult, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.plans)

    def counts(self) -> dict[str, int]:
        out = {"passed": 0, "failed": 0, "error": 0}
        for p in self.plans:
            for outcome, n in p.counts().items():
                out[outcome] += n
        return out


def judge(c: SocContainer, exit_code: int | None, timed_out: bool, output: str, duration: float) -> TestResult:
    if exit_code is None:
        return TestResult(c.name, "error", None, duration, output,
                          "no result: the guest stopped before this test finished")
    if timed_out:
        return TestResult(c.name, "failed", exit_code, duration, output, f"timed out after {c.timeout}s (killed)")
    if exit_code != c.exit_code:
        return TestResult(c.name, "failed", exit_code, duration, output,
                          f"expected exit code {c.exit_code}, got {exit_code}")
    if c.output and not re.search(c.output, output, re.MULTILINE):
        return TestResult(c.name, "failed", exit_code, duration, output, f"output does not match /{c.output}/")
    return TestResult(c.name, "passed", exit_code, duration, output)


def parse_results(plan: SocPlan, lines: list[str]) -> list[TestResult]:
    """The guest's console reports turned into one result per planned test, in plan order."""
    reports = console.test_reports(lines, [c.name for c in plan.containers])
    return [judge(c, r.exit_code, r.timed_out, r.output, r.seconds) for c, r in zip(plan.containers, reports)]


def plan_result(plan: SocPlan, run: GuestRun | None, error: str = "", *, seconds: float = 0.0,
                target: str = "local", node: str = "", phases: dict[str, float] | None = None) -> PlanResult:
    """The verdicts of one board's console, the same whichever target booted it; `run` None: it never ran."""
    if run is None:
        tests = tuple(TestResult(c.name, "error", None, 0.0, "", "the guest did not run") for c in plan.containers)
        return PlanResult(plan.name, plan.file, plan.arch, "", tests, total_seconds=seconds, error=error,
                          target=target, node=node, phases=dict(phases or {}))
    results = parse_results(plan, [ln.text for ln in run.lines])
    boot = next((ln.at for ln in run.lines if console.is_booted(ln.text)), None)
    first = next((ln.at for ln in run.lines if console.is_result(ln.text)), None)
    if not error and run.timed_out:
        error = f"the run exceeded target.timeout ({plan.timeout}s) and was stopped; last console lines: " \
                f"{run.console_tail}"
    elif not error and not run.finished and any(r.exit_code is None for r in results):
        error = f"the guest stopped before every test ran; last console lines: {run.console_tail}"
    return PlanResult(plan.name, plan.file, plan.arch, run.accelerator, tuple(results), boot, first, run.seconds,
                      error, target, node, dict(phases or {}))


def host_memory_mib() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20


def run_plan(plan: SocPlan, workroot: Path, cancel: threading.Event | None = None,
             events: EventSink = ignore) -> PlanResult:
    """Boot one isolated guest for the plan and collect every test's result; a VM-level failure is the plan's
    error (the other plans still run)."""
    from hybridorch.vm.boot import run_guest  # the VM engine, the same one the local backend boots through

    started = time.monotonic()
    memory = host_memory_mib()
    if plan.memory_mib > memory:   # what a cluster calls unschedulable: no run, the same verdicts
        error = f"cannot run here: it needs {plan.memory_mib}Mi of memory and this machine has {memory}Mi"
        events(Event(plan.name, EventKind.FAILED, error))
        return plan_result(plan, None, error)
    workdir = Path(tempfile.mkdtemp(prefix=f"{plan.name}-", dir=workroot))

    def on_line(line: ConsoleLine) -> None:
        if console.is_booted(line.text):
            events(Event(plan.name, EventKind.BOOTED, f"{line.at:.1f}s after QEMU started"))

    events(Event(plan.name, EventKind.BOOTING, f"QEMU {plan.arch} on this machine"))
    try:
        run = run_guest(plan.arch, program_for_plan(plan), workdir=workdir, cpus=plan.cpus,
                        memory_mib=plan.memory_mib, machine=plan.machine, boot_timeout=min(plan.timeout, 180),
                        timeout=plan.timeout, cancel=cancel, on_line=on_line)
    except BackendError as err:
        events(Event(plan.name, EventKind.FAILED, str(err)))
        return plan_result(plan, None, str(err), seconds=time.monotonic() - started)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = plan_result(plan, run)
    events(finished_event(result))
    return result


def finished_event(result: PlanResult) -> Event:
    """The progress line of a board that ended: its verdicts (or why it did not run) and its time."""
    n = result.counts()
    where = f" on node {result.node}" if result.node else ""
    if result.error and not any(t.exit_code is not None for t in result.tests):
        return Event(result.plan, EventKind.FAILED, f"{_clip(result.error, 160)}{where}")
    return Event(result.plan, EventKind.FINISHED, f"{n['passed']} passed, {n['failed']} failed, {n['error']} errors "
                                                  f"in {result.total_seconds:.1f}s{where}")


def board_of(plan: SocPlan) -> Board:
    return Board(plan.name, plan.arch, plan.machine, plan.cpus, plan.memory_mib, plan.timeout, program_for_plan(plan))


def run_soc_tests(paths: list[str], junit: str | None = None, jobs: int | None = None, *, target: str = "local",
                  events: EventSink = ignore, ttl: str = "1h", **backend_options: Any) -> SocReport:
    """Load every plan (all spec problems at once), run them `jobs` at a time (local: 1 by default; kubernetes:
    all, the scheduler queues what does not fit) on this machine or as Jobs on a cluster, write JUnit XML if asked.

    Returns the report whatever the outcome; the CLI raises TestFailure when `not report.ok`."""
    problems: list[Problem] = []
    plans: list[SocPlan] = []
    for path in paths:
        try:
            plans.append(load_soc_plan(path))
        except SpecError as err:
            problems.extend(err.problems)
    if problems:
        raise SpecError(problems)
    first: dict[str, str] = {}
    for p in plans:
        if p.name in first:  # the other file's path was typed on the command line: naming it discloses nothing
            raise SpecError([Problem(p.file, 0, "metadata.name", f"the plan name is also used by {first[p.name]}")])
        first[p.name] = p.file
    if target not in ("local", "kubernetes"):
        raise SpecError([Problem("--target", 0, "target", f"soc-test runs on local or kubernetes, not {target!r}")])
    if junit is not None:   # before any board boots: a FIFO or a plan there is refused now, not after the tests
        check_writable(junit, "JUnit XML (--junit)", paths)
    from hybridorch.vm.guestimage import load_guest

    for arch in dict.fromkeys(p.arch for p in plans):  # fail fast, before any VM starts
        if target == "local":
            from hybridorch.vm.host import qemu_binary
            qemu_binary(arch)
        load_guest(arch)
    started = time.monotonic()
    if target == "kubernetes":
        results = _run_on_cluster(plans, jobs, events, ttl, backend_options)
    else:
        results = _run_here(plans, jobs or 1, events)
    report = SocReport(tuple(results), time.monotonic() - started)
    if junit is not None:
        write_junit(report, junit, paths)
    return report


def _run_here(plans: list[SocPlan], jobs: int, events: EventSink) -> list[PlanResult]:
    from hybridorch.vm.host import state_root

    workroot = state_root() / "soc"
    workroot.mkdir(parents=True, exist_ok=True)
    cancel = threading.Event()
    results: list[PlanResult] = []
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="soc") as pool:
        futures = [pool.submit(run_plan, p, workroot, cancel, events) for p in plans]
        try:
            results = [f.result() for f in futures]
        except BaseException:
            cancel.set()  # every running VM stops; queued plans never start
            for f in futures:
                f.cancel()
            raise
    try:
        workroot.rmdir()  # only if no other soc-test run is using it
    except OSError:
        pass
    return results


def _run_on_cluster(plans: list[SocPlan], jobs: int | None, events: EventSink, ttl: str,
                    backend_options: dict[str, Any]) -> list[PlanResult]:
    """Every plan as a Job (the kubernetes backend's run_boards); the same verdicts from the same consoles."""
    from hybridorch.backends.base import get_backend

    by_name = {p.name: p for p in plans}
    results: dict[str, PlanResult] = {}

    def finished(run: BoardRun) -> None:
        seconds = run.run.seconds if run.run is not None else 0.0
        results[run.board] = plan_result(by_name[run.board], run.run, run.error, seconds=seconds,
                                         target="kubernetes", node=run.node, phases=run.phases)
        events(finished_event(results[run.board]))

    backend = get_backend("kubernetes", events=events, **backend_options)
    runs = backend.run_boards([board_of(p) for p in plans], parallel=jobs or len(plans), ttl=ttl,
                              on_finished=finished)
    return [results[r.board] for r in runs]   # on_finished heard every board


# --- output ----------------------------------------------------------------------------------------------

def _clip(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_report(report: SocReport) -> str:
    rows = [("PLAN", "ARCH", "TEST", "RESULT", "EXIT", "TIME", "DETAIL")]
    for p in report.plans:
        for t in p.tests:
            last_output = (t.output.strip().splitlines() or [""])[-1]
            rows.append((p.plan, p.arch, t.name, t.outcome if t.passed else t.outcome.upper(),
                         "-" if t.exit_code is None else str(t.exit_code), f"{t.duration:.1f}s",
                         _clip(t.message or last_output)))
    lines = table(rows)   # test output and names are escaped: one test, one line
    for p in report.plans:
        if p.error:
            lines.append(printable(f"{p.plan}: error: {p.error}"))
        else:
            where = f" in a pod on node {p.node}" if p.node else ""
            spent = ", ".join(f"{k} {v:.1f}s" for k, v in p.phases.items() if k in ("images", "load", "pending",
                                                                                  "start"))
            lines.append(printable(f"{p.plan}: {p.arch} on QEMU {p.accelerator}{where}, boot "
                                   f"{p.boot_seconds or 0:.1f}s, first result {p.first_result_seconds or 0:.1f}s, "
                                   f"total {p.total_seconds:.1f}s{' (' + spent + ')' if spent else ''}"))
    n = report.counts()
    lines.append(f"{n['passed']} passed, {n['failed']} failed, {n['error']} errors in {report.seconds:.1f}s")
    return "\n".join(lines)


def junit_xml(report: SocReport) -> ET.Element:
    suites = ET.Element("testsuites", name="hybridorch soc-test", time=f"{report.seconds:.3f}")
    for p in report.plans:
        n_fail = sum(t.outcome == "failed" for t in p.tests)
        n_err = sum(t.outcome == "error" for t in p.tests)
        suite = ET.SubElement(suites, "testsuite", name=p.plan, tests=str(len(p.tests)), failures=str(n_fail),
                              errors=str(n_err), skipped="0", time=f"{p.total_seconds:.3f}",
                              hostname=socket.gethostname())
        props = ET.SubElement(suite, "properties")
        for key, value in (("file", p.file), ("arch", p.arch), ("accelerator", p.accelerator), ("target", p.target),
                           ("node", p.node),
                           ("bootSeconds", f"{p.boot_seconds or 0:.2f}"),
                           ("firstResultSeconds", f"{p.first_result_seconds or 0:.2f}")):
            ET.SubElement(props, "property", name=key, value=value)
        for t in p.tests:
            case = ET.SubElement(suite, "testcase", classname=f"soc.{p.plan}", name=t.name, time=f"{t.duration:.3f}")
            if t.outcome == "failed":
                ET.SubElement(case, "failure", message=t.message, type="failure").text = t.output
            elif t.outcome == "error":
                ET.SubElement(case, "error", message=p.error or t.message, type="error").text = t.message
            if t.output:
                ET.SubElement(case, "system-out").text = t.output
    return suites


def write_junit(report: SocReport, path: str, plans: Sequence[str] = ()) -> None:
    """JUnit XML into `path`, whole or not at all, never over a plan (ops.files.write_whole)."""
    tree = ET.ElementTree(junit_xml(report))
    ET.indent(tree)
    out = io.BytesIO()
    tree.write(out, encoding="utf-8", xml_declaration=True)
    try:
        write_whole(path, out.getvalue(), "JUnit XML (--junit)", plans)
    except OSError as err:
        raise OutputError(f"cannot write JUnit XML to {path}: {err.strerror}") from err


def failure_summary(report: SocReport) -> str:
    """The one line `soc-test` exits with when something did not pass."""
    n = report.counts()
    broken = [p.plan for p in report.plans if p.error]
    extra = f"; plans that did not run: {', '.join(broken)}" if broken else ""
    return f"soc-test: {n['failed']} failed, {n['error']} errors, {n['passed']} passed{extra}"


def check_report(report: SocReport) -> None:
    if not report.ok:
        raise TestFailure(failure_summary(report))
