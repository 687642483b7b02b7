"""The @@HYB console protocol between the busybox guest and the host, written and parsed here only.

The guest's /init prints, on its serial console, lines that start with `@@HYB`:
    @@HYB BOOTED <uptime> <uname -m>          the base system is up
    @@HYB READY                               the program runs (services started)
    @@HYB EXITED <service> <rc>               a service container stopped (it should run forever)
    @@HYB START <test> <uptime>               a test container starts
    @@HYB OUT <test> <base64 chunk>           its output, base64 in chunks (one line each)
    @@HYB RESULT <test> <rc> <timedout> <start> <end>
    @@HYB DONE                                every test ran; the guest powers off
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Iterable

PREFIX = "@@HYB"
BOOTED, READY, START, OUT, RESULT, DONE, EXITED = "BOOTED", "READY", "START", "OUT", "RESULT", "DONE", "EXITED"
READY_MARKER = f"{PREFIX} {READY}"


# --- writing: the shell lines of the guest's /init ---------------------------------------------------------

def say_booted() -> str:
    return f"echo '{PREFIX} {BOOTED}' $(cut -d' ' -f1 /proc/uptime) $(uname -m)"


def say_ready() -> str:
    return f"echo '{READY_MARKER}'"


def say_done() -> str:
    return f"echo '{PREFIX} {DONE}'"


def say_exited(name: str, rc: str) -> str:
    """`name`, `rc`: shell words."""
    return f"echo '{PREFIX} {EXITED}' {name} {rc}"


def say_start(name: str, start: str) -> str:
    """`name`, `start`: shell words (e.g. $1, $start)."""
    return f"echo '{PREFIX} {START}' {name} {start}"


def say_output(name: str, path: str) -> str:
    """A file's content as base64 OUT lines of test `name` (shell words)."""
    return f"base64 {path} | sed 's/^/{PREFIX} {OUT} '{name}' /'"


def say_result(name: str, rc: str, timed_out: str, start: str, end: str) -> str:
    return f"echo '{PREFIX} {RESULT}' {name} {rc} {timed_out} {start} {end}"


# --- parsing: what the host reads from the console ------------------------------------------------------------

@dataclass(frozen=True)
class Message:
    kind: str                  # BOOTED, READY, START, OUT, RESULT, DONE
    args: tuple[str, ...]


def parse(line: str) -> Message | None:
    """The protocol message of one console line; None for anything else (kernel messages, program output)."""
    parts = line.split()
    if len(parts) < 2 or parts[0] != PREFIX:
        return None
    return Message(parts[1], tuple(parts[2:]))


def is_booted(line: str) -> bool:
    msg = parse(line)
    return msg is not None and msg.kind == BOOTED


def is_done(line: str) -> bool:
    msg = parse(line)
    return msg is not None and msg.kind == DONE and not msg.args


def is_result(line: str) -> bool:
    msg = parse(line)
    return msg is not None and msg.kind == RESULT


def shows_ready(console: str) -> bool:
    """The guest's program is up: the console holds the READY line."""
    return READY_MARKER in console


def exited_services(console: str) -> list[tuple[str, str]]:
    """(name, exit code) of every service container the guest saw fail (a non-zero exit: one that ends with 0
    finished its work, as a one-shot setup container does)."""
    if f"{PREFIX} {EXITED}" not in console:
        return []
    found = []
    for line in console.splitlines():
        msg = parse(line)
        if msg is not None and msg.kind == EXITED and len(msg.args) == 2 and msg.args[1] != "0":
            found.append((msg.args[0], msg.args[1]))
    return found


@dataclass(frozen=True)
class TestReport:
    """What the guest reported of one test container."""

    name: str
    exit_code: int | None      # None: no RESULT line (the guest stopped first)
    timed_out: bool
    seconds: float
    output: str


def test_reports(lines: Iterable[str], names: Iterable[str]) -> list[TestReport]:
    """The OUT/RESULT lines of every test in `names`, in that order; a test without a RESULT has exit_code None."""
    out: dict[str, list[str]] = {}
    done: dict[str, tuple[int, bool, float]] = {}
    for line in lines:
        msg = parse(line)
        if msg is None or not msg.args:
            continue
        if msg.kind == OUT and len(msg.args) >= 2:
            out.setdefault(msg.args[0], []).append(msg.args[1])
        elif msg.kind == RESULT and len(msg.args) == 5:
            name, rc, timed_out, start, end = msg.args
            try:
                done[name] = (int(rc), timed_out == "1", float(end) - float(start))
            except ValueError:
                continue
    reports = []
    for name in names:
        try:
            text = base64.b64decode("".join(out.get(name, []))).decode(errors="replace")
        except ValueError:
            text = ""
        rc, timed_out, seconds = done.get(name, (None, False, 0.0))
        reports.append(TestReport(name, rc, timed_out, seconds, text))
    return reports
