"""Shared helpers for benchmark scripts: the environment record written with every result, and recording what a
lavakv scorer sees and returns during a prefill.

Side-by-side timing is :mod:`lavakv.timing` (``kvpress_bench.py``, which cannot import lavakv, keeps a copy).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def environment() -> dict:
    """Machine and library versions, recorded with every result."""
    import torch
    import transformers

    cpu = platform.processor()  # as lavakv.attention.native.cpu_model(); restated: the kvpress venv has no lavakv
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": round(mem_gib, 1) if mem_gib else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "git_commit": commit,
    }


def write_result(path: Path, payload: dict) -> None:
    """Write ``payload`` plus the environment as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"environment": environment(), **payload}, indent=2))


@contextmanager
def recorded_scorer(name: str, tokens: int) -> Iterator[list]:
    """While inside, every call of lavakv's scorer ``name`` on a layer of ``tokens`` entries appends ``(inputs,
    scores)`` (its :class:`~lavakv.scorers.ScoringInputs` and its ``[batch, kv_heads, tokens]`` output), in layer
    order, to the yielded list; calls on other sizes (the option check's probe) are not recorded. lavakv is
    imported here only: the kvpress venv imports this module without it."""
    import lavakv.scorers as scorers

    calls: list = []
    original = scorers.SCORERS[name]

    def recording(inputs, **params):
        scores = original(inputs, **params)
        if inputs.tokens == tokens:
            calls.append((inputs, scores.detach()))
        return scores

    scorers.SCORERS[name] = recording
    try:
        yield calls
    finally:
        scorers.SCORERS[name] = original
