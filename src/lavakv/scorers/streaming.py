"""StreamingLLM scorer: attention sinks plus the most recent tokens, no attention needed (docs/methods.md)."""

from __future__ import annotations

import torch

from lavakv.scorers.base import ScoringInputs


def streaming_scores(inputs: ScoringInputs, *, n_sink: int = 4) -> torch.Tensor:
    """StreamingLLM (Xiao et al., 2024) as scores, so that any top-k keeps the sinks then the most recent tokens.

    With r the rank of a token among its row's real tokens (0 = first real token; left padding is skipped):
    sinks (r < ``n_sink``) score ``n_sink - r`` >= 1 (earliest first), every other token scores minus its
    distance to the last prompt token, <= 0 (recency). Scores do not depend on the amount of left padding.
    Identical for every KV head that holds the same positions (during decoding, ranks count the entries each head
    still holds, so the sinks kept stay sinks). Returns float32 ``[batch, kv_heads, tokens]``: +inf on the window,
    -inf on padding.
    """
    if n_sink < 0:
        raise ValueError(f"n_sink must be >= 0 (0 = recency only), got {n_sink}")
    n = inputs.tokens
    valid = inputs.key_valid(inputs.kv_heads)  # [b, 1 or h_kv, n]
    rank = torch.cumsum(valid.long(), dim=-1) - 1  # rank among the real tokens (entries held, per head)
    position = torch.arange(n, device=rank.device)
    recency = (position - (n - 1)).expand_as(rank)  # 0 for the last token
    scores = torch.where(rank < n_sink, n_sink - rank, recency).float()
    return inputs.finalize(scores.expand(-1, inputs.kv_heads, -1))
