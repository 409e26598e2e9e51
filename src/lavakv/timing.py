"""Wall-clock timing shared by generation, ``lavakv bench`` and the benchmark scripts.

* :func:`sync` waits for a device's queued work (CUDA), so a timer read after it covers the work itself;
* :func:`interleaved_medians` times several variants side by side: every round calls each variant once, in turn,
  so a busy machine slows them alike and their ratios hold;
* :func:`decode_step_medians` applies that to decode steps: the same next token fed to each cache, one step per
  cache per round (each cache grows by one token per step).

``benchmarks/kvpress_bench.py`` runs in a separate virtual environment without lavakv and keeps its own copy of
:func:`interleaved_medians`.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar

import torch
from tqdm.auto import tqdm

from lavakv.compat import cache_kwargs

K = TypeVar("K", bound=Hashable)


def sync(device: torch.device | str | None) -> None:
    """Wait until ``device`` has finished its queued work (CUDA); nothing to wait for elsewhere."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def spread(samples: list[float]) -> dict[str, float]:
    """``{"median", "p10", "p90"}`` of ``samples`` (p10 / p90: the sorted samples at 10 % and 90 % of their count)."""
    if not samples:
        raise ValueError("no timing samples: time at least one repeat")
    ordered = sorted(samples)
    return {"median": statistics.median(ordered), "p10": ordered[len(ordered) // 10],
            "p90": ordered[(9 * len(ordered)) // 10]}


def interleaved_times(variants: Mapping[K, Callable[[], object]], repeats: int, *, warmup: int = 3,
                      device: torch.device | str | None = None, progress: str | None = None) -> dict[K, list[float]]:
    """Seconds of ``repeats`` calls of each variant, the variants alternated round by round.

    Args:
        variants: name -> a call to time.
        repeats: timed rounds (>= 1); each round calls every variant once, in the mapping's order.
        warmup: untimed rounds first (first calls pay one-time costs).
        device: synchronised before and after each timed call (CUDA: the queued kernels are timed, not their
            launch); None for CPU work.
        progress: a progress bar over the rounds on stderr with this description; None for none.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times: dict[K, list[float]] = {name: [] for name in variants}
    for round_ in tqdm(range(warmup + repeats), desc=progress, unit="round", file=sys.stderr,
                       disable=progress is None):
        for name, call in variants.items():
            sync(device)
            start = time.perf_counter()
            call()
            sync(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def interleaved_medians(variants: Mapping[K, Callable[[], object]], repeats: int, *, warmup: int = 3,
                        device: torch.device | str | None = None) -> dict[K, dict[str, float]]:
    """:func:`interleaved_times` summarised: per variant ``{"median_s", "p10_s", "p90_s"}`` in seconds."""
    times = interleaved_times(variants, repeats, warmup=warmup, device=device)
    return {name: {f"{k}_s": v for k, v in spread(t).items()} for name, t in times.items()}


def decode_step_medians(model, caches: Mapping[K, object], token: torch.Tensor, steps: int, *, warmup: int = 2,
                        progress: str | None = None) -> dict[K, dict[str, float]]:
    """Milliseconds per decode step of each cache: ``{"median_ms", "p10_ms", "p90_ms"}`` per name.

    Args:
        model: the model the caches belong to (attached to their session when they are lavakv caches).
        caches: name -> a filled cache; each grows by one token per step (``warmup + steps`` in all).
        token: ``[batch, 1]`` the token fed at every step, on the model's device.
        steps: timed steps per cache (>= 1), alternated across the caches.
        warmup: untimed steps per cache first.
        progress: a progress bar description (stderr), or None.
    """

    def step(cache):
        def run():
            with torch.no_grad():
                model(token, **cache_kwargs(cache), logits_to_keep=1)

        return run

    times = interleaved_times({name: step(c) for name, c in caches.items()}, steps, warmup=warmup,
                              device=token.device, progress=progress)
    return {name: {f"{k}_ms": v * 1e3 for k, v in spread(t).items()} for name, t in times.items()}
