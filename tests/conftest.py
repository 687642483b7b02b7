"""Fixtures for the fast tests: a stack-file writer and an isolated HOME/KUBECONFIG for every test."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent


def require(ok: bool, why: str) -> None:
    """Missing infrastructure: a skip on a developer machine, a failure in CI (HYBRIDORCH_E2E=1)."""
    if ok:
        return
    if os.environ.get("HYBRIDORCH_E2E") == "1":
        pytest.fail(f"required infrastructure missing: {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KUBECONFIG", str(home / "kubeconfig"))
    return home


@pytest.fixture
def write_stack(tmp_path: Path) -> Callable[[str], str]:
    """Write YAML (dedented) to a file and return its path."""
    counter = iter(range(1000))

    def write(text: str, name: str | None = None) -> str:
        path = tmp_path / (name or f"stack{next(counter)}.yaml")
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return str(path)

    return write
