"""CAKE scorer: window mean plus gamma times window variance of attention, pooled like SnapKV (METHODS.md §1)."""

from __future__ import annotations

import torch

from lavakv.scorers.base import ScoringInputs
from lavakv.scorers.pooling import check_gqa, check_pooling, pool_prefix, reduce_groups


def cake_scores(
    inputs: ScoringInputs,
    *,
    gamma: float = 200.0,
    kernel_size: int = 7,
    pooling: str = "max",
    gqa: str = "mean",
) -> torch.Tensor:
    """CAKE eviction indicator (Qin et al., ICLR 2025): mean_j A[j, i] + gamma * var_j A[j, i], j in the window.

    The variance is the population variance over the w window queries (divide by w). Pooling and the GQA
    reduction are those of :func:`lavakv.scorers.snapkv.snapkv_scores`; ``gamma=0`` gives exactly SnapKV.

    Args:
        inputs: uses :meth:`ScoringInputs.window_attention` ``[b, q_heads, w, n]``.
        gamma: weight of the variance ("temporal shift") term, >= 0.
        kernel_size, pooling, gqa: as in SnapKV.

    Returns float32 ``[batch, kv_heads, tokens]``: +inf on the window, -inf on padding.
    """
    check_pooling(kernel_size, pooling)
    check_gqa(gqa)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0 (0 = SnapKV), got {gamma}")
    attn = inputs.window_attention()  # [b, hq, w, n] float32
    scores = attn.mean(dim=2)  # [b, hq, n]
    if gamma != 0:
        scores = scores + gamma * attn.var(dim=2, correction=0)
    scores = pool_prefix(scores, inputs.valid, inputs.window, kernel_size, pooling)
    scores = reduce_groups(scores, inputs.kv_heads, gqa)  # [b, h_kv, n]
    return inputs.finalize(scores)
