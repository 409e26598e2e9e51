"""SnapKV scorer: window-averaged attention, pooled along tokens (docs/methods.md)."""

from __future__ import annotations

import torch

from lavakv.scorers.base import ScoringInputs
from lavakv.scorers.pooling import check_gqa, check_gqa_order, check_pooling, pool_and_reduce


def snapkv_scores(
    inputs: ScoringInputs,
    *,
    kernel_size: int = 7,
    pooling: str = "max",
    gqa: str = "mean",
    gqa_order: str = "before-pool",
) -> torch.Tensor:
    """SnapKV (Li et al., 2024): pool_i( mean_{j in window} A_h[j, i] ), reduced over each KV head's GQA group.

    Args:
        inputs: the layer's prefill tensors; uses :meth:`ScoringInputs.window_attention` ``[b, q_heads, w, n]``.
        kernel_size: odd pooling kernel (stride 1, padding ``kernel_size // 2``); 1 disables pooling.
        pooling: "max" (default) or "avg"; applied to the prefix columns only.
        gqa: "mean" (default) or "max" over the G query heads of each KV head.
        gqa_order: "before-pool" (default; the authors' GQA code: Ada-KV's ``gqa_support``, LAVa's
            ``AdaptiveSnapKVCluster`` and KVCache-Factory's kv-head mode reduce the window mean over the group,
            then pool once per KV head) or "after-pool" (kvpress: pool every query head, then reduce). The two
            differ only when pooling and reduction do not commute, e.g. max pooling with ``gqa="mean"``.

    Returns float32 ``[batch, kv_heads, tokens]``: +inf on the window, -inf on padding.
    """
    check_pooling(kernel_size, pooling)
    check_gqa(gqa)
    check_gqa_order(gqa_order)
    attn = inputs.window_attention()  # [b, hq, w, n] float32
    scores = attn.mean(dim=2)  # [b, hq, n]
    scores = pool_and_reduce(scores, inputs.valid, inputs.window, inputs.kv_heads, kernel_size=kernel_size,
                             pooling=pooling, gqa=gqa, gqa_order=gqa_order)  # [b, h_kv, n]
    return inputs.finalize(scores)
