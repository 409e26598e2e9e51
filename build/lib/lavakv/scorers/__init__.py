"""Scorers: one score per (batch, KV head, prompt token); a new scorer is one small file plus one registry line."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lavakv.scorers.base import ScoringInputs
from lavakv.scorers.cake import cake_scores
from lavakv.scorers.h2o import h2o_scores
from lavakv.scorers.knorm import knorm_scores
from lavakv.scorers.lava import lava_scores
from lavakv.scorers.random import random_scores
from lavakv.scorers.snapkv import snapkv_scores
from lavakv.scorers.streaming import streaming_scores
from lavakv.scorers.tova import tova_scores

SCORERS: dict[str, Callable[..., torch.Tensor]] = {
    "snapkv": snapkv_scores,
    "lava": lava_scores,
    "h2o": h2o_scores,
    "tova": tova_scores,
    "streaming": streaming_scores,
    "knorm": knorm_scores,
    "random": random_scores,
    "cake": cake_scores,
}


def get_scorer(name: str) -> Callable[..., torch.Tensor]:
    """The scorer registered as ``name``: ``fn(inputs: ScoringInputs, **hyper_parameters) -> [b, h_kv, n]``."""
    try:
        return SCORERS[name]
    except KeyError:
        raise ValueError(f"unknown scorer {name!r}; valid names: {', '.join(sorted(SCORERS))}") from None


__all__ = [
    "SCORERS",
    "ScoringInputs",
    "cake_scores",
    "get_scorer",
    "h2o_scores",
    "knorm_scores",
    "lava_scores",
    "random_scores",
    "snapkv_scores",
    "streaming_scores",
    "tova_scores",
]
