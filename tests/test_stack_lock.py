"""One run per stack at a time: the lock file on this machine (record format, waiting, refusing, taking over a
killed run's lock), the Lease decisions on a cluster (pure), the messages, and the CLI's --no-wait-lock."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner

from hybridorch.backends import kube_lock, local_lock
from hybridorch.backends.base import LOCK_HELD_EXIT, LockHeld, LockHolder, get_backend, waiting_message
from hybridorch.backends.docker_resources import created_key
from hybridorch.cli import cli
from tests.conftest import ROOT

T0 = 1_780_000_000.0   # 2026-05-28 20:26:40 UTC


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HYBRIDORCH_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def holder(state: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock of stack `shop` (as `hybridorch up`) until killed."""
    code = textwrap.dedent("""
        import sys, time
        from hybridorch.backends.local_lock import stack_lock
        with stack_lock("shop", command="hybridorch up"):
            print("held", flush=True)
            time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "HYBRIDORCH_STATE_DIR": str(state)})
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    yield child
    child.kill()
    child.wait()


# --- the record and the messages ---------------------------------------------------------------------------------

def test_a_record_reads_back_as_its_holder() -> None:
    text = local_lock.holder_record(4242, "hybridorch up", T0, "box")
    assert text.endswith("\n") and "\n" not in text[:-1]
    assert local_lock.parse_record(text) == LockHolder(4242, "hybridorch up", T0, "box")


@pytest.mark.parametrize("text", ["", "   \n", "{", "[1, 2]", '"pid"', '{"pid": true}', '{"pid": -3}',
                                  '{"pid": "12"}', "x" * 5000])
def test_a_torn_or_foreign_record_names_no_pid(text: str) -> None:
    found = local_lock.parse_record(text)
    assert found is None or found.pid is None


def test_the_waiting_message_names_stack_pid_command_and_start() -> None:
    line = waiting_message("shop", LockHolder(4242, "hybridorch up", T0))
    assert line == "waiting for the lock of stack shop held by pid 4242 (hybridorch up, started 2026-05-28 20:26:40 UTC)"
    assert waiting_message("shop", LockHolder(None, "", None)) == \
        "waiting for the lock of stack shop held by another run (hybridorch, started at an unknown time)"


def test_a_refusal_is_one_line_with_its_own_exit_code() -> None:
    err = LockHeld("shop", LockHolder(7, "hybridorch down", T0, "ci-1"))
    assert err.exit_code == LOCK_HELD_EXIT == 75
    assert err.lines() == ["stack shop is locked by pid 7 on ci-1 (hybridorch down, started 2026-05-28 20:26:40 UTC): "
                           "wait for it to finish, or run again without --no-wait-lock to wait"]


# --- the lock file ------------------------------------------------------------------------------------------------

def test_a_free_lock_is_taken_recorded_and_removed_on_release(state: Path) -> None:
    notes: list[str] = []
    with local_lock.stack_lock("shop", command="hybridorch up", on_wait=notes.append):
        record = local_lock.parse_record(local_lock.lock_path("shop").read_text())
        assert record is not None and record.pid == os.getpid() and record.command == "hybridorch up"
        with local_lock.stack_lock("shop", command="hybridorch up"):   # nested in one thread: no self-deadlock
            pass
        assert local_lock.lock_path("shop").exists()
    assert notes == [] and not local_lock.lock_path("shop").exists()


def test_a_second_run_refuses_with_the_holder_when_told_not_to_wait(holder: subprocess.Popen[str]) -> None:
    with pytest.raises(LockHeld) as err:
        with local_lock.stack_lock("shop", command="hybridorch down", wait=False):
            pytest.fail("two runs held one stack's lock")
    assert err.value.holder.pid == holder.pid and err.value.holder.command == "hybridorch up"
    with local_lock.stack_lock("other", command="hybridorch up", wait=False):   # another stack is not blocked
        pass


def test_a_waiting_run_says_why_and_gets_the_lock_when_the_holder_dies(holder: subprocess.Popen[str]) -> None:
    notes: list[str] = []
    got = threading.Event()

    def second() -> None:
        with local_lock.stack_lock("shop", command="hybridorch down", on_wait=notes.append):
            got.set()

    waiter = threading.Thread(target=second, daemon=True)
    waiter.start()
    deadline = time.monotonic() + 10
    while not notes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert notes and notes[0].startswith(f"waiting for the lock of stack shop held by pid {holder.pid} (hybridorch up")
    assert not got.is_set()
    holder.send_signal(signal.SIGKILL)   # the kernel drops the flock with the process
    waiter.join(10)
    assert got.is_set()
    # the killed run's record was found in the free lock: the takeover is said too
    assert len(notes) == 2 and notes[1].startswith(f"took over the lock of stack shop left by pid {holder.pid}")


def test_threads_of_one_process_serialize_too(state: Path) -> None:
    inside: list[int] = []
    overlap: list[bool] = []

    def run(n: int) -> None:
        with local_lock.stack_lock("shop", command="hybridorch up"):
            inside.append(n)
            overlap.append(len(inside) > 1)
            time.sleep(0.05)
            inside.remove(n)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert overlap == [False] * 4


def test_the_engine_interface_hands_out_the_local_lock(holder: subprocess.Popen[str]) -> None:
    for target in ("local", "docker", "qemu"):
        with pytest.raises(LockHeld):
            with get_backend(target).lock("shop", command="hybridorch up", wait=False):
                pass


def test_cli_no_wait_lock_refuses_in_one_line_with_exit_75(holder: subprocess.Popen[str], tmp_path: Path) -> None:
    stack = tmp_path / "shop.yaml"
    stack.write_text("apiVersion: hybridorch.dev/v1alpha1\nkind: Stack\nmetadata:\n  name: shop\nspec:\n"
                     "  workloads:\n    - name: web\n      image: nginx:1.25\n      runtime: container\n")
    result = CliRunner().invoke(cli, ["down", str(stack), "--no-wait-lock"])
    assert result.exit_code == 75, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: stack shop is locked by pid {holder.pid} ")


# --- the Lease: what it means is decided in pure code ------------------------------------------------------------

def _lease(holder: str = "box/1/ab", renewed: float | None = T0, duration: int = 30, version: str = "7") -> dict:
    spec: dict = {"holderIdentity": holder, "leaseDurationSeconds": duration, "acquireTime": kube_lock.micro_time(T0)}
    if renewed is not None:
        spec["renewTime"] = kube_lock.micro_time(renewed)
    return {"metadata": {"name": "stack-shop", "resourceVersion": version, "uid": "u1",
                         "annotations": {kube_lock.ANNOTATION_PID: "99", kube_lock.ANNOTATION_COMMAND: "hybridorch apply",
                                         kube_lock.ANNOTATION_HOST: "ci-2"}}, "spec": spec}


@pytest.mark.parametrize("lease, now, unchanged, expected", [
    (None, T0, 0, kube_lock.LeaseState.FREE),
    (_lease(holder=""), T0, 0, kube_lock.LeaseState.FREE),                    # released
    (_lease(), T0 + 10, 0, kube_lock.LeaseState.HELD),
    (_lease(), T0 + 29.9, 0, kube_lock.LeaseState.HELD),
    (_lease(), T0 + 31, 0, kube_lock.LeaseState.EXPIRED),                     # no renewal: a killed run
    (_lease(duration=120), T0 + 100, 0, kube_lock.LeaseState.HELD),           # its own duration counts
    (_lease(), T0 - 3600, 30, kube_lock.LeaseState.EXPIRED),                  # a clock ahead of ours: seen unchanged
    (_lease(), T0 - 3600, 29, kube_lock.LeaseState.HELD),
    (_lease(renewed=None), T0 + 31, 0, kube_lock.LeaseState.EXPIRED),         # acquireTime stands in
    (_lease(duration=0), T0 + 31, 0, kube_lock.LeaseState.EXPIRED),           # a nonsense duration: the default
])
def test_lease_state(lease: dict | None, now: float, unchanged: float, expected: kube_lock.LeaseState) -> None:
    assert kube_lock.lease_state(lease, now, unchanged) is expected


def test_a_lease_names_its_holder_and_a_takeover_carries_the_version_it_read() -> None:
    assert kube_lock.lease_holder(_lease()) == LockHolder(99, "hybridorch apply", T0, "ci-2")
    fresh = kube_lock.lease_body("shop", "me/1/cd", "hybridorch apply", T0 + 60, None)
    assert "resourceVersion" not in fresh["metadata"] and fresh["spec"]["leaseTransitions"] == 0
    assert fresh["metadata"]["labels"]["hybridorch.dev/stack"] == "shop"
    taken = kube_lock.lease_body("shop", "me/1/cd", "hybridorch apply", T0 + 60, _lease(version="8"))
    assert taken["metadata"]["resourceVersion"] == "8" and taken["spec"]["leaseTransitions"] == 1
    assert taken["spec"]["holderIdentity"] == "me/1/cd" and taken["spec"]["leaseDurationSeconds"] == 30
    assert kube_lock.parse_time(taken["spec"]["renewTime"]) == pytest.approx(T0 + 60)


def test_networks_sort_oldest_first_whatever_the_fraction_length() -> None:
    a = {"Created": "2026-05-28T20:26:40.12Z", "Id": "b"}
    b = {"Created": "2026-05-28T20:26:40.123456789Z", "Id": "a"}
    c = {"Created": "2026-05-28T20:26:41Z", "Id": "c"}
    assert sorted([c, b, a], key=created_key) == [a, b, c]
