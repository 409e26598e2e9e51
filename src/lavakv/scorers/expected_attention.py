"""Expected attention: the attention future queries are expected to pay, predicted from the recent ones and RoPE
(Devoto et al., 2025, "Expected Attention"; query-agnostic, docs/methods.md)."""

from __future__ import annotations

import torch

from lavakv.scorers.base import ScoringInputs
from lavakv.scorers.pooling import reduce_groups
from lavakv.validity import any_head


def expected_attention_scores(inputs: ScoringInputs, *, horizon: int = 512, values: bool = True) -> torch.Tensor:
    """Score each key by the attention the next ``horizon`` queries are expected to give it.

    Future queries are modelled from the window's queries q_j (post-RoPE, at the last w positions): a query like q_j
    asked d positions later is R(d) q_j (RoPE is a rotation by d * theta in each rotate-half plane), so averaging
    the rotation over the offsets to the next ``horizon`` positions gives each window query's expected future
    query m_j (the paper's averaged rotation). Over the window, the future query is Gaussian with mean mu = mean_j
    m_j and covariance Sigma = cov_j m_j, per query head. For a Gaussian query the expected exponentiated logit is
    exp(s k.mu + s^2 k^T Sigma k / 2) (s the softmax scale); normalised over the layer's real keys this is the
    expected attention, averaged over each KV head's query group, times the key's value L2 norm when ``values``.

    Args:
        inputs: uses :meth:`ScoringInputs.window_queries`, ``keys``, ``values`` and ``rope_inv_freq`` (required).
        horizon: future positions averaged over (>= 1).
        values: multiply by ||v_i||_2 (an entry's contribution to the output scales with its value's norm).

    Returns float32 ``[batch, kv_heads, tokens]``: +inf on the window, -inf on padding. Computed in float32.
    """
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1 (future positions), got {horizon!r}")
    freq = inputs.rope_inv_freq
    if freq is None:
        raise ValueError(
            "the expected-attention scorer needs the model's RoPE frequencies, which lavakv did not find on this "
            "model (no rotary_emb module); use another scorer"
        )
    q = inputs.window_queries().float()  # [b, hq, w, d]
    b, hq, w, d = q.shape
    half = freq.numel()
    if 2 * half > d:
        raise ValueError(f"RoPE frequencies ({half}) do not fit the head dimension ({d})")
    freq = freq.to(q.device, torch.float32)
    # offset from window query j (position n - w + j) to future position n + t: (w - j) + t
    offsets = (w - torch.arange(w, device=q.device, dtype=torch.float32))[:, None] + torch.arange(
        horizon, device=q.device, dtype=torch.float32)[None, :]  # [w, horizon]
    angles = offsets[..., None] * freq  # [w, horizon, half]
    cos, sin = angles.cos().mean(1), angles.sin().mean(1)  # [w, half]: the averaged rotation
    x1, x2 = q[..., :half], q[..., half : 2 * half]
    future = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, q[..., 2 * half :]], dim=-1)  # [b, hq, w, d]

    real = any_head(inputs.valid)[:, -w:].to(q.device).float()[:, None, :, None]  # [b, 1, w, 1] real window queries
    count = real.sum(2, keepdim=True).clamp_min(1.0)
    mu = (future * real).sum(2, keepdim=True) / count  # [b, hq, 1, d]
    centred = (future - mu) * real
    sigma = centred.transpose(-1, -2) @ centred / count  # [b, hq, d, d]

    g = inputs.group_size
    keys = inputs.keys.float()  # [b, h_kv, n, d]
    n = keys.shape[2]
    keys_q = keys[:, :, None].expand(b, inputs.kv_heads, g, n, d).reshape(b, hq, n, d)  # query head h -> KV h // G
    s = inputs.scaling
    logits = s * (keys_q @ mu.transpose(-1, -2)).squeeze(-1) + 0.5 * s * s * ((keys_q @ sigma) * keys_q).sum(-1)
    logits = logits.masked_fill(~inputs.key_valid(hq), float("-inf"))  # [b, hq, n]
    attention = torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0)
    scores = reduce_groups(attention, inputs.kv_heads, "mean")  # [b, h_kv, n]
    if values:
        scores = scores * torch.linalg.vector_norm(inputs.values, ord=2, dim=-1, dtype=torch.float32)
    return inputs.finalize(scores)
