"""CAKE scorer: window mean plus gamma times window variance of attention, pooled like SnapKV (docs/methods.md)."""

from __future__ import annotations

import math

import torch

from lavakv.scorers.base import ScoringInputs
from lavakv.scorers.pooling import check_gqa, check_gqa_order, check_pooling, pool_and_reduce

#: "sample": unbiased variance, divide by w - 1 (``torch.var``'s default, what CAKE's code calls);
#: "population": divide by w
VARIANCES = ("sample", "population")


def window_variance(attn: torch.Tensor, variance: str) -> torch.Tensor:
    """Variance over the window queries (dim 2) of ``attn [b, hq, w, n]``; a single window query gives 0."""
    correction = 1 if variance == "sample" and attn.shape[2] > 1 else 0
    return attn.var(dim=2, correction=correction)


def check_variance(variance: str) -> None:
    """Raise ValueError unless ``variance`` is "sample" or "population"."""
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")


def cake_scores(
    inputs: ScoringInputs,
    *,
    gamma: float = 200.0,
    kernel_size: int = 5,
    pooling: str = "avg",
    gqa: str = "mean",
    gqa_order: str = "after-pool",
    variance: str = "sample",
) -> torch.Tensor:
    """CAKE eviction indicator (Qin et al., ICLR 2025): mean_j A[j, i] + gamma * var_j A[j, i], j in the window.

    The defaults are those of CAKE's code (github.com/antgroup/cakekv, ``cake/model/modify_llama.py``): the
    unbiased variance over the w window queries (``torch.var``), average pooling with kernel 5 over the prefix
    columns of every query head, then the mean over each KV head's group.

    Args:
        inputs: uses :meth:`ScoringInputs.window_attention` ``[b, q_heads, w, n]``.
        gamma: weight of the variance ("temporal shift") term, >= 0; 0 gives SnapKV's scores.
        kernel_size, pooling, gqa: as in :func:`lavakv.scorers.snapkv.snapkv_scores` (CAKE's code: 5, "avg", "mean").
        gqa_order: "after-pool" (default, CAKE's code: pool every query head, then reduce) or "before-pool".
            With average pooling and the group mean both orders give the same scores.
        variance: "sample" (default, CAKE's code: divide by w - 1; a window of one query gives 0) or
            "population" (divide by w).

    Returns float32 ``[batch, kv_heads, tokens]``: +inf on the window, -inf on padding.
    """
    check_pooling(kernel_size, pooling)
    check_gqa(gqa)
    check_gqa_order(gqa_order)
    check_variance(variance)
    if not 0 <= gamma < math.inf:
        raise ValueError(f"gamma must be a finite number >= 0 (0 = SnapKV), got {gamma}")
    attn = inputs.window_attention()  # [b, hq, w, n] float32
    scores = attn.mean(dim=2)  # [b, hq, n]
    if gamma != 0:
        scores = scores + gamma * window_variance(attn, variance)
    scores = pool_and_reduce(scores, inputs.valid, inputs.window, inputs.kv_heads, kernel_size=kernel_size,
                             pooling=pooling, gqa=gqa, gqa_order=gqa_order)  # [b, h_kv, n]
    return inputs.finalize(scores)
