"""Files the tool writes for the user (an audit report, a plot, JUnit XML): whole or not at all, never into a FIFO,
a device or one of the files it read."""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from typing import Sequence

from hybridorch.core.safeload import _kind_of as kind_of
from hybridorch.errors import OutputError


def check_writable(path: str, what: str, inputs: Sequence[str] = ()) -> tuple[str, os.stat_result | None]:
    """Refuse (OutputError, exit 2) an output path that is empty, one of `inputs`, or exists and is not a regular
    file, before any work that would have to be thrown away; returns the real path and its stat (None: new)."""
    if not path:
        raise OutputError(f"cannot write {what}: the file name is empty")
    try:
        target = os.path.realpath(path)
        if any(os.path.realpath(i) == target for i in inputs):
            raise OutputError(f"cannot write {what} to {path}: it is one of the files read; choose another name")
        st: os.stat_result | None = os.stat(target)   # stat never blocks, whatever the path is
    except FileNotFoundError:
        st = None
    except (OSError, ValueError) as err:   # ValueError: a NUL byte
        raise OutputError(f"cannot write {what} to {path}: {getattr(err, 'strerror', None) or err}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OutputError(f"cannot write {what} to {path}: it is {kind_of(st.st_mode)}, not a regular file")
    if st is None and not os.path.isdir(os.path.dirname(target) or "."):
        raise OutputError(f"cannot write {what} to {path}: No such file or directory")
    return target, st


def write_whole(path: str, data: str | bytes, what: str = "the report", inputs: Sequence[str] = ()) -> None:
    """`data` into a temporary file beside `path`, renamed over it once complete: a full disk or a killed run
    leaves the previous file as it was, never half a file. `path` may be missing or a regular file (through a
    symlink: the file it names is replaced, the link kept); anything else is refused before it is opened (opening
    a FIFO for writing blocks until a reader comes; /dev/full is a device), and so are an empty path and one of
    `inputs` (a report written over the stack it audits)."""
    target, st = check_writable(path, what, inputs)
    # a missing or unwritable directory: mkstemp's OSError says which
    fd, part = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            # mkstemp makes the file 0600: an existing file keeps its mode, a new one gets the umask's
            os.fchmod(fh.fileno(), stat.S_IMODE(st.st_mode) if st else 0o666 & ~_umask())
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())   # a full disk may only say so here
        os.replace(part, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise


def _umask() -> int:
    mask = os.umask(0o022)   # the only way to read it is to set it: set it back at once
    os.umask(mask)
    return mask
