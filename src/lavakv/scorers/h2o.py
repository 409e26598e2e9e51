"""H2O scorer, one-shot prefill variant: attention accumulated over every prompt query (docs/methods.md)."""

from __future__ import annotations

import torch

from lavakv.scorers.base import ScoringInputs
from lavakv.scorers.pooling import reduce_groups
from lavakv.validity import any_head


def h2o_scores(inputs: ScoringInputs, *, query_block: int = 256) -> torch.Tensor:
    """H2O heavy hitters (Zhang et al., 2023), prefill-only variant: s[g, i] = mean_h sum_j A_h[j, i].

    The sum runs over ALL prompt queries j (causal, padding keys and padding queries excluded), the mean over
    the G query heads h of KV head g. This is the one-shot prefill-only variant; H2O's decode-time eviction of
    heavy hitters is separate. When ``inputs.queries`` holds only the last queries (decode-time eviction gives the
    last ``window``), the sum runs over those.

    Queries ``[b, q_heads, n, d]`` are processed ``query_block`` at a time against the keys they can see, so the
    peak extra memory is O(b * q_heads * query_block * n) float32; the n x n attention is never materialised.

    Returns float32 ``[batch, kv_heads, tokens]``: +inf on the window, -inf on padding.
    """
    if isinstance(query_block, bool) or not isinstance(query_block, int) or query_block < 1:
        raise ValueError(f"query_block must be an integer >= 1 (queries per block), got {query_block!r}")
    b, hq, q_len, d = inputs.queries.shape
    n = inputs.tokens
    first = n - q_len  # the queries are those of the last q_len columns (all of them during prefill)
    h_kv, g = inputs.kv_heads, inputs.group_size
    device = inputs.keys.device
    keys = inputs.keys.float()  # [b, h_kv, n, d]
    key_valid = inputs.key_valid(hq).to(device)  # [b, 1 or hq, n]
    query_valid = any_head(inputs.valid).to(device)  # [b, n]: real positions
    totals = torch.zeros(b, hq, n, dtype=torch.float32, device=device)
    for start in range(first, n, query_block):
        end = min(start + query_block, n)
        c = end - start
        q = inputs.queries[:, :, start - first:end - first, :].float().reshape(b, h_kv, g * c, d)  # h -> KV h // G
        logits = torch.matmul(q, keys[:, :, :end, :].transpose(-1, -2)) * inputs.scaling  # [b, h_kv, g*c, end]
        logits = logits.view(b, hq, c, end)
        query_pos = torch.arange(start, end, device=device)
        key_pos = torch.arange(end, device=device)
        allowed = (key_pos[None, :] <= query_pos[:, None])[None, None]  # [1, 1, c, end] causal
        allowed = allowed & key_valid[:, :, None, :end] & query_valid[:, None, start:end, None]  # [b, ., c, end]
        probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        probs = torch.nan_to_num(probs, nan=0.0)  # padding queries: fully masked rows -> 0
        totals[..., :end] += probs.sum(dim=2)  # [b, hq, end]
    return inputs.finalize(reduce_groups(totals, h_kv, "mean"))
