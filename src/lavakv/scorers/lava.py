"""LAVa scorer: value-norm-scaled, max-pooled window attention with a conservative GQA max (docs/methods.md)."""

from __future__ import annotations

import torch

from lavakv.scorers.base import ScoringInputs
from lavakv.scorers.pooling import check_pooling, pool_prefix, reduce_groups

VALUE_NORM_RANGES = ("all", "prefix")


def lava_scores(
    inputs: ScoringInputs, *, kernel_size: int = 7, pooling: str = "max", value_norm_range: str = "all"
) -> torch.Tensor:
    """LAVa score (Shen et al., 2025, Eq. 5): s[g, i] = (max_k ||V_g[k]||_1) * pool_i( mean_{j in window} A_h[j, i] ).

    The GQA reduction is the MAX over the G query heads h of KV head g (the paper's conservative rule). The value
    factor is one scalar per (batch, KV head): the largest L1 norm of a value vector ``[b, h_kv, n, d]`` over valid
    tokens; padding never counts. Prefix weights are not renormalised after dropping the window columns.

    Args:
        inputs: uses :meth:`ScoringInputs.window_attention` ``[b, q_heads, w, n]`` and ``values``.
        kernel_size: odd pooling kernel (paper: 7, max); 1 disables pooling.
        pooling: "max" (paper; then pooling, scaling and group max commute) or "avg".
        value_norm_range: "all" (paper: every valid token) or "prefix" (reference code: valid non-window tokens).

    Returns float32 ``[batch, kv_heads, tokens]``: +inf on the window, -inf on padding. Computed in float32.
    """
    check_pooling(kernel_size, pooling)
    if value_norm_range not in VALUE_NORM_RANGES:
        raise ValueError(f"value_norm_range must be one of {VALUE_NORM_RANGES}, got {value_norm_range!r}")
    attn = inputs.window_attention()  # [b, hq, w, n] float32
    scores = attn.mean(dim=2)  # [b, hq, n]
    scores = pool_prefix(scores, inputs.valid, inputs.window, kernel_size, pooling)
    scores = reduce_groups(scores, inputs.kv_heads, "max")  # [b, h_kv, n]

    counted = inputs.key_valid(inputs.kv_heads)  # [b, 1 or h_kv, n]
    if value_norm_range == "prefix":
        counted = counted & ~inputs.window_mask()
    norms = torch.linalg.vector_norm(inputs.values, ord=1, dim=-1, dtype=torch.float32)  # [b, h_kv, n] L1 norms
    norms = norms.masked_fill(~counted, 0.0)  # norms are >= 0, so 0 never wins over a real one
    value_factor = norms.amax(dim=-1, keepdim=True)  # [b, h_kv, 1]
    return inputs.finalize(scores * value_factor)
