"""Shared fixtures of the end-to-end tests: `require` (skip locally, fail in CI), a Docker client, an isolated
state dir, a stack-file writer, and a session cleanup of every object carrying a test stack's labels.

Test stacks are named `e2e-...`; what a session used is removed after it, stale `e2e-*` leftovers before it.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import require  # noqa: F401  (re-exported for the e2e tests)
import yaml

ROOT = Path(__file__).resolve().parent.parent
TEST_STACK_PREFIX = "e2e-"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
LABEL_STACK = "hybridorch.dev/stack"


def pytest_configure(config: pytest.Config) -> None:
    # stack files written to tmp dirs still find the example image recipes after a non-editable install
    os.environ.setdefault("HYBRIDORCH_IMAGES", str(ROOT / "examples" / "images"))


def free_ports(n: int) -> list[int]:
    """n TCP ports free on 127.0.0.1 right now (held together while choosing, so they are distinct)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def hybridorch(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
               check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (`python -m hybridorch`), from the repository root."""
    result = subprocess.run([sys.executable, "-m", "hybridorch", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"hybridorch {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def _engine() -> Any:
    try:
        import docker

        client = docker.from_env(timeout=60)
        client.ping()
        return client
    except Exception:  # noqa: BLE001 - any failure means "no usable engine"
        return None


STALE_AFTER = 3600   # seconds; younger e2e-* objects may belong to a pytest run in parallel on this machine
# kept in the environment, not a module global: test modules import this file as e2e.conftest while pytest
# loads it as conftest, and the two copies must share one list
_USED_STACKS = "HYBRIDORCH_E2E_STACKS"


def used_stacks() -> set[str]:
    return {s for s in os.environ.get(_USED_STACKS, "").split(",") if s}


def register_stack(name: str) -> str:
    """Note a test stack so the session cleanup removes whatever a failed test left of it."""
    assert name.startswith(TEST_STACK_PREFIX), f"test stacks are named {TEST_STACK_PREFIX}* (got {name!r})"
    os.environ[_USED_STACKS] = ",".join(sorted(used_stacks() | {name}))
    return name


def _age(created: str) -> float:
    from datetime import datetime, timezone

    try:
        stamp = datetime.fromisoformat(created[:19]).replace(tzinfo=timezone.utc)
    except ValueError:
        return 0.0
    return (datetime.now(timezone.utc) - stamp).total_seconds()


def remove_test_objects(client: Any, stacks: set[str] | None = None) -> list[str]:
    """Remove containers, networks and volumes hybridorch created for test stacks: `stacks`, or else every `e2e-*`
    stack's objects older than STALE_AFTER (leftovers of a killed run; a parallel run's objects are young)."""
    def ours(labels: dict[str, str] | None, created: str) -> bool:
        stack = (labels or {}).get(LABEL_STACK, "")
        if stacks is not None:
            return stack in stacks
        return stack.startswith(TEST_STACK_PREFIX) and _age(created) > STALE_AFTER

    import docker.errors

    removed = []
    for c in client.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}=hybridorch"}):
        if ours(c.labels, c.attrs.get("Created", "")):
            try:
                c.remove(force=True)
                removed.append(c.name)
            except docker.errors.NotFound:  # removed meanwhile by the test that owned it
                pass
    for n in client.networks.list(filters={"label": f"{LABEL_MANAGED}=hybridorch"}):
        if ours(n.attrs.get("Labels"), n.attrs.get("Created", "")):
            try:
                n.remove()
                removed.append(n.name)
            except docker.errors.NotFound:
                pass
    # volumes outlive `down` on purpose (data); test stacks' volumes go with the session
    for v in client.volumes.list(filters={"label": f"{LABEL_MANAGED}=hybridorch"}):
        if ours(v.attrs.get("Labels"), v.attrs.get("CreatedAt", "")):
            try:
                v.remove(force=True)
                removed.append(v.name)
            except docker.errors.APIError:  # gone meanwhile, or still used by a parallel run's container
                pass
    return removed


@pytest.fixture(scope="session", autouse=True)
def _cleanup_test_stacks() -> Iterator[None]:
    client = _engine()
    if client is not None:
        remove_test_objects(client)
    yield
    if client is not None and used_stacks():
        remove_test_objects(client, used_stacks())


@pytest.fixture(scope="session")
def docker_client() -> Any:
    """A docker SDK client for a reachable engine (start one with e2e/setup.d/10-docker.sh)."""
    client = _engine()
    require(client is not None, "no reachable Docker engine (run e2e/setup.d/10-docker.sh)")
    return client


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    monkeypatch.setenv("HYBRIDORCH_STATE_DIR", str(path))
    return path


@pytest.fixture
def stack_file(tmp_path: Path) -> Callable[..., str]:
    """Write a stack (YAML text, or a dict) to a file in tmp and return its path; names must start with e2e-."""
    counter = iter(range(1000))

    def write(content: str | dict[str, Any], name: str | None = None) -> str:
        text = yaml.safe_dump(content, sort_keys=False) if isinstance(content, dict) else \
            textwrap.dedent(content).lstrip("\n")
        register_stack((yaml.safe_load(text).get("metadata") or {}).get("name", ""))
        path = tmp_path / (name or f"stack{next(counter)}.yaml")
        path.write_text(text)
        return str(path)

    return write
