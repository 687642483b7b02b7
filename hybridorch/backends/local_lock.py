"""The lock of a stack on this machine: an flock(2) on <state>/.locks/<stack>.lock, held for one up/down/gc/snapshot
run; the kernel drops it with its process, so a lock left by a killed run is simply free again.

The file records its holder (pid, command, start time, host) for the message a waiting run prints. It is unlinked
on release, under the lock; a run that waited on the old file notices (another inode at the path) and tries again.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import stat
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hybridorch.errors import BackendError, InputError
from hybridorch.vm.host import plausible_pid, state_root
from hybridorch.backends.base import (LockHeld, LockHolder, LockNotice, record_time, takeover_message,
                                      waiting_message)

LOCK_DIR = ".locks"      # a dot name: no stack (a DNS label) can have it as its state directory
RECORD_LIMIT = 4096      # a record is a few dozen bytes; anything longer is not ours
# the command and host a record may name: anything else in a foreign record is shown as unknown, never echoed
_COMMAND = re.compile(r"hybridorch( [a-z][a-z-]{0,30}){1,3}")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
# open errors that mean the configured state directory is unusable (bad input, exit 2), not a runtime failure
_INPUT_ERRNOS = {errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.EEXIST, errno.ENAMETOOLONG, errno.EACCES,
                 errno.EPERM, errno.EROFS}

# locks this process holds, per thread: a nested run of the same stack (a library caller inside a `with`) does not
# wait on itself; another thread of this process waits like another process
_held: dict[tuple[str, int], int] = {}
_held_guard = threading.Lock()


def lock_path(stack: str) -> Path:
    return state_root() / LOCK_DIR / f"{stack}.lock"


def holder_record(pid: int, command: str, started: float, host: str) -> str:
    return json.dumps({"pid": pid, "command": command, "started": round(started, 3), "host": host},
                      sort_keys=True) + "\n"


def parse_record(text: str) -> LockHolder | None:
    """The holder a lock file names; None for an empty or foreign record (being written, or not ours)."""
    if not text.strip() or len(text) > RECORD_LIMIT:
        return None
    try:
        data: Any = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    pid, command, started, host = data.get("pid"), data.get("command"), data.get("started"), data.get("host")
    return LockHolder(pid=plausible_pid(pid),
                      command=command if isinstance(command, str) and _COMMAND.fullmatch(command) else "",
                      started=record_time(started),
                      host=host if isinstance(host, str) and _HOST.fullmatch(host) else "")


def _read_holder(fd: int) -> LockHolder:
    os.lseek(fd, 0, os.SEEK_SET)
    found = parse_record(os.read(fd, RECORD_LIMIT + 1).decode("utf-8", errors="replace"))
    return found or LockHolder(pid=None, command="", started=None)


def _is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def _open(path: Path) -> int:
    """The lock file, opened read-write: only a regular file, never through a symlink (the run truncates and
    writes it, so a link would clobber its target) and never blocking (a FIFO planted at the path)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as err:
        why = err.strerror or str(err)
        if err.errno == errno.ELOOP and _is_link(path):
            why = "it is a symbolic link; remove it"
        kind = InputError if err.errno in _INPUT_ERRNOS else BackendError
        raise kind(f"cannot open the lock file {path}: {why}") from err
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InputError(f"cannot use the lock file {path}: it is not a regular file; remove it")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _still_there(fd: int, path: Path) -> bool:
    """The locked file is the one at `path` (the previous holder may have unlinked it while this run waited)."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def _acquire(stack: str, path: Path, wait: bool, on_wait: LockNotice | None) -> tuple[int, LockHolder | None]:
    """The locked fd, and the holder a killed run left in the file (None when it was free and clean)."""
    told = False
    while True:
        fd = _open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            if not wait:
                os.close(fd)
                raise LockHeld(stack, holder) from None
            if on_wait is not None and not told:
                on_wait(waiting_message(stack, holder))
                told = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)   # blocks until the holder releases or dies
            except BaseException:
                os.close(fd)
                raise
        if _still_there(fd, path):
            left = _read_holder(fd)
            # a record in a free lock: its run died holding it (a clean release unlinks the file)
            return fd, (left if left.pid is not None else None)
        os.close(fd)


@contextmanager
def stack_lock(stack: str, *, command: str, wait: bool = True, on_wait: LockNotice | None = None) -> Iterator[None]:
    """Hold the stack's lock on this machine for the `with` block (see Backend.lock)."""
    path = lock_path(stack)
    key = (str(path), threading.get_ident())
    with _held_guard:
        nested = key in _held
        if nested:
            _held[key] += 1
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    fd, left = _acquire(stack, path, wait, on_wait)
    try:
        if left is not None and on_wait is not None:
            on_wait(takeover_message(stack, left))
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_record(os.getpid(), command, time.time(), socket.gethostname()).encode(), 0)
        with _held_guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _held_guard:
                _held.pop(key, None)
            # unlinked while still locked: a run waiting on this inode sees it gone and opens the path afresh
            try:
                path.unlink()
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)
