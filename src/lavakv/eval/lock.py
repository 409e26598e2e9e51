"""One ``lavakv eval`` at a time per ``--out``: an advisory ``flock`` on ``<out>/.lavakv-eval.lock``.

Two processes appending to the same predictions files would interleave and duplicate records, so the second one
is refused at once (non-blocking) with the first one's pid. The lock is released when the process ends, however it
ends (the kernel drops a ``flock`` with its file descriptor), so a crashed run never leaves a stale lock; the file
itself stays (removing it would race with a process that has just opened it) and holds the pid of the last holder.
On systems without ``fcntl`` (Windows) no lock is taken.

The ranks of one evaluation spread over processes (``torchrun``, ``world_size > 1``) must not refuse each other:
each holds the main lock *shared* and its own ``<out>/.lavakv-eval.rank<r>.lock`` exclusively. A single-process
``lavakv eval`` (exclusive) and the ranks (shared) then refuse each other, and a second distributed job is refused
by any rank number it has in common with a live rank of the first (each rank appends only to its own shard).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lavakv-eval.lock"


def rank_lock_name(rank: int) -> str:
    """The lock file of rank ``rank`` of a distributed evaluation."""
    return f".lavakv-eval.rank{rank}.lock"


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return "pid unknown"
    return f"pid {text}" if text.isdigit() else "pid unknown"


def _take(fcntl, path: Path, mode: int, busy: str) -> int:
    """An open descriptor of ``path`` holding ``flock`` ``mode`` (non-blocking); held elsewhere -> ValueError
    ``busy`` with the holder's pid appended."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as error:
        holder = _holder(fd)
        os.close(fd)
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise ValueError(busy.format(holder=holder)) from None
    return fd


def _stamp(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)


@contextmanager
def eval_lock(out: str | os.PathLike, *, rank: int = 0, world_size: int = 1) -> Iterator[Path]:
    """Hold the eval lock of results directory ``out`` (created if missing) for the ``with`` block.

    Args:
        out: the results directory.
        rank / world_size: this process's place in a distributed evaluation (``world_size > 1``: the main lock is
            held shared, the rank's own lock exclusively); a single process holds the main lock exclusively.

    Yields the main lock file's path. Raises ``ValueError`` ("another lavakv eval is writing to <out> (pid N); ...")
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
    descriptors: list[int] = []
    try:
        if world_size <= 1:
            fd = _take(fcntl, path, fcntl.LOCK_EX, f"another lavakv eval is writing to {out} ({{holder}}); wait for "
                       "it or use another --out")
            descriptors.append(fd)
            _stamp(fd)
        else:
            descriptors.append(_take(fcntl, path, fcntl.LOCK_SH,
                                     f"another lavakv eval is writing to {out} ({{holder}}); wait for it or use "
                                     "another --out"))
            fd = _take(fcntl, directory / rank_lock_name(rank), fcntl.LOCK_EX,
                       f"rank {rank} of another distributed lavakv eval is writing to {out} ({{holder}}); wait for "
                       "that job or use another --out")
            descriptors.append(fd)
            _stamp(fd)
            if rank == 0:
                _stamp(descriptors[0])  # names a pid to a single process that is refused
        yield path
    finally:
        for fd in descriptors:
            os.close(fd)  # releases the lock
