"""Scorers: one score per (batch, KV head, prompt token); a new scorer is one small file plus one registry line.

A scorer is a function ``fn(inputs: ScoringInputs, *, hyper_parameters...) -> [batch, kv_heads, tokens]`` float32
with +inf on the observation window and -inf on padding. :func:`resolve_scorer` binds its hyper-parameters once,
checks their types against the function's annotations and runs it on a small probe so that a bad value is
reported when the method is built, not in the middle of a prefill.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lavakv.scorers.base import ScoringInputs
from lavakv.scorers.cake import cake_scores
from lavakv.scorers.expected_attention import expected_attention_scores
from lavakv.scorers.h2o import h2o_scores
from lavakv.scorers.knorm import knorm_scores
from lavakv.scorers.kvzip import kvzip_scores
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
    "expected-attention": expected_attention_scores,
    "kvzip": kvzip_scores,
}

#: scorers that score from a reconstruction pass over the context (run by Session.compress_context only)
RECONSTRUCTION_SCORERS = frozenset({"kvzip"})

#: scorers that score the context by the attention of the last ``window`` queries: a question's queries can guide
#: them (``Session.compress_context(ids, question_ids=...)``)
WINDOW_ATTENTION_SCORERS = frozenset({"snapkv", "lava", "tova", "cake"})

#: scorers whose scores are attention mass (non-negative, comparable across layers): the only ones whose score
#: distribution means something to LAVa's entropy layer allocation
ATTENTION_MASS_SCORERS = frozenset({"snapkv", "lava", "h2o", "tova", "cake", "expected-attention", "kvzip"})

_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool}


def get_scorer(name: str) -> Callable[..., torch.Tensor]:
    """The scorer registered as ``name``: ``fn(inputs: ScoringInputs, **hyper_parameters) -> [b, h_kv, n]``."""
    try:
        return SCORERS[name]
    except KeyError:
        raise ValueError(f"unknown scorer {name!r}; valid names: {', '.join(sorted(SCORERS))}") from None


def scorer_defaults(name: str) -> dict[str, Any]:
    """The keyword-only hyper-parameters of scorer ``name`` with their defaults."""
    sig = inspect.signature(get_scorer(name))
    return {p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


@dataclass(frozen=True)
class Scorer:
    """A scorer with its hyper-parameters bound and validated. Call it with a layer's :class:`ScoringInputs`."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        fn = get_scorer(self.name)
        defaults = scorer_defaults(self.name)
        unknown = sorted(set(self.params) - set(defaults))
        if unknown:
            raise TypeError(
                f"unknown parameter(s) {', '.join(unknown)} for scorer {self.name!r}; valid: "
                f"{', '.join(sorted(defaults)) or 'none'}"
            )
        hints = inspect.get_annotations(fn)
        for key, value in self.params.items():
            expected = _TYPES.get(str(hints.get(key)))
            wrong_bool = isinstance(value, bool) and expected is not bool
            if expected is not None and (wrong_bool or not isinstance(value, expected)):
                raise TypeError(f"scorer {self.name!r}: {key} must be {hints[key]}, got {value!r}")
        object.__setattr__(self, "params", {**defaults, **self.params})
        fn(_probe(), **self.params)  # the scorer's own checks (ValueError naming the fix) run now

    @property
    def reconstruction(self) -> bool:
        """Whether this scorer needs a reconstruction pass (see :data:`RECONSTRUCTION_SCORERS`)."""
        return self.name in RECONSTRUCTION_SCORERS

    @property
    def window_attention(self) -> bool:
        """Whether scores come from the window queries' attention (see :data:`WINDOW_ATTENTION_SCORERS`)."""
        return self.name in WINDOW_ATTENTION_SCORERS

    @property
    def attention_mass(self) -> bool:
        """Whether scores are attention mass (see :data:`ATTENTION_MASS_SCORERS`)."""
        return self.name in ATTENTION_MASS_SCORERS

    def __call__(self, inputs: ScoringInputs) -> torch.Tensor:
        """``[batch, kv_heads, tokens]`` float32 scores of one layer."""
        return SCORERS[self.name](inputs, **self.params)


def _probe() -> ScoringInputs:
    """A tiny random layer (batch 1, 2 query heads, 1 KV head, 12 tokens, window 2) to validate parameters on."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 12, 4, generator=generator)
    k = torch.randn(1, 1, 12, 4, generator=generator)
    v = torch.randn(1, 1, 12, 4, generator=generator)
    return ScoringInputs(q, k, v, torch.ones(1, 12, dtype=torch.bool), 0.5, 2, torch.tensor([1.0, 0.01]))


__all__ = [
    "ATTENTION_MASS_SCORERS",
    "RECONSTRUCTION_SCORERS",
    "SCORERS",
    "Scorer",
    "ScoringInputs",
    "cake_scores",
    "expected_attention_scores",
    "get_scorer",
    "h2o_scores",
    "knorm_scores",
    "kvzip_scores",
    "lava_scores",
    "random_scores",
    "scorer_defaults",
    "snapkv_scores",
    "streaming_scores",
    "tova_scores",
]
