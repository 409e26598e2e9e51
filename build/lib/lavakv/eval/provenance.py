"""The provenance record written with every run: code, libraries, model, numerics and seeds."""

from __future__ import annotations

import datetime
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch


def package_version(name: str) -> str | None:
    """Installed version of distribution ``name``, or None."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_commit(path: str | Path | None = None) -> dict[str, Any] | None:
    """``{"commit": HEAD, "dirty": bool}`` of the git checkout holding ``path`` (default: this package), or None."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain"], cwd=where,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def model_sha256(model_id: str) -> str | None:
    """The pinned sha256 of a model known by name (:data:`lavakv.models.MODELS`), else None."""
    from lavakv.models import MODELS

    spec = MODELS.get(model_id)
    return spec.sha256 if spec is not None else None


def now() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def collect(model, model_id: str, *, seed: int, attn_implementation: str | None = None) -> dict[str, Any]:
    """Provenance of a run: lavakv version and git commit, torch / transformers versions, model id and sha256,
    dtype, device, attention implementation, seed, platform and start time."""
    import lavakv

    parameter = next(model.parameters())
    return {
        "lavakv_version": lavakv.__version__,
        "git": git_commit(),
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "model": model_id,
        "model_class": type(model).__name__,
        "model_sha256": model_sha256(model_id),
        "dtype": str(parameter.dtype).removeprefix("torch."),
        "device": str(parameter.device),
        "attn_implementation": attn_implementation or model.config._attn_implementation,
        "threads": torch.get_num_threads(),
        "seed": seed,
        "started_at": now(),
    }
