"""Time in one place: the spec's durations (30m, 7d, 1d12h), the RFC 3339 timestamps engines and clusters report,
and how ages and uptimes are shown. Pure: no I/O."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from hybridorch.errors import InputError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
PATTERN = r"([0-9]+[smhdw])+"      # the spec's schema adds a length limit (a duration is also a label value)
# a ttl or a maximum age of zero (0s, 0m, 0h0m) means "expired at once": some digit must be non-zero
POSITIVE = r"(?=.*[1-9])" + PATTERN
POSITIVE_WHAT = "a duration such as 30m, 12h, 7d or 1d12h, and positive (zero would mean expired at once)"
MAX_SECONDS = 100 * 365 * 86400     # a century: longer is a typo, and keeps every sum far from any overflow


def _seconds(text: str) -> int:
    """Seconds in text already matched against PATTERN whose numbers have at most 12 digits (int() of 5,000
    digits raises: Python's 4,300-digit limit)."""
    total, number = 0, ""
    for ch in text:
        if ch.isdigit():
            number += ch
        else:
            total += int(number) * UNITS[ch]
            number = ""
    return total


def is_duration(text: Any) -> bool:
    """A duration such as 30m, 7d or 1d12h of at most MAX_SECONDS (a ttl label edited by hand may be anything)."""
    return isinstance(text, str) and len(text) <= 1000 and re.fullmatch(PATTERN, text) is not None \
        and re.search(r"[0-9]{13}", text) is None and _seconds(text) <= MAX_SECONDS


def duration_problem(text: str) -> str | None:
    """Why a duration that matched the schema's pattern is still refused (the schema's `validate` check)."""
    return None if is_duration(text) else "must not be longer than 100 years (36500d)"


def parse_duration(text: str) -> int:
    """Seconds in a duration such as 7d or 1d12h (checked at load time; anything else is refused with exit 2,
    never a ValueError from int())."""
    if not is_duration(text):
        raise InputError("not a duration such as 30m, 7d or 1d12h of at most 100 years")
    return _seconds(text)


def parse_time(text: Any) -> float | None:
    """An RFC 3339 timestamp (creationTimestamp, Docker's Created/StartedAt, nanoseconds included) as epoch
    seconds; None for anything else and for Go's zero time (0001-01-01: Docker's "never started")."""
    if not isinstance(text, str) or not text or text.startswith("0001-"):
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00")
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def human_age(seconds: float) -> str:
    """An age in its largest whole unit: 3d, 5h, 12m, 40s (ps, gc, audit findings, snapshot lists)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def uptime_text(seconds: float | None) -> str:
    """An uptime in the status table: 2h5m, 3m20s, 40s; '-' when unknown."""
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60}m" if s >= 3600 else f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"
