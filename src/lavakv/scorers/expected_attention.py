"""Expected attention: the attention future queries are expected to pay, predicted from the statistics of the
prompt's queries and RoPE (Devoto et al., 2025, "Expected Attention", §3; query-agnostic, docs/methods.md)."""

from __future__ import annotations

import torch

from lavakv.scorers.base import ScoringInputs
from lavakv.scorers.pooling import reduce_groups
from lavakv.validity import any_head, per_head

#: where the query statistics come from: every prompt query past the sinks (the authors' code, kvpress), or only
#: the observation window's queries (lavakv's first formulation, kept to reproduce records made with it)
STATISTICS = ("prompt", "window")
_BLOCK = 1024  # queries rotated back, or keys scored, at once (memory only)


def _back(q: torch.Tensor, freq64: torch.Tensor, first: int, start: int) -> torch.Tensor:
    """u_c = R(-c) q_c for the queries ``q[:, :, start : start + _BLOCK]`` (float32 ``[b, hq, block, d]``), the
    query at index i sitting at column ``first + i``; angles in float64."""
    block = q[:, :, start : start + _BLOCK].float()
    half = freq64.numel()
    columns = torch.arange(first + start, first + start + block.shape[2], device=q.device, dtype=torch.float64)
    angles = columns[:, None] * freq64  # [block, half]
    cos, sin = angles.cos().float(), angles.sin().float()
    x1, x2 = block[..., :half], block[..., half : 2 * half]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin, block[..., 2 * half :]], dim=-1)


def expected_logits(inputs: ScoringInputs, *, horizon: int, statistics: str, n_sink: int) -> torch.Tensor:
    """The expected exponentiated logit's exponent, s k.mu + s^2 k^T Sigma k / 2, of every key for every query
    head (see :func:`expected_attention_scores`; options already checked), before sinks and padding are masked.

    Returns float32 ``[batch, q_heads, tokens]``. Its magnitude can be large (6.7e6 in qwen2.5-coder-1.5b's layer 0,
    where float32's spacing is 0.5; benchmarks/expected_attention_parity.py): there the softmax weights depend on
    the last bits of each logit.
    """
    freq = inputs.rope_inv_freq
    if freq is None:
        raise ValueError(
            "the expected-attention scorer needs the model's RoPE frequencies, which lavakv did not find on this "
            "model (no rotary_emb module); use another scorer"
        )
    q = inputs.queries if statistics == "prompt" else inputs.window_queries()  # [b, hq, m, d], model dtype
    b, hq, m, d = q.shape
    n = inputs.tokens
    half = freq.numel()
    if 2 * half > d:
        raise ValueError(f"RoPE frequencies ({half}) do not fit the head dimension ({d})")

    real_tokens = any_head(inputs.valid).to(q.device)  # [b, n]
    sinks = real_tokens & (torch.cumsum(real_tokens.long(), dim=-1) <= n_sink)
    counted = (real_tokens & ~sinks)[:, n - m :]  # [b, m] queries the statistics count
    # a row whose queries are all sinks (a prompt of at most n_sink real tokens) counts all its real queries
    counted = torch.where(counted.any(-1, keepdim=True), counted, real_tokens[:, n - m :])
    weight = counted.float()[:, None, :, None]  # [b, 1, m, 1]
    count = weight.sum(2, keepdim=True).clamp_min(1.0)
    freq64 = freq.to(q.device, torch.float64)
    # two passes over blocks of queries (mean, then centred covariance), so no full copy of the queries is made
    mean_u = sum((_back(q, freq64, n - m, start) * weight[:, :, start : start + _BLOCK]).sum(2, keepdim=True)
                 for start in range(0, m, _BLOCK)) / count  # [b, hq, 1, d]
    cov_u = torch.zeros(b, hq, d, d, device=q.device, dtype=torch.float32)
    for start in range(0, m, _BLOCK):
        centred = (_back(q, freq64, n - m, start) - mean_u) * weight[:, :, start : start + _BLOCK]
        cov_u += centred.transpose(-1, -2) @ centred
    cov_u /= count  # [b, hq, d, d]

    ahead = (n + torch.arange(horizon, device=q.device, dtype=torch.float64))[:, None] * freq64  # [horizon, half]
    mean_cos, mean_sin = ahead.cos().mean(0).float(), ahead.sin().mean(0).float()  # R_avg, per plane
    rotation = torch.eye(d, device=q.device, dtype=torch.float32)
    planes = torch.arange(half, device=q.device)
    rotation[planes, planes] = mean_cos
    rotation[planes + half, planes + half] = mean_cos
    rotation[planes, planes + half] = -mean_sin
    rotation[planes + half, planes] = mean_sin
    mu = mean_u @ rotation.T  # [b, hq, 1, d]
    sigma = rotation @ cov_u @ rotation.T  # [b, hq, d, d]

    g, kv, s = inputs.group_size, inputs.kv_heads, inputs.scaling
    mu_g, sigma_g = mu.view(b, kv, g, 1, d), sigma.view(b, kv, g, d, d)  # query head h = KV head h // G
    logits = torch.empty(b, kv, g, n, device=q.device, dtype=torch.float32)
    for start in range(0, n, _BLOCK):  # keys in blocks: no per-query-head copy of the keys
        k = inputs.keys[:, :, start : start + _BLOCK].float()[:, :, None]  # [b, h_kv, 1, block, d]
        linear = (k @ mu_g.transpose(-1, -2)).squeeze(-1)  # [b, h_kv, g, block]
        logits[..., start : start + k.shape[3]] = s * linear + 0.5 * s * s * ((k @ sigma_g) * k).sum(-1)
    return logits.view(b, hq, n)


