"""Files on this machine that a run reads or writes but someone else may have planted: the stack lock file, the
VM state records (state.json, qemu.pid), a guest image's guest.json, and DOCKER_HOST. Each is refused or read as
unknown in one line: never followed into another file, never blocking on a FIFO, never an internal error."""
from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path

import pytest

from hybridorch.backends import local_lock
from hybridorch.backends.base import LockHeld, waiting_message
from hybridorch.errors import EXIT_BAD_INPUT, BackendError, InputError
from hybridorch.vm import guestimage
from hybridorch.vm.host import PID_FILE_LIMIT, STATE_LIMIT, read_pid, read_state, running_vm_states

T0 = 1_780_000_000.0


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HYBRIDORCH_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def _enter(stack: str = "shop", **kw: object) -> None:
    with local_lock.stack_lock(stack, command="hybridorch down", **kw):   # type: ignore[arg-type]
        pass


def _within(seconds: float, fn: object) -> None:
    """Run fn in a thread; a hang (a blocking open or read) fails the test instead of stalling the suite."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()   # type: ignore[operator]
        except BaseException as err:   # noqa: BLE001 - handed back to the test
            errors.append(err)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "blocked"
    if errors:
        raise errors[0]


# --- the stack lock file ---------------------------------------------------------------------------------------

def test_lock_file_symlink_is_refused_and_its_target_untouched(state: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (state / ".locks").mkdir(parents=True)
    (state / ".locks" / "shop.lock").symlink_to(victim)
    with pytest.raises(InputError, match="shop.lock: it is a symbolic link") as err:
        _enter()
    assert err.value.exit_code == EXIT_BAD_INPUT and "\n" not in str(err.value)
    assert victim.read_text() == "precious\n"


def test_lock_file_fifo_is_refused_without_blocking(state: Path) -> None:
    (state / ".locks").mkdir(parents=True)
    os.mkfifo(state / ".locks" / "shop.lock")
    with pytest.raises(InputError, match="shop.lock: it is not a regular file"):
        _within(10, _enter)


@pytest.mark.parametrize("plant", ["state-is-file", "locks-is-file", "lock-is-dir"])
def test_unusable_state_dir_is_bad_input(state: Path, plant: str) -> None:
    if plant == "state-is-file":
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text("x")
    elif plant == "locks-is-file":
        state.mkdir(parents=True)
        (state / ".locks").write_text("x")
    else:
        (state / ".locks" / "shop.lock").mkdir(parents=True)
    with pytest.raises(InputError, match="cannot open the lock file .*shop.lock") as err:
        _enter()
    assert err.value.exit_code == EXIT_BAD_INPUT


@pytest.mark.parametrize("record", [
    json.dumps({"pid": 1, "command": "up\x1b[2J\nrm -rf /", "started": 1e300, "host": "h\r\x07"}),
    '{"pid": 99999999999999999999, "command": "c", "started": NaN}',
    '{"pid": 7, "started": Infinity}',
    '{"pid": 7, "started": 1' + "0" * 400 + "}",
    '{"pid": true, "command": ["x"], "started": "yesterday", "host": 5}',
])
def test_hostile_holder_record_reads_as_unknown(record: str) -> None:
    holder = local_lock.parse_record(record)
    assert holder is not None
    assert holder.started is None and holder.command == "" and holder.host == ""
    assert holder.pid in (None, 1, 7)
    text = waiting_message("shop", holder)   # formatting never raises
    assert "unknown time" in text and "\x1b" not in text and "\n" not in text


def test_our_own_record_still_reads_back() -> None:
    holder = local_lock.parse_record(local_lock.holder_record(4242, "hybridorch snapshot create", T0, "box-1.lan"))
    assert holder is not None
    assert (holder.pid, holder.command, holder.started, holder.host) == (4242, "hybridorch snapshot create", T0,
                                                                         "box-1.lan")


def test_held_lock_with_hostile_record_is_refused_as_held(state: Path) -> None:
    path = local_lock.lock_path("shop")
    path.parent.mkdir(parents=True)
    path.write_text('{"pid": 99999999999999999999, "command": "c\\u001b[2J", "started": NaN}')
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)   # another open file description: this process waits on it like any other
        with pytest.raises(LockHeld, match="locked by another run .*unknown time"):
            _enter(wait=False)
    finally:
        os.close(fd)


# --- VM state records --------------------------------------------------------------------------------------------

def _vm_dir(state: Path) -> Path:
    d = state / "shop" / "web-0"
    d.mkdir(parents=True)
    return d


def test_state_record_fifo_and_device_read_as_unreadable(state: Path) -> None:
    d = _vm_dir(state)
    os.mkfifo(d / "state.json")
    os.mkfifo(d / "qemu.pid")
    _within(10, lambda: (read_state(d), read_pid(d)))
    assert read_state(d) is None and read_pid(d) is None
    (d / "state.json").unlink()
    (d / "state.json").symlink_to("/dev/zero")
    assert read_state(d) is None
    _within(10, running_vm_states)
    assert running_vm_states() == []


def test_state_record_size_and_shape_limits(state: Path) -> None:
    d = _vm_dir(state)
    (d / "state.json").write_text(" " * STATE_LIMIT + "{}")
    assert read_state(d) is None
    (d / "state.json").write_text("[" * 100_000)   # deeper than the parser recurses
    assert read_state(d) is None
    (d / "state.json").write_text('["not", "an", "object"]')
    assert read_state(d) is None
    (d / "state.json").write_text('{"stack": "shop"}')
    assert read_state(d) == {"stack": "shop"}
    (d / "qemu.pid").write_text("1" + " " * PID_FILE_LIMIT)
    assert read_pid(d) is None
    for text, pid in (("1\n", 1), ("0\n", None), ("-5", None), ("x", None), ("9" * 30, None)):
        (d / "qemu.pid").write_text(text)
        assert read_pid(d) == pid
    (d / "qemu.pid").write_text("1\n")   # pid 1 is alive: the record is listed
    assert running_vm_states() == [(d, {"stack": "shop"})]


# --- the guest image's guest.json ----------------------------------------------------------------------------------

GOOD_GUEST = {"arch": "amd64", "kernelVersion": "6.1.0", "packages": {"busybox-static": "1"}, "modules": ["a.ko"]}


@pytest.fixture
def guests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HYBRIDORCH_GUEST_DIR", str(tmp_path / "g"))
    (tmp_path / "g" / "amd64").mkdir(parents=True)
    return tmp_path / "g" / "amd64"


@pytest.mark.parametrize("content", ["{}", "[]", "not json", "[" * 100_000,
                                     json.dumps({**GOOD_GUEST, "modules": 5}),
                                     json.dumps({**GOOD_GUEST, "packages": {"a": 1}}),
                                     json.dumps({**GOOD_GUEST, "modules": ["../../etc/passwd"]}),
                                     json.dumps({**GOOD_GUEST, "kernelVersion": None})])
def test_damaged_guest_record_is_one_line_with_the_rebuild_hint(guests: Path, content: str) -> None:
    (guests / "guest.json").write_text(content)
    with pytest.raises(InputError) as err:   # the dir came from HYBRIDORCH_GUEST_DIR: the user's input
        guestimage.load_guest("amd64")
    text = str(err.value)
    assert "guest image at" in text and "is damaged" in text and "hybridorch.vm.guest fetch amd64" in text
    assert "\n" not in text


def test_guest_record_fifo_or_device_does_not_block(guests: Path) -> None:
    os.mkfifo(guests / "guest.json")
    with pytest.raises(InputError, match="is damaged"):
        _within(10, lambda: guestimage.load_guest("amd64"))
    (guests / "guest.json").unlink()
    (guests / "guest.json").symlink_to("/dev/zero")
    with pytest.raises(InputError, match="is damaged"):
        guestimage.load_guest("amd64")


def test_damaged_default_guest_cache_is_a_backend_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYBRIDORCH_GUEST_DIR", raising=False)
    monkeypatch.setattr(guestimage, "guest_dir", lambda arch: tmp_path / arch)
    (tmp_path / "amd64").mkdir()
    (tmp_path / "amd64" / "guest.json").write_text("{}")
    with pytest.raises(BackendError, match="is damaged") as err:
        guestimage.load_guest("amd64")
    assert not isinstance(err.value, InputError)


def test_good_guest_record_loads_and_missing_one_says_fetch(guests: Path) -> None:
    with pytest.raises(BackendError, match="no amd64 guest in .*fetch it with"):
        guestimage.load_guest("amd64")
    (guests / "guest.json").write_text(json.dumps(GOOD_GUEST))
    (guests / "vmlinuz").write_text("k")
    (guests / "base.cpio.gz").write_text("i")
    guest = guestimage.load_guest("amd64")
    assert (guest.kernel_version, guest.modules, dict(guest.packages)) == ("6.1.0", ("a.ko",), {"busybox-static": "1"})


# --- DOCKER_HOST -------------------------------------------------------------------------------------------------

def test_invalid_docker_host_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("docker")
    from hybridorch.backends import docker_api

    monkeypatch.setenv("DOCKER_HOST", "tcp://[::")
    with pytest.raises(BackendError, match=r"^DOCKER_HOST=tcp://\[:: is not a Docker engine address") as err:
        docker_api.connect(5)
    assert "\n" not in str(err.value)
