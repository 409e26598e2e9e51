"""TOVA scorer: attention of the last prompt query (docs/methods.md)."""

from __future__ import annotations

import torch

from lavakv.scorers.base import ScoringInputs
from lavakv.scorers.pooling import reduce_groups

#: "layer": mean over every query head of the layer, one ranking shared by all KV heads (TOVA's code);
#: "group": mean over the G query heads of each KV head, one ranking per KV head
HEAD_SCOPES = ("layer", "group")


def tova_scores(inputs: ScoringInputs, *, head_scope: str = "layer") -> torch.Tensor:
    """TOVA (Oren et al., 2024): the attention of the last prompt query, A_h[n-1, i], averaged over query heads.

    Args:
        inputs: reads the last row of the shared :meth:`ScoringInputs.window_attention` ``[b, q_heads, w, n]``
            (computed once per layer for every scorer).
        head_scope: "layer" (default; TOVA's code, ``TOVACache.reduce`` in github.com/schwartz-lab-NLP/TOVA:
            ``mean(attn_weights[:, :, -1, :], dim=1)`` over all query heads, so every KV head keeps the same
            tokens) or "group" (the mean over the G query heads of each KV head).

    Returns float32 ``[batch, kv_heads, tokens]``: +inf on the window, -inf on padding.
    """
    if head_scope not in HEAD_SCOPES:
        raise ValueError(f"head_scope must be one of {HEAD_SCOPES}, got {head_scope!r}")
    last = inputs.window_attention()[:, :, -1, :]  # [b, hq, n]
    if head_scope == "group":
        return inputs.finalize(reduce_groups(last, inputs.kv_heads, "mean"))
    layer = last.mean(dim=1, keepdim=True)  # [b, 1, n]
    return inputs.finalize(layer.expand(-1, inputs.kv_heads, -1))
