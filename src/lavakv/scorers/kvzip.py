"""KVzip scorer: the attention each context entry receives while the model reconstructs the context (Kim et al.,
2025, "KVzip"; query-agnostic, docs/methods.md)."""

from __future__ import annotations

import torch

from lavakv.scorers.base import ScoringInputs


def kvzip_scores(inputs: ScoringInputs, *, query_block: int = 256) -> torch.Tensor:
    """s[g, i] = max over the reconstruction queries j and the G query heads h of KV head g of A_h[j, i].

    ``inputs.queries`` are the queries of a reconstruction pass (a prompt asking the model to repeat the context,
    then the context again) that come AFTER every context entry, so each sees all of them: A_h[j, :] is the softmax
    of query j over the context's real entries (normalised over the context only, where KVzip also counts the
    reconstruction's own keys: a per-query factor that the maximum over queries does not undo; lavakv's
    simplification). Queries are processed ``query_block`` at a time (memory only).

    The runtime runs the reconstruction pass in :meth:`lavakv.Session.compress_context`; elsewhere (a prompt's own
    queries) this scorer is refused, since those queries do not come after the whole context.

    Returns float32 ``[batch, kv_heads, tokens]``: +inf on the window, -inf on padding.
    """
    if isinstance(query_block, bool) or not isinstance(query_block, int) or query_block < 1:
        raise ValueError(f"query_block must be an integer >= 1 (queries per block), got {query_block!r}")
    b, hq, r, d = inputs.queries.shape
    h_kv, g = inputs.kv_heads, inputs.group_size
    keys = inputs.keys.float()  # [b, h_kv, n, d]
    valid = inputs.key_valid(hq)[:, :, None, :]  # [b, 1 or hq, 1, n]
    best = torch.zeros(b, hq, inputs.tokens, dtype=torch.float32, device=keys.device)
    for start in range(0, r, query_block):
        q = inputs.queries[:, :, start : start + query_block].float()  # [b, hq, c, d]
        c = q.shape[2]
        logits = (q.reshape(b, h_kv, g * c, d) @ keys.transpose(-1, -2)).view(b, hq, c, -1) * inputs.scaling
        probs = torch.softmax(logits.masked_fill(~valid, float("-inf")), dim=-1).nan_to_num(nan=0.0)
        best = torch.maximum(best, probs.amax(dim=2))
    return inputs.finalize(best.view(b, h_kv, g, -1).amax(dim=2))
