"""Fixtures for the fast tests: a stack-file writer and an isolated HOME/KUBECONFIG for every test."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent


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
