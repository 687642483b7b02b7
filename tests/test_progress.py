"""The progress display (hybridorch.progress) of engine events (hybridorch.backends.events): plain lines, the
live block rewritten in place on a terminal, elapsed times, and the CLI showing events on stderr only."""
from __future__ import annotations

import io
import json
from typing import Any

import pytest
from click.testing import CliRunner

from hybridorch.backends import base
from hybridorch.backends.base import Removal, WorkloadStatus
from hybridorch.backends.events import Event, EventKind, ignore
from hybridorch.cli import cli
from hybridorch.core.runtime import Runtime, State
from hybridorch.progress import LINE_PREFIX, ProgressDisplay, format_line, subject
from tests.conftest import ROOT

SHOP = str(ROOT / "examples" / "shop.yaml")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("event, elapsed, line", [
    (Event("web", EventKind.READY, "1/1 replicas"), 2.34, "[  2.3s] web: ready (1/1 replicas)"),
    (Event("ledger-vm", EventKind.BOOTING), 0.0, "[  0.0s] ledger-vm: booting"),
    (Event("hybridorch.local/web:1", EventKind.IMAGE_BUILDING, "from Dockerfile"), 61.25,
     "[ 61.2s] image hybridorch.local/web:1: building (from Dockerfile)"),
    (Event("api", EventKind.REMOVED), -0.5, "[  0.0s] api: removed"),       # an event from before the start
    (Event("db", EventKind.PENDING), 1234.56, "[1234.6s] db: pending"),
])
def test_a_plain_line_says_when_what_and_why(event: Event, elapsed: float, line: str) -> None:
    assert format_line(event, elapsed) == line
    assert LINE_PREFIX.match(line)


def test_the_subject_names_images_as_images() -> None:
    assert subject(Event("web", EventKind.CREATED)) == "web"
    assert subject(Event("r/x:1", EventKind.IMAGE_LOADED)) == "image r/x:1"


def test_plain_mode_appends_one_line_per_event_with_the_time_since_the_start() -> None:
    out = io.StringIO()
    show = ProgressDisplay(out, start=100.0)
    assert not show.live   # not a terminal
    show(Event("web", EventKind.CREATED, "container shop-web-0", at=100.5))
    show(Event("web", EventKind.READY, at=101.0))
    show(Event("ledger-vm", EventKind.BOOTING, at=103.0))
    assert out.getvalue().splitlines() == ["[  0.5s] web: created (container shop-web-0)", "[  1.0s] web: ready",
                                           "[  3.0s] ledger-vm: booting"]
    assert "\x1b" not in out.getvalue()


def test_live_mode_rewrites_one_line_per_workload_in_place() -> None:
    out = Tty()
    show = ProgressDisplay(out, start=0.0)
    assert show.live
    show(Event("web", EventKind.CREATED, at=0.5))
    assert out.getvalue() == "\x1b[2K[  0.5s] web: created\n"
    show(Event("ledger-vm", EventKind.BOOTING, at=1.0))
    show(Event("web", EventKind.READY, at=2.0))
    # each redraw goes back up over the block drawn before and rewrites every line, names lined up
    last = out.getvalue().rsplit("\x1b[2A\r", 1)[1]
    assert last == "\x1b[2K[  2.0s] web:       ready\n\x1b[2K[  1.0s] ledger-vm: booting\n"
    assert out.getvalue().count("\x1b[1A\r") == 1 and out.getvalue().count("\x1b[2A\r") == 1


def test_live_lines_are_cut_to_the_terminal_width() -> None:
    out = Tty()
    show = ProgressDisplay(out, start=0.0, columns=20)
    show(Event("web", EventKind.FAILED, "x" * 100, at=1.0))
    assert out.getvalue() == "\x1b[2K" + "[  1.0s] web: failed (xxxx"[:19] + "\n"


def test_events_are_typed_and_immutable() -> None:
    e = Event("web", EventKind.READY)
    with pytest.raises(AttributeError):
        e.kind = EventKind.FAILED  # type: ignore[misc]
    assert f"{e.kind}" == "ready" and e.at > 0
    assert ignore(e) is None


# --- the CLI: events on stderr, the result alone on stdout --------------------------------------------------------

class FakeBackend:
    """What the CLI reaches through api and the registry: tells its events sink, returns statuses."""

    def __init__(self, **options: Any) -> None:
        self.events = options.get("events") or ignore

    def up(self, plan: Any, rendered: Any, *, wait: bool = True, timeout: float = 300) -> list[WorkloadStatus]:
        names = [p.name for p in plan.placements]
        for name in names:
            self.events(Event(name, EventKind.APPLIED, "Deployment, Service"))
        for name in names:
            self.events(Event(name, EventKind.READY, "1/1 ready"))
        return [WorkloadStatus(name, Runtime.CONTAINER, State.READY) for name in names]

    def down(self, plan: Any, *, delete_data: bool = False) -> Removal:
        for p in plan.placements:
            self.events(Event(p.name, EventKind.REMOVED, "Deployment"))
        return Removal(tuple(f"Deployment shop/{p.name}" for p in plan.placements))

    def lock(self, stack: str, **how: Any) -> Any:
        # the engine interface's default: this machine's lock file (under the isolated HOME)
        return base.Backend.lock(self, stack, **how)  # type: ignore[arg-type]


@pytest.fixture
def fake_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "get_backend", lambda target, **options: FakeBackend(**options))


def test_apply_shows_a_ready_line_per_workload_on_stderr_and_json_on_stdout(fake_target: None) -> None:
    result = CliRunner().invoke(cli, ["apply", SHOP, "-o", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    statuses = json.loads(result.stdout)           # stdout is the JSON and nothing else
    names = [s["name"] for s in statuses]
    assert names == ["web", "api", "recommender-plugin", "payments", "ledger-vm"]
    lines = result.stderr.splitlines()
    assert all(LINE_PREFIX.match(line) for line in lines), lines
    for name in names:
        assert any(line.endswith(f"] {name}: ready (1/1 ready)") for line in lines), lines
        assert any(line.endswith(f"] {name}: applied (Deployment, Service)") for line in lines), lines


def test_up_and_delete_show_events_on_stderr(fake_target: None) -> None:
    up = CliRunner().invoke(cli, ["up", SHOP, "--target", "kubernetes"], catch_exceptions=False)
    assert up.exit_code == 0 and up.stdout.startswith("WORKLOAD ") and "s] " not in up.stdout
    assert sum(": ready" in line for line in up.stderr.splitlines()) == 5
    gone = CliRunner().invoke(cli, ["delete", SHOP], catch_exceptions=False)
    assert gone.exit_code == 0 and "deleted Deployment shop/web" in gone.stdout
    assert any(line.endswith("] web: removed (Deployment)") for line in gone.stderr.splitlines())
    assert all(LINE_PREFIX.match(line) for line in gone.stderr.splitlines())
