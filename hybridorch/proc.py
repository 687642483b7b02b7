"""The one process runner: every subprocess hybridorch starts goes through `run` or `stream`, every forked worker
through `map_forked`, and every wait-until-deadline loop through `wait_until`. A failure (missing binary, timeout,
non-zero exit) becomes one error line naming what failed and the command's last stderr line, here and nowhere else."""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from hybridorch.errors import BackendError, HybridorchError

# what a caller may raise instead of BackendError (e.g. a SpecError for a bad input file): message -> error
ErrorFactory = Callable[[str], HybridorchError]
# turns the failed command's stderr into the message (e.g. kubectl's errors into advice); default: its last line
Explain = Callable[[str], str]

Completed = subprocess.CompletedProcess
T = TypeVar("T")


def workers() -> int:
    """How many CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # pragma: no cover - not Linux
        return os.cpu_count() or 1


def map_forked(fn: Callable[..., T], calls: Sequence[tuple[Any, ...]],
               meanwhile: Callable[[], None] | None = None) -> list[T]:
    """fn(*args) for each args, in forked processes, one per call at most as many at once as there are CPUs; the
    results in order. In this process when there is one call or one CPU, or fork is unavailable. fn must return
    what pickles; it should return its failures rather than raise them (exceptions lose their fields on the way).
    `meanwhile` runs in this process while the workers work. The workers end with the pool: an interrupt or an
    error leaves none behind."""
    n = min(len(calls), workers())
    # forking while another thread runs (a progress display, a client's pool) may copy a lock it holds
    if n < 2 or "fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1:
        if meanwhile is not None:
            meanwhile()
        return [fn(*args) for args in calls]
    with multiprocessing.get_context("fork").Pool(n) as pool:
        pending = pool.starmap_async(fn, calls, chunksize=1)
        if meanwhile is not None:
            meanwhile()
        return pending.get()


def run(cmd: Sequence[str], *, what: str, timeout: float = 120, missing: str = "", check: bool = True,
        stdout: Path | None = None, input_text: str | None = None, stdin: Path | None = None,
        cwd: Path | str | None = None, env: Mapping[str, str] | None = None,
        error: ErrorFactory = BackendError, explain: Explain | None = None) -> Completed[str]:
    """Run `cmd`; on failure (missing binary, timeout, non-zero exit when `check`) raise `error` naming `what`
    and the command's last stderr line (or `explain(stderr)`). `stdout` sends the output to a file instead of
    memory; `stdin` reads the input from a file, `input_text` from a string."""
    args = [str(c) for c in cmd]
    try:
        if stdout is not None or stdin is not None:
            with open(stdout if stdout is not None else os.devnull, "wb") as out, \
                    open(stdin if stdin is not None else os.devnull, "rb") as inp:
                done = subprocess.run(args, stdin=inp, stdout=out if stdout is not None else subprocess.PIPE,
                                      stderr=subprocess.PIPE, timeout=timeout, cwd=cwd,
                                      env=dict(env) if env is not None else None)
            result = subprocess.CompletedProcess(done.args, done.returncode,
                                                 (done.stdout or b"").decode(errors="replace"),
                                                 done.stderr.decode(errors="replace"))
        else:
            result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input_text,
                                    stdin=None if input_text is not None else subprocess.DEVNULL,
                                    errors="replace", cwd=cwd, env=dict(env) if env is not None else None)
    except FileNotFoundError:
        raise _missing(args, what, missing, error) from None
    except OSError as err:   # not executable, a directory, ...
        raise error(f"{what}: cannot run {args[0]}: {err.strerror}") from None
    except subprocess.TimeoutExpired:
        raise error(f"{what}: {Path(args[0]).name} did not finish within {timeout:g}s") from None
    if check and result.returncode != 0:
        raise _failed(args, what, result.returncode, result.stderr or result.stdout, error, explain)
    return result


def stream(cmd: Sequence[str], *, what: str, timeout: float | None = None, missing: str = "",
           env: Mapping[str, str] | None = None, error: ErrorFactory = BackendError,
           explain: Explain | None = None) -> Iterator[str]:
    """The lines `cmd` prints on stdout (without newlines), as they come. The process is killed when the
    caller stops iterating or `timeout` passes (then `error` is raised); a non-zero exit raises `error`."""
    args = [str(c) for c in cmd]
    # stderr into a file, not a pipe: a chatty command must not block on a full pipe nobody reads yet
    with tempfile.TemporaryFile() as err:
        try:
            child = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True,
                                     errors="replace", env=dict(env) if env is not None else None)
        except FileNotFoundError:
            raise _missing(args, what, missing, error) from None
        except OSError as oserr:   # not the `err` file: that name is the stderr capture
            raise error(f"{what}: cannot run {args[0]}: {oserr.strerror}") from None
        expired = threading.Event()
        timer = None
        if timeout is not None:
            timer = threading.Timer(timeout, lambda: (expired.set(), child.kill()))
            timer.daemon = True
            timer.start()
        finished = False
        try:
            assert child.stdout is not None
            for line in child.stdout:
                yield line.rstrip("\n")
            finished = True
        finally:
            if timer is not None:
                timer.cancel()
            if not finished and child.poll() is None:
                child.kill()
            code = child.wait()
        if expired.is_set():
            raise error(f"{what}: {Path(args[0]).name} did not finish within {timeout:g}s")
        if code != 0:
            err.seek(0)
            raise _failed(args, what, code, err.read().decode(errors="replace"), error, explain)


def last_line(text: str) -> str:
    """The last non-empty line of a command's output, without a leading 'error: ' (what most tools print)."""
    lines = text.strip().splitlines()
    for line in reversed(lines):
        if line.strip():
            return line.strip().removeprefix("error: ")
    return ""


def lines(text: str) -> list[str]:
    """The non-empty lines of a command's output, stripped: the one way output is split into lines."""
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


class LineSplitter:
    """Output as it arrives in chunks (a log stream, a growing console file) into complete lines: the one
    splitter of streamed output. A line is yielded once its newline has arrived; `rest` is what is left."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, chunk: bytes) -> list[str]:
        self._partial += chunk
        *complete, self._partial = self._partial.split(b"\n")
        return [line.decode(errors="replace").strip("\r") for line in complete]

    def rest(self) -> str:
        return self._partial.decode(errors="replace").strip("\r")


def split_stream(chunks: Iterable[bytes]) -> Iterator[str]:
    """The lines of a stream of byte chunks, the last one even without its newline."""
    splitter = LineSplitter()
    for chunk in chunks:
        yield from splitter.feed(chunk)
    if splitter.rest():
        yield splitter.rest()


def wait_until(check: Callable[[], bool], timeout: float, *, poll: float = 0.1,
               abort: Callable[[], bool] | None = None) -> bool:
    """Poll `check` until it holds (True), `timeout` passes or `abort` holds (False; `check` is asked once more)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline or (abort is not None and abort()):
            return check()
        time.sleep(poll)


def _missing(args: list[str], what: str, missing: str, error: ErrorFactory) -> HybridorchError:
    return error(f"{what}: {Path(args[0]).name} is not installed" + (f" ({missing})" if missing else ""))


def _failed(args: list[str], what: str, code: int, stderr: str, error: ErrorFactory,
            explain: Explain | None) -> HybridorchError:
    if explain is not None:
        return error(explain(stderr))
    return error(f"{what}: {last_line(stderr) or f'{Path(args[0]).name} exited with {code}'}")
