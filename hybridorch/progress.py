"""The CLI's progress display of engine events (backends.events): one line per workload or image with the
time since the command started, rewritten in place on a terminal and appended as plain lines otherwise."""
from __future__ import annotations

import re
import threading
import time
from typing import TYPE_CHECKING, TextIO

from hybridorch.core.text import printable

if TYPE_CHECKING:
    from hybridorch.backends.events import Event

# what every progress line starts with: tests and scripts tell progress from errors by it
LINE_PREFIX = re.compile(r"^\[\s*\d+\.\ds\] ")
_UP = "\x1b[{n}A\r"          # cursor n lines up, to the first column
_CLEAR_LINE = "\x1b[2K"


def subject(event: Event) -> str:
    """What a line is about: the workload, or `image REF` for the steps of an image (escaped: a name must not
    move the cursor that rewrites the block, nor add a line)."""
    return printable(f"image {event.workload}" if event.kind.of_image else event.workload)


def state_text(event: Event) -> str:
    """The state a line shows: an image's steps without the repeated word (`image web:1: building`)."""
    text = str(event.kind)
    return text.removeprefix("image ") if event.kind.of_image else text


def format_line(event: Event, elapsed: float, width: int = 0) -> str:
    """`[  2.3s] web: ready (1/1 replicas)`; `width` pads the subject so a live block lines up."""
    name = f"{subject(event)}:".ljust(width + 1 if width else 0)
    detail = f" ({printable(event.detail)})" if event.detail else ""   # engines quote names and errors
    return f"[{max(elapsed, 0.0):5.1f}s] {name} {state_text(event)}{detail}"


class ProgressDisplay:
    """An events sink that writes to `stream`: with `live` (default: when the stream is a terminal) it keeps one
    line per subject and rewrites that block in place with ANSI cursor moves; otherwise one line per event."""

    def __init__(self, stream: TextIO, *, live: bool | None = None, start: float | None = None,
                 columns: int = 0) -> None:
        self.stream = stream
        self.live = _isatty(stream) if live is None else live
        self.start = time.monotonic() if start is None else start
        self.columns = columns          # a live line longer than the terminal would wrap and break the rewrite
        self._latest: dict[str, Event] = {}   # subject -> its last event, in order of first appearance
        self._drawn = 0
        self._lost = False              # the stream failed once: stop writing to it
        self._lock = threading.Lock()   # events may come from a backend's worker threads

    def __call__(self, event: Event) -> None:
        with self._lock:
            if self._lost:
                return
            try:
                if self.live:
                    self._latest[subject(event)] = event
                    self._redraw()
                else:
                    self.stream.write(format_line(event, event.at - self.start) + "\n")
                self.stream.flush()
            except OSError:
                # a full or closed stderr must not fail (or roll back) the command the display only reports on
                self._lost = True

    def _redraw(self) -> None:
        width = max(len(s) for s in self._latest)
        out = [_UP.format(n=self._drawn)] if self._drawn else []
        for event in self._latest.values():
            line = format_line(event, event.at - self.start, width)
            if self.columns > 1:
                line = line[: self.columns - 1]
            out.append(f"{_CLEAR_LINE}{line}\n")
        self.stream.write("".join(out))
        self._drawn = len(self._latest)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):   # a closed or file-like stream without a terminal
        return False
