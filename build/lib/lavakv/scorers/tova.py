"""TOVA scorer: attention of the last prompt query (METHODS.md §1)."""

from __future__ import annotations

import torch

from lavakv.scorers.base import ScoringInputs
from lavakv.scorers.pooling import reduce_groups


def tova_scores(inputs: ScoringInputs) -> torch.Tensor:
    """TOVA (Oren et al., 2024): s[g, i] = mean over the group's query heads h of A_h[n-1, i].

    Reads the last row of the shared :meth:`ScoringInputs.window_attention` ``[b, q_heads, w, n]`` (computed once
    per layer for every scorer). Returns float32 ``[batch, kv_heads, tokens]``: +inf on the window, -inf on padding.
    """
    last = inputs.window_attention()[:, :, -1, :]  # [b, hq, n]
    return inputs.finalize(reduce_groups(last, inputs.kv_heads, "mean"))
