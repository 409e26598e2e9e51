"""SnapKV scorer: window-averaged attention, pooled along tokens (METHODS.md §1)."""

from __future__ import annotations

import torch

from lavakv.scorers.base import ScoringInputs
from lavakv.scorers.pooling import check_gqa, check_pooling, pool_prefix, reduce_groups


def snapkv_scores(
    inputs: ScoringInputs, *, kernel_size: int = 7, pooling: str = "max", gqa: str = "mean"
) -> torch.Tensor:
    """SnapKV (Li et al., 2024): a[h, i] = pool_i( mean_{j in window} A_h[j, i] ), reduced over the GQA group.

    Args:
        inputs: the layer's prefill tensors; uses :meth:`ScoringInputs.window_attention` ``[b, q_heads, w, n]``.
        kernel_size: odd pooling kernel (stride 1, padding ``kernel_size // 2``); 1 disables pooling.
        pooling: "max" (default) or "avg"; applied to the prefix columns only.
        gqa: "mean" (default) or "max" over the G query heads of each KV head.

    Order: window mean -> pool (per query head) -> group reduction, as kvpress does.
    Returns float32 ``[batch, kv_heads, tokens]``: +inf on the window, -inf on padding.
    """
    check_pooling(kernel_size, pooling)
    check_gqa(gqa)
    attn = inputs.window_attention()  # [b, hq, w, n] float32
    scores = attn.mean(dim=2)  # [b, hq, n]
    scores = pool_prefix(scores, inputs.valid, inputs.window, kernel_size, pooling)
    scores = reduce_groups(scores, inputs.kv_heads, gqa)  # [b, h_kv, n]
    return inputs.finalize(scores)
