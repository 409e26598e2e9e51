"""One ``lavakv eval`` at a time per ``--out``: an advisory ``flock`` on ``<out>/.lavakv-eval.lock``.

Two processes appending to the same predictions files would interleave and duplicate records, so the second one
is refused at once (non-blocking) with the first one's pid. The lock is released when the process ends, however it
ends (the kernel drops a ``flock`` with its file descriptor), so a crashed run never leaves a stale lock; the file
itself stays (removing it would race with a process that has just opened it) and holds the pid of the last holder.
On systems without ``fcntl`` (Windows) no lock is taken.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lavakv-eval.lock"


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return "pid unknown"
    return f"pid {text}" if text.isdigit() else "pid unknown"


@contextmanager
def eval_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the eval lock of results directory ``out`` (created if missing) for the ``with`` block.

    Yields the lock file's path. Raises ``ValueError`` ("another lavakv eval is writing to <out> (pid N); ...")
    when another holder has it, a process or another open of the same file in this one.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX: no locking
        yield Path(out) / LOCK_NAME
        return
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise ValueError(f"another lavakv eval is writing to {out} ({_holder(fd)}); wait for it or use "
                             "another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
