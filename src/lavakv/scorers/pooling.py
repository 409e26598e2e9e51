"""Shared scorer steps: hyper-parameter checks, pooling along tokens and GQA group reduction (docs/methods.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lavakv.validity import per_head

POOLINGS = ("max", "avg")
GQA_REDUCTIONS = ("mean", "max")
#: where the GQA group reduction happens relative to pooling: "before-pool" (reduce the G query heads of a KV
#: head, then pool once per KV head: Ada-KV's and LAVa's GQA code, KVCache-Factory's kv-head mode) or
#: "after-pool" (pool every query head, then reduce: kvpress, CAKE's code)
GQA_ORDERS = ("before-pool", "after-pool")


def check_pooling(kernel_size: int, pooling: str) -> None:
    """Raise ValueError unless ``kernel_size`` is an odd int >= 1 and ``pooling`` is "max" or "avg"."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be an odd integer >= 1 (1 = no pooling), got {kernel_size!r}; "
            "an even kernel would shift scores by half a token"
        )
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def check_gqa(gqa: str) -> None:
    """Raise ValueError unless ``gqa`` names a group reduction ("mean" or "max")."""
    if gqa not in GQA_REDUCTIONS:
        raise ValueError(f"gqa must be one of {GQA_REDUCTIONS}, got {gqa!r}")


def check_gqa_order(gqa_order: str) -> None:
    """Raise ValueError unless ``gqa_order`` is "before-pool" or "after-pool"."""
    if gqa_order not in GQA_ORDERS:
        raise ValueError(f"gqa_order must be one of {GQA_ORDERS}, got {gqa_order!r}")


def pool_and_reduce(
    scores: torch.Tensor,
    valid: torch.Tensor,
    window: int,
    kv_heads: int,
    *,
    kernel_size: int,
    pooling: str,
    gqa: str,
    gqa_order: str,
) -> torch.Tensor:
    """Pool per-query-head scores ``[batch, q_heads, tokens]`` along tokens and reduce them to ``[batch, kv_heads,
    tokens]``, in the order ``gqa_order`` names (see :data:`GQA_ORDERS`).

    The two orders agree whenever pooling and reduction commute: avg pooling with the group mean (both linear),
    max pooling with the group max, or ``kernel_size=1``. They differ for max pooling with the group mean (the
    mean of maxima is not the maximum of the mean) and for avg pooling with the group max.
    """
    if gqa_order == "before-pool":
        return pool_prefix(reduce_groups(scores, kv_heads, gqa), valid, window, kernel_size, pooling)
    return reduce_groups(pool_prefix(scores, valid, window, kernel_size, pooling), kv_heads, gqa)


def pool_prefix(scores: torch.Tensor, valid: torch.Tensor, window: int, kernel_size: int, pooling: str) -> torch.Tensor:
    """Pool per-token scores along tokens over the prefix (non-window) positions only.

    Args:
        scores: ``[batch, heads, tokens]`` float, >= 0 on valid prefix tokens (attention-derived).
        valid: ``[batch, tokens]`` bool, False on padding; or per KV head ``[batch, kv_heads, tokens]`` (spread
            over the query heads of each group when ``heads`` counts query heads).
        window: the observation window w; the last ``window`` columns are not pooled (so their +inf from
            :meth:`ScoringInputs.finalize` cannot leak) and are returned unchanged.
        kernel_size: odd, stride 1, padding ``kernel_size // 2`` (SnapKV); 1 returns ``scores`` as is.
        pooling: "max" (padding columns act as -inf, as does the pool's own border) or "avg" (padding columns
            act as 0, as does the border: ``count_include_pad=True``, the SnapKV reference).

    Either way a row with left padding gets, on its real tokens, exactly the values of the same row unpadded.
    Returns ``[batch, heads, tokens]``; padding columns hold meaningless values (finalize puts -inf there).
    """
    if kernel_size == 1:
        return scores
    b, h, n = scores.shape
    p = max(0, n - window)
    if p == 0:
        return scores
    prefix = scores[..., :p]  # [b, h, p]
    pad = ~per_head(valid, h)[..., :p]  # [b, 1 or h, p]
    flat_shape = (b * h, 1, p)
    if pooling == "max":
        prefix = prefix.masked_fill(pad, float("-inf")).reshape(flat_shape)
        pooled = F.max_pool1d(prefix, kernel_size, stride=1, padding=kernel_size // 2)
    else:
        prefix = prefix.masked_fill(pad, 0.0).reshape(flat_shape)
        pooled = F.avg_pool1d(prefix, kernel_size, stride=1, padding=kernel_size // 2, count_include_pad=True)
    return torch.cat([pooled.view(b, h, p), scores[..., p:]], dim=-1)  # [b, h, n]


def reduce_groups(scores: torch.Tensor, kv_heads: int, gqa: str) -> torch.Tensor:
    """Reduce per-query-head scores to per-KV-head scores.

    ``scores``: ``[batch, q_heads, tokens]`` -> ``[batch, kv_heads, tokens]``. Query head h belongs to KV head
    ``h // G`` with ``G = q_heads // kv_heads`` (transformers' ``repeat_kv``); ``gqa`` is "mean" or "max" over the
    G heads of each group.
    """
    b, hq, n = scores.shape
    if hq % kv_heads != 0:
        raise ValueError(f"query heads ({hq}) must be a multiple of KV heads ({kv_heads})")
    grouped = scores.reshape(b, kv_heads, hq // kv_heads, n)  # [b, h_kv, G, n]
    return grouped.mean(dim=2) if gqa == "mean" else grouped.amax(dim=2)