def expected_attention_scores(
    inputs: ScoringInputs, *, horizon: int = 512, values: bool = True, statistics: str = "prompt", n_sink: int = 4
) -> torch.Tensor:
    """Score each key by the attention the next ``horizon`` queries are expected to give it.

    The paper (§3) models the hidden states, hence the queries, as Gaussian. A query q_c seen at column c, asked
    again at future position n + t, is R(n + t - c) q_c (RoPE rotates each rotate-half plane by its angle; only
    the offset matters, so left padding and compacted caches give the same result). Averaging the rotation over
    t in [0, ``horizon``) gives the averaged rotation R_avg(n) applied to u_c = R(-c) q_c, so the future query is
    Gaussian with mean mu = R_avg E[u] and covariance Sigma = R_avg Cov[u] R_avg^T, per query head, over the
    queries ``statistics`` names: ``"prompt"`` = every query the scorer is given (the whole prompt at an exact
    prefill and at a chunked one's first chunk; the ring of the last w queries after later chunks and at
    decode-time eviction) except the first ``n_sink`` real tokens (the authors' kvpress code);
    ``"window"`` = the last w queries only. For a Gaussian query the expected exponentiated logit is
    exp(s k.mu + s^2 k^T Sigma k / 2) (s the softmax scale); normalised over the layer's real keys this is the
    expected attention, averaged over each KV head's query group, times the key's value L2 norm when ``values``.
    The first ``n_sink`` real entries of each head (attention sinks) are left out of the softmax and get the
    layer's highest score, so every allocation keeps them (as kvpress does); ``n_sink=0`` turns that off.

    Args:
        inputs: uses ``queries`` (or :meth:`ScoringInputs.window_queries`), ``keys``, ``values``, ``valid`` and
            ``rope_inv_freq`` (required).
        horizon: future positions averaged over (>= 1).
        values: multiply by ||v_i||_2 (an entry's contribution to the output scales with its value's norm).
        statistics: ``"prompt"`` or ``"window"`` (see above).
        n_sink: leading real tokens left out of the statistics and always kept (>= 0).

    Returns float32 ``[batch, kv_heads, tokens]``: +inf on the window, -inf on padding. Computed in float32 (the
    rotation angles in float64).
    """
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1 (future positions), got {horizon!r}")
    if statistics not in STATISTICS:
        raise ValueError(f"statistics must be one of {', '.join(map(repr, STATISTICS))}, got {statistics!r}")
    if isinstance(n_sink, bool) or not isinstance(n_sink, int) or n_sink < 0:
        raise ValueError(f"n_sink must be an integer >= 0 (leading tokens kept; 0 = none), got {n_sink!r}")
    logits = expected_logits(inputs, horizon=horizon, statistics=statistics, n_sink=n_sink)  # [b, hq, n]
    b, hq, n = logits.shape
    kv = inputs.kv_heads
    held = inputs.key_valid(kv)  # [b, 1 or h_kv, n]
    first = held & (torch.cumsum(held.long(), dim=-1) <= n_sink)  # each head's first n_sink real entries (sinks)
    scored = held & ~first  # the softmax runs over these, as kvpress's does over the keys past its sinks
    logits = logits.masked_fill(~per_head(scored, hq), float("-inf"))  # [b, hq, n]
    attention = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0)
    scores = reduce_groups(attention, kv, "mean")  # [b, h_kv, n]
    if values:
        scores = scores * torch.linalg.vector_norm(inputs.values, ord=2, dim=-1, dtype=torch.float32)
    if n_sink:
        # [b, 1, 1]; scores are >= 0, so a row that holds nothing but sinks gives its sinks 0, never -inf (padding)
        top = scores.masked_fill(~scored, float("-inf")).amax(dim=(1, 2), keepdim=True).clamp_min(0.0)
        scores = torch.where(first, top, scores)
    return inputs.finalize(scores)
