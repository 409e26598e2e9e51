"""Argument helpers shared by the ``lavakv`` subcommands: comma-separated lists and model-name checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def parse_csv(text: str | None, convert: Callable[[str], Any], what: str) -> list[Any]:
    """``"a,b"`` -> ``[convert("a"), convert("b")]``; None -> ``[]``; empty or unconvertible -> ValueError."""
    if text is None:
        return []
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"{what} is empty: give a comma-separated list")
    try:
        return [convert(item) for item in items]
    except ValueError:
        raise ValueError(f"{what} must be a comma-separated list of {convert.__name__}s, got {text!r}") from None


def check_model_request(name: str, device: str, known: Sequence[str]) -> None:
    """Reject an unknown model name (not known, not a path, not owner/name) or an unavailable CUDA device."""
    if name not in known and "/" not in name and not Path(name).exists():
        raise ValueError(
            f"unknown model {name!r}; known names: {', '.join(known)} (or a local model directory, a .gguf file, "
            f"or a Hugging Face hub id owner/name)"
        )
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here; use --device cpu")
