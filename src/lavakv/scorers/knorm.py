"""KNorm scorer: keys with a small L2 norm are kept (docs/methods.md)."""

from __future__ import annotations

import torch

from lavakv.scorers.base import ScoringInputs


def knorm_scores(inputs: ScoringInputs) -> torch.Tensor:
    """KNorm (Devoto et al., 2024): s[g, i] = -||K_g[i]||_2, from ``keys`` ``[b, kv_heads, n, d]`` in float32.

    Returns float32 ``[batch, kv_heads, tokens]``: +inf on the window, -inf on padding.
    """
    norms = torch.linalg.vector_norm(inputs.keys, ord=2, dim=-1, dtype=torch.float32)  # [b, h_kv, n]
    return inputs.finalize(-norms)
