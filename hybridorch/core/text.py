"""Text for a terminal: values shown escaped so a name cannot add a row or send an escape sequence, and the one
fixed-width table formatter every printed table uses. JSON and YAML output stay exact; this is for people.
"""
from __future__ import annotations

import json
import re
from typing import Iterable, Sequence

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(value: object) -> str:
    """`value` as text with every character Python does not call printable (C0/C1 controls, DEL, ESC, format
    characters such as bidi overrides, line/paragraph separators, lone surrogates, unassigned code points, and
    spaces other than the plain one) shown as an escape: `\\n`, `\\x1b`, `\\u009b`, `\\u202e`, `\\U000e0001`.

    A backslash is left as it is: messages quote values with repr(), whose escapes must not be doubled."""
    text = str(value)
    if text.isprintable():          # the common case, decided in C
        return text
    return "".join(ch if ch.isprintable() or ch == " " else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch in _SHORT:
        return _SHORT[ch]
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


CELL = 64          # widest cell of a table column shown whole
LAST_CELL = 240    # the last column (a message) is not padded and may run longer


def shorten(text: str, width: int) -> str:
    """text, or its start and end around a `…` that says how much is left out, within `width` characters: a
    hostile 100,000-character name must not turn a table into a wall."""
    if len(text) <= width:
        return text
    keep = width
    for _ in range(3):   # the gap's length depends on the number it shows
        gap = f"…({len(text) - keep:,} more)…"
        keep = max(width - len(gap), 2)
    return text[:keep - keep // 3] + gap + text[len(text) - keep // 3:]


def table(rows: Iterable[Sequence[object]]) -> list[str]:
    """Rows (the first is the header) as aligned lines, two spaces between columns, no trailing blanks; every
    cell goes through printable(), so one row is always one line, and is shortened past CELL characters (the last
    column past LAST_CELL). JSON output keeps every value whole."""
    cells = [[printable(c) for c in row] for row in rows]
    cells = [[shorten(c, LAST_CELL if i == len(r) - 1 else CELL) for i, c in enumerate(r)] for r in cells]
    if not cells:
        return []
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


# --- JSON for -o json ------------------------------------------------------------------------------------

_LONG_LIST = 16


def json_text(value: object) -> str:
    """json.dumps(value, indent=2), except that a list of more than 16 scalars is written on one line.

    The indented encoder is pure Python; a plan of 1,000 workloads over 5,000 host pools lists thousands of pool
    names per workload, which took it longer than planning did. Those lists are written by the C encoder instead,
    and only whitespace differs."""
    raw: list[str] = []

    def swap(x: object) -> object:
        if isinstance(x, dict):
            return {k: swap(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            if len(x) > _LONG_LIST and set(map(type, x)) <= _SCALARS:
                raw.append(json.dumps(x))
                return f"{_HOLE}{len(raw) - 1}"
            return [swap(v) for v in x]
        return x

    text = json.dumps(swap(value), indent=2)
    holes = _HOLES.findall(text)
    if len(holes) != len(raw):   # a string of the value spells a hole: no shortcut
        return json.dumps(value, indent=2)
    return _HOLES.sub(lambda m: raw[int(m.group(1))], text)


_SCALARS = {str, int, bool, type(None)}
_HOLE = "hybridorch-json-list:"
_HOLES = re.compile(f'"{_HOLE}([0-9]+)"')
