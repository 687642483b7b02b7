"""The process runner of the local VM side: run a command with a timeout and turn any failure into one
BackendError line, and wait until a condition holds or a deadline passes."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

from .errors import BackendError


def run(cmd: Sequence[str], *, what: str, timeout: float = 120, missing: str = "", check: bool = True,
        stdout: Path | None = None, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `cmd`; on failure (missing binary, timeout, non-zero exit when `check`) raise BackendError naming
    `what` and the command's last stderr line. `stdout` sends the output to a file instead of memory."""
    try:
        if stdout is not None:
            with open(stdout, "wb") as fh:
                done = subprocess.run(list(cmd), stdout=fh, stderr=subprocess.PIPE, timeout=timeout,
                                      stdin=subprocess.DEVNULL)
            result = subprocess.CompletedProcess(done.args, done.returncode, "",
                                                 done.stderr.decode(errors="replace"))
        else:
            result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, input=input_text,
                                    stdin=None if input_text is not None else subprocess.DEVNULL,
                                    errors="replace")
    except FileNotFoundError:
        raise BackendError(f"{what}: {cmd[0]} is not installed" + (f" ({missing})" if missing else "")) from None
    except subprocess.TimeoutExpired:
        raise BackendError(f"{what}: {cmd[0]} did not finish within {timeout:.0f}s") from None
    if check and result.returncode != 0:
        raise BackendError(f"{what}: {last_line(result.stderr) or f'{cmd[0]} exited with {result.returncode}'}")
    return result


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].removeprefix("error: ") if lines else ""


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
