"""A method resolved into the components the runtime runs: scorer, layer allocation, head allocation, budget.

:class:`lavakv.Method` (``methods.py``) resolves itself into :class:`Components` once, when it is attached; the
runtime only ever sees these objects and never imports ``methods.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from lavakv.allocation.heads import AdaptiveHeads, UniformHeads
from lavakv.allocation.layers import CakeCascade, EntropyCascade, PyramidLayers, UniformLayers
from lavakv.budget import budget_per_row, rows_to_compress
from lavakv.scorers import Scorer

LayerAllocation = UniformLayers | PyramidLayers | EntropyCascade | CakeCascade
HeadAllocation = UniformHeads | AdaptiveHeads


@dataclass(frozen=True)
class Components:
    """Everything a compressor needs to know about a method.

    Attributes:
        name: the method's name (for logs and errors).
        scorer: scores of one layer, ``ScoringInputs -> [batch, kv_heads, tokens]``.
        layers: how the dynamic budget is split over layers (static, or a cascade with a per-layer statistic).
        heads: which entries each KV head keeps given its layer's budget.
        budget: B, tokens per KV head per layer on average, window included; or None with ``compression_ratio``.
        compression_ratio: fraction of prompt entries removed; or None with ``budget``.
        window: the observation window w (always kept).
        decode_budget: while generating, at most this many entries per KV head per layer on average (window
            included); None: no decode-time eviction.
        decode_interval: tokens generated between decode-time evictions (each compresses to decode_budget minus it).
        chunk_size: prefill the prompt in chunks of at most this many tokens, compressing every layer to its
            budget after each chunk; None: one exact prefill.
    """

    name: str
    scorer: Scorer
    layers: LayerAllocation
    heads: HeadAllocation
    budget: int | None
    compression_ratio: float | None
    window: int
    decode_budget: int | None = None
    decode_interval: int | None = None
    chunk_size: int | None = None

    @property
    def tracks_queries(self) -> bool:
        """Whether layers keep a ring of their recent queries (to compress after the prefill)."""
        return self.decode_budget is not None or self.chunk_size is not None

    def row_budgets(self, real_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``real_tokens [batch]`` -> B per row ``[batch]`` (window included) and the rows that evict ``[batch]``."""
        budget = budget_per_row(real_tokens, self.budget, self.compression_ratio, self.window)
        return budget, rows_to_compress(real_tokens, budget, self.window)


class Resolvable(Protocol):
    """Anything that resolves into components (a :class:`lavakv.Method`); None means no compression."""

    def resolve(self) -> Components | None: ...
