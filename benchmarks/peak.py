"""Peak resident memory of one step of a process (Linux), for the peak-memory benchmarks of both venvs.

tracemalloc does not see torch's allocations, and ``ru_maxrss`` includes model loading; instead the child
process resets the kernel's high-water mark (``/proc/self/clear_refs`` <- 5) right before the step and reads
``VmHWM`` after it. ``child_env`` fixes glibc's mmap threshold, so freed tensors go back to the kernel at once and
RSS follows live memory (glibc otherwise keeps freed heap pages resident, which would hide later allocations).
No torch import here: both the lavakv venv and the kvpress venv use this file.
"""

from __future__ import annotations

import os
from pathlib import Path

MMAP_THRESHOLD = 128 * 1024  # bytes; allocations above it are mmapped and returned to the kernel on free


def child_env() -> dict[str, str]:
    """Environment for a peak-measuring child: fixed mmap threshold (disables glibc's dynamic raise)."""
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    env["MALLOC_TRIM_THRESHOLD_"] = str(MMAP_THRESHOLD)
    return env


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_bytes() -> int:
    """Current resident set size."""
    return _status("VmRSS")


def peak_bytes() -> int:
    """Resident high-water mark since the last :func:`reset_peak` (or process start)."""
    return _status("VmHWM")


def reset_peak() -> None:
    """Reset the high-water mark to the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")
