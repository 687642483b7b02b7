"""Durations, timestamps and how ages are shown (hybridorch.core.durations)."""
from __future__ import annotations

import pytest

from hybridorch.core.durations import human_age, is_duration, parse_duration, parse_time, uptime_text


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("12h", 43200), ("7d", 604800), ("1d12h", 129600),
                                          ("2w", 1209600)])
def test_durations(text: str, seconds: int) -> None:
    assert is_duration(text) and parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "7days", "1.5h", None, 7])
def test_what_is_not_a_duration(text: object) -> None:
    assert not is_duration(text)


def test_engine_and_cluster_timestamps() -> None:
    # Docker's nanoseconds, Kubernetes' whole seconds, an explicit offset
    assert parse_time("2026-11-28T10:47:11.582351119Z") == pytest.approx(1795862831.582351)
    assert parse_time("2026-11-28T10:47:11Z") == 1795862831
    assert parse_time("2026-11-28T11:47:11+01:00") == 1795862831
    # Go's zero time is Docker's "never started"; the rest is not a time
    for text in ("0001-01-01T00:00:00Z", "", None, "yesterday"):
        assert parse_time(text) is None


@pytest.mark.parametrize("seconds,age,uptime", [(40, "40s", "40s"), (200, "3m", "3m20s"), (7500, "2h", "2h5m"),
                                                (3 * 86400 + 5, "3d", "72h0m")])
def test_ages_and_uptimes(seconds: int, age: str, uptime: str) -> None:
    assert human_age(seconds) == age and uptime_text(seconds) == uptime
    assert uptime_text(None) == "-"
