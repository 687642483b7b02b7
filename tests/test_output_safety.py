"""Output that cannot be forged and exit codes kept apart: names holding newlines or terminal escape sequences
stay one escaped cell in every table and progress line (JSON keeps them exact), SARIF locations are relative URI
references that validate against the official schema with the URI formats checked, and bad input (2), findings
(1), an internal error (70) and an unwritable output (2) are told apart, each in one line.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import jsonschema
import pytest
from click.testing import CliRunner

from hybridorch.backends.base import Managed, Snapshot, WorkloadStatus
from hybridorch.backends.events import Event, EventKind
from hybridorch.cli import cli
from hybridorch.core.runtime import Runtime, State
from hybridorch.core.text import printable, table
from hybridorch.errors import EXIT_BAD_INPUT, EXIT_FINDINGS, EXIT_INTERNAL
from hybridorch.ops.lifecycle import ps_table
from hybridorch.ops.report import status_table
from hybridorch.ops.sarif import relative_reference
from hybridorch.ops.snapshots import snapshot_table
from hybridorch.progress import LINE_PREFIX, ProgressDisplay, format_line
from tests.conftest import ROOT

SCHEMA = json.loads((ROOT / "tests" / "data" / "sarif-schema-2.1.0.json").read_text())
FORGED_ROW = "web\nhigh      HYB005  x.yaml:1  Pod forged  a finding that is not there"
# a newline that would add a row, an OSC window-title write, a screen clear, a C1 CSI, a bidi override
HOSTILE = [FORGED_ROW, "t\x1b]0;pwned\x07", "c\x1b[2J", "d\u009b31m", "e\u202eexe.txt", "f\r\tg"]
ESCAPED = {FORGED_ROW: "web\\nhigh", "t\x1b]0;pwned\x07": "t\\x1b]0;pwned\\x07", "c\x1b[2J": "c\\x1b[2J",
           "d\u009b31m": "d\\u009b31m", "e\u202eexe.txt": "e\\u202eexe.txt", "f\r\tg": "f\\r\\tg"}


def terminal_safe(text: str) -> bool:
    """Nothing but printable characters, spaces and the line breaks the formatter itself put there."""
    return all(ch == "\n" or ch == " " or ch.isprintable() for ch in text)


# --- the one escaping function and table formatter ------------------------------------------------------------

@pytest.mark.parametrize("raw, shown", [
    ("plain name-1", "plain name-1"),
    ("a\nb", "a\\nb"), ("a\r\nb", "a\\r\\nb"), ("tab\there", "tab\\there"),
    ("\x1b]0;title\x07", "\\x1b]0;title\\x07"), ("\x1b[2J", "\\x1b[2J"), ("\x00nul", "\\x00nul"),
    ("del\x7f", "del\\x7f"),
    ("\u009b", "\\u009b"), ("\x85next-line", "\\u0085next-line"), ("\u2028", "\\u2028"), ("\u202e", "\\u202e"),
    ("\xa0", "\\u00a0"), ("undecodable\udcff", "undecodable\\udcff"), ("\U000e0001", "\\U000e0001"),
    ("naïve ü 漢字", "naïve ü 漢字"), ("back\\slash", "back\\slash"),
])
def test_printable_escapes_every_control_and_invisible_character(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert terminal_safe(printable(raw)) and "\n" not in printable(raw)


def test_a_table_has_one_line_per_row_whatever_the_cells_hold() -> None:
    rows = [("NAME", "STATE")] + [(name, "ready") for name in HOSTILE]
    lines = table(rows)
    assert len(lines) == len(rows) and all(terminal_safe(line) for line in lines)
    for line, name in zip(lines[1:], HOSTILE):
        assert line.startswith(ESCAPED[name])
    # columns still line up on the escaped text
    assert len({line.index("ready") for line in lines[1:]}) == 1


# --- every table the CLI prints -------------------------------------------------------------------------------

def test_ps_status_and_snapshot_tables_escape_names_from_what_runs() -> None:
    now = time.time()
    # records as an engine's inventory returns them, with the names a hostile stack or cluster object could carry
    items = [Managed("local", "container", name, "", name, name, Runtime.CONTAINER, name, "1h", now - 60)
             for name in HOSTILE]
    statuses = [WorkloadStatus(name, Runtime.VM, State.FAILED, (name,), "tcg", 5.0, name) for name in HOSTILE]
    snaps = [Snapshot(name, name, now - 10, None, name) for name in HOSTILE]
    for text in (ps_table(items, now), status_table(statuses), snapshot_table(snaps, now)):
        lines = text.split("\n")
        assert len(lines) == 1 + len(HOSTILE) and terminal_safe(text)
        for line, name in zip(lines[1:], HOSTILE):
            assert ESCAPED[name] in line


def hostile_manifest(tmp_path: Path, names: list[str], file_name: str = "hostile.yaml") -> Path:
    """Hand-written Kubernetes objects named as an attacker would, each with a privileged container (HYB005)."""
    docs = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": n, "namespace": "shop"},
             "spec": {"containers": [{"name": "c", "image": "registry.example/app:1",
                                      "securityContext": {"privileged": True},
                                      "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}} for n in names]
    path = tmp_path / file_name
    path.write_text("\n---\n".join(json.dumps(d) for d in docs) + "\n")   # JSON is YAML: escapes stay escapes
    return path


def test_the_audit_table_has_one_row_per_finding_and_its_summary_agrees(tmp_path: Path) -> None:
    path = hostile_manifest(tmp_path, HOSTILE)
    as_json = CliRunner().invoke(cli, ["audit", str(path), "--format", "json", "--fail-on", "never"])
    assert as_json.exit_code == 0, as_json.output
    findings = json.loads(as_json.stdout)["findings"]
    # JSON stays exact: every name comes back as it was written
    assert {n for n in HOSTILE if any(n in f["object"] for f in findings)} == set(HOSTILE)

    result = CliRunner().invoke(cli, ["audit", str(path), "--fail-on", "never"])
    assert result.exit_code == 0 and terminal_safe(result.stdout)
    lines = result.stdout.rstrip("\n").split("\n")
    header, rows, blank, summary = lines[0], lines[1:-2], lines[-2], lines[-1]
    assert header.startswith("SEVERITY") and blank == ""
    assert len(rows) == len(findings) and summary.startswith(f"{len(findings)} finding(s)")
    assert sum(row.startswith("high ") for row in rows) == sum(f["severity"] == "high" for f in findings)
    for name in HOSTILE:
        assert any(ESCAPED[name] in row for row in rows)


def test_a_file_name_with_escapes_stays_one_line_in_results_and_errors(tmp_path: Path, write_stack) -> None:
    good = Path(write_stack("apiVersion: hybridorch.dev/v1alpha1\nkind: Stack\nmetadata: {name: s}\n"
                            "spec:\n  workloads:\n    - {name: web, image: nginx:1}\n", "ok\x1b]0;t\x07\n.yaml"))
    ok = CliRunner().invoke(cli, ["validate", str(good)])
    assert ok.exit_code == 0 and ok.stdout.count("\n") == 1 and terminal_safe(ok.stdout)
    assert "ok\\x1b]0;t\\x07\\n.yaml: ok" in ok.stdout
    bad = tmp_path / "bad\x1b[2J\n.yaml"
    bad.write_text("kind: Stack\n")
    result = CliRunner().invoke(cli, ["plan", str(bad)])
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.stderr.count("\n") == len(result.stderr.splitlines()) and terminal_safe(result.stderr)
    assert all(line.startswith(str(tmp_path)) for line in result.stderr.splitlines())


def test_progress_lines_escape_names_and_details() -> None:
    plain = io.StringIO()
    show = ProgressDisplay(plain, live=False, start=0.0)
    for name in HOSTILE:
        show(Event(name, EventKind.FAILED, f"container {name} exited", at=1.0))
    lines = plain.getvalue().split("\n")[:-1]
    assert len(lines) == len(HOSTILE) and terminal_safe(plain.getvalue())
    assert all(LINE_PREFIX.match(line) for line in lines)
    assert format_line(Event("c\x1b[2J", EventKind.READY, "\u009b"), 1.0) == "[  1.0s] c\\x1b[2J: ready (\\u009b)"
    # on a terminal the only escape sequences are the display's own cursor moves and line clears
    live = io.StringIO()
    show = ProgressDisplay(live, live=True, start=0.0)
    for name in HOSTILE:
        show(Event(name, EventKind.STARTING, name, at=1.0))
    own = live.getvalue().replace("\x1b[2K", "").replace(f"\x1b[{len(HOSTILE) - 1}A\r", "")
    for n in range(1, len(HOSTILE)):
        own = own.replace(f"\x1b[{n}A\r", "")
    assert terminal_safe(own)


def test_a_progress_display_on_a_full_stderr_does_not_fail_the_command() -> None:
    class Full(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError(28, "No space left on device")

    show = ProgressDisplay(Full(), live=False, start=0.0)
    show(Event("web", EventKind.READY))
    show(Event("web", EventKind.READY))   # quiet from then on


# --- SARIF: relative URI references under %SRCROOT%, validated with the URI formats checked --------------------

AWKWARD = ["with space.yaml", "naïve ü.yaml", "100%.yaml", "a:b.yaml", "new\nline.yaml", "q?#[x].yaml"]


def uri_format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker()
    # without rfc3986-validator jsonschema accepts any string as a URI: the test would pass vacuously
    assert {"uri", "uri-reference"} <= set(checker.checkers)
    assert not checker.conforms("a b.yaml", "uri-reference") and not checker.conforms("x.yaml", "uri")
    assert checker.conforms("with%20space.yaml", "uri-reference")
    return checker


def test_sarif_locations_are_relative_uri_references_that_resolve_to_the_files(tmp_path: Path, monkeypatch) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "else where"
    work.mkdir()
    elsewhere.mkdir()
    files = [hostile_manifest(work, ["web"], name) for name in AWKWARD]
    files.append(hostile_manifest(elsewhere, ["web"], "o.yaml"))
    monkeypatch.chdir(work)
    args = [f.name if f.parent == work else str(f) for f in files]
    result = CliRunner().invoke(cli, ["audit", *args, "--format", "sarif", "--fail-on", "never"])
    assert result.exit_code == 0, result.output
    sarif = json.loads(result.stdout)
    validator = jsonschema.Draft4Validator(SCHEMA, format_checker=uri_format_checker())
    errors = sorted(validator.iter_errors(sarif), key=str)
    assert not errors, errors[0].message
    run = sarif["runs"][0]
    base = run["originalUriBaseIds"]["%SRCROOT%"]["uri"]
    assert base == work.as_uri() + "/"
    located = set()
    for res in run["results"]:
        loc = res["locations"][0]["physicalLocation"]["artifactLocation"]
        assert loc["uriBaseId"] == "%SRCROOT%" and urlsplit(loc["uri"]).scheme == ""   # `a:b` is no scheme
        target = urlsplit(urljoin(base, loc["uri"]))
        located.add(Path(os.fsdecode(unquote_to_bytes(target.path))))
    assert located == set(files)
    assert relative_reference("a:b.yaml", str(work)) == "./a:b.yaml"
    assert relative_reference(str(elsewhere / "o.yaml"), str(work)) == "../else%20where/o.yaml"
    # the same document with a raw space in a location fails the validation (the format check is not vacuous)
    run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] = "with space.yaml"
    assert list(validator.iter_errors(sarif))


# --- exit codes -----------------------------------------------------------------------------------------------

def test_an_internal_error_is_one_line_with_its_own_code(monkeypatch) -> None:
    def simulated_fault(*args, **kwargs):   # a bug cannot be produced on purpose: simulate one
        raise RuntimeError("simulated fault\nin two lines")

    monkeypatch.setattr("hybridorch.api.plan_stack", simulated_fault)
    result = CliRunner().invoke(cli, ["plan", str(ROOT / "examples" / "shop.yaml")])
    assert result.exit_code == EXIT_INTERNAL == 70
    assert result.stderr == ("internal error: RuntimeError: simulated fault\\nin two lines (a bug in hybridorch; "
                             "--debug shows the traceback)\n")
    debug = CliRunner().invoke(cli, ["--debug", "plan", str(ROOT / "examples" / "shop.yaml")])
    assert debug.exit_code == EXIT_INTERNAL and "Traceback" in debug.stderr and "simulated_fault" in debug.stderr


def test_bad_input_findings_and_usage_errors_keep_their_codes(tmp_path: Path) -> None:
    insecure = str(ROOT / "examples" / "insecure.yaml")
    assert CliRunner().invoke(cli, ["audit", insecure]).exit_code == EXIT_FINDINGS
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Stack\n")
    for args in (["plan", str(bad)], ["plan", str(tmp_path / "missing.yaml")], ["plan", str(tmp_path)],
                 ["audit", str(tmp_path)], ["audit"], ["plan", insecure, "-o", "xml"], ["no-such-command"],
                 ["audit", insecure, "--output", str(tmp_path)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == EXIT_BAD_INPUT, (args, result.output)
        assert len(result.stderr.splitlines()) == 1 and "Usage:" not in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_an_unwritable_output_path_is_one_line_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "no-such-dir" / "audit.sarif"
    result = CliRunner().invoke(cli, ["audit", str(ROOT / "examples" / "insecure.yaml"), "--output", str(out)])
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.stderr == f"error: cannot write the report to {out}: No such file or directory\n"


@pytest.mark.parametrize("args, to_stdout", [
    (["audit", "examples/insecure.yaml", "--format", "sarif", "--output", "/dev/full"], False),
    (["plan", "examples/shop.yaml"], True),
    (["audit", "examples/insecure.yaml", "--format", "json"], True),
])
def test_a_full_device_is_one_line_exit_2(args: list[str], to_stdout: bool) -> None:
    # the real /dev/full, through the real entry point
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "hybridorch", *args], cwd=ROOT, text=True, check=False,
                              stdout=full if to_stdout else subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    # stdout that is full says so; --output /dev/full is refused before writing: a report goes to a regular file
    expected = "No space left on device" if to_stdout else "it is a device, not a regular file"
    assert len(proc.stderr.splitlines()) == 1 and expected in proc.stderr, proc.stderr


def test_a_reader_that_goes_away_is_neither_findings_nor_a_traceback() -> None:
    read, write = os.pipe()
    os.close(read)   # `| head` that already exited: every write to the pipe fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "hybridorch", "audit", "examples/insecure.yaml"], cwd=ROOT,
                              stdout=write, stderr=subprocess.PIPE, text=True, check=False)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == ""


def test_a_huge_name_is_shortened_in_the_audit_table_and_kept_whole_in_json(tmp_path: Path):
    name = "n" * 50_000 + "-end"
    path = tmp_path / "big.yaml"
    path.write_text(f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\n"
                    "spec: {hostNetwork: true, containers: [{name: c, image: busybox}]}\n")
    result = CliRunner().invoke(cli, ["audit", str(path)])
    assert result.exit_code == 1, result.output
    rows = [line for line in result.stdout.splitlines() if "HYB" in line]
    assert rows and all(len(line) < 600 for line in rows), [len(line) for line in rows]
    assert "more)…" in rows[0] and "-end" in rows[0]            # its start and end, and how much is left out
    whole = CliRunner().invoke(cli, ["audit", "--format", "json", str(path)])
    assert f"Pod {name}" in {f["object"] for f in json.loads(whole.stdout)["findings"]}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hybridorch", *args], cwd=ROOT, text=True, capture_output=True,
                          timeout=60, env={**os.environ, **(env or {})}, check=False)


def test_a_report_is_never_written_over_an_input_and_dash_is_stdout(tmp_path: Path) -> None:
    stack = tmp_path / "s.yaml"
    stack.write_text((ROOT / "examples" / "shop.yaml").read_text())
    before = stack.read_text()
    (tmp_path / "link").symlink_to(stack)
    for out in (str(stack), str(tmp_path / "link")):
        done = _cli("audit", str(stack), "--output", out)
        assert done.returncode == EXIT_BAD_INPUT and "it is one of the files read" in done.stderr, done.stderr
        assert len(done.stderr.splitlines()) == 1 and stack.read_text() == before
    done = _cli("audit", str(stack), "--output", "")
    assert done.returncode == EXIT_BAD_INPUT and "the file name is empty" in done.stderr
    done = _cli("audit", "--fail-on", "never", str(stack), "--output", "-")
    assert done.returncode == 0 and "finding(s)" in done.stdout


def test_a_plot_into_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "p.svg")
    done = _cli("capacity", "examples/shop.yaml", "--plot", str(tmp_path / "p.svg"))
    assert done.returncode == EXIT_BAD_INPUT and "not a regular file" in done.stderr, done.stderr
    done = _cli("capacity", "examples/shop.yaml", "--plot", "")
    assert done.returncode == EXIT_BAD_INPUT and "--plot needs a file name" in done.stderr, done.stderr


@pytest.mark.parametrize("args, says", [
    (["render", "examples/shop.yaml", "--out", "/tmp/" + "a" * 300], "File name too long"),
    (["audit", "--max-image-age", "0s", "examples/shop.yaml"], "is not a positive duration"),
    (["plan", "--policy", "", "examples/shop.yaml"], "--policy: is empty"),
])
def test_unusable_arguments_are_one_line_exit_2(args: list[str], says: str) -> None:
    done = _cli(*args)
    assert done.returncode == EXIT_BAD_INPUT and says in done.stderr and len(done.stderr.splitlines()) == 1, \
        done.stderr


def test_broken_completion_variables_are_one_line_exit_2() -> None:
    done = _cli(env={"_HYBRIDORCH_COMPLETE": "bash_complete", "COMP_WORDS": "hybridorch ", "COMP_CWORD": "junk"})
    assert done.returncode == EXIT_BAD_INPUT and done.stderr.startswith("error: shell completion"), done.stderr
    done = _cli(env={"_HYBRIDORCH_COMPLETE": "bash_complete", "COMP_WORDS": "hybridorch pl", "COMP_CWORD": "1"})
    assert done.returncode == 0 and "plan" in done.stdout


def test_junit_output_is_checked_before_any_board_boots(tmp_path: Path) -> None:
    """A FIFO (it would block after the tests), a device or the plan itself as --junit is refused at once."""
    plan = ROOT / "examples" / "soc-amd64.yaml"
    os.mkfifo(tmp_path / "j.fifo")
    env = {"HYBRIDORCH_QEMU_BINARY": "/nonexistent/qemu"}   # nothing could boot: the refusal must come first
    for junit, says in [(str(tmp_path / "j.fifo"), "not a regular file"), ("/dev/full", "not a regular file"),
                        (str(plan), "one of the files read"), (str(tmp_path / "no" / "j.xml"), "No such file")]:
        done = _cli("soc-test", "--junit", junit, str(plan), env=env)
        assert done.returncode == EXIT_BAD_INPUT and says in done.stderr, (junit, done.stderr)
        assert len(done.stderr.splitlines()) == 1


def test_no_command_prints_the_help_and_exits_2() -> None:
    done = _cli()
    assert done.returncode == EXIT_BAD_INPUT and done.stderr.startswith("Usage: hybridorch") and "Commands:" in done.stderr


def test_a_workload_template_that_renders_nothing_fails_the_render(tmp_path: Path) -> None:
    (tmp_path / "t" / "kubernetes").mkdir(parents=True)
    (tmp_path / "t" / "kubernetes" / "workload.yaml.j2").write_text("{# nothing #}\n")
    done = _cli("render", "--templates", str(tmp_path / "t"), "examples/shop.yaml")
    assert done.returncode == 3 and "rendered no object for workload" in done.stderr, done.stderr
    done = _cli("render", "--templates", "/dev/null", "examples/shop.yaml")
    assert done.returncode == EXIT_BAD_INPUT and "is not a directory" in done.stderr, done.stderr
