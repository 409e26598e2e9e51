"""Per-layer statistics of the layer allocations: LAVa's normalised entropy, CAKE's preference (docs/methods.md)."""

from __future__ import annotations

import math

import torch

from lavakv.validity import per_head


def _prefix_columns(valid_prefix: torch.Tensor) -> int:
    """n - w inferred from ``valid_prefix`` ``[b, n]``: one past the last column any row marks as valid prefix.

    Exact with left padding, where column n - w - 1 is valid prefix in every row that has a prefix at all.
    """
    columns = torch.nonzero(valid_prefix.any(dim=0)).flatten()
    return int(columns[-1].item()) + 1 if columns.numel() else 0


def normalized_entropy(
    scores: torch.Tensor, valid_prefix: torch.Tensor, *, prefix_len: int | None = None
) -> torch.Tensor:
    """LAVa's normalised layer entropy (Shen et al., 2025, Sec. 4.2, Eq. 6; docs/methods.md), one value per row.

    p = s / sum(s) over the (KV head, token) entries of a row that are valid prefix tokens and finite, and
    e = -sum p log p / log(H_kv * (n - w)), with 0 log 0 = 0, in float32.

    Args:
        scores: ``[batch, kv_heads, tokens]``, >= 0 on the counted entries (LAVa scores are); the window's +inf
            and padding's -inf are ignored through ``valid_prefix`` (and any other non-finite entry is dropped).
        valid_prefix: ``[batch, tokens]`` bool, True on tokens that are real (not padding) and not in the window:
            ``inputs.valid & ~inputs.window_mask()``; or ``[batch, kv_heads, tokens]`` when heads hold different
            entries (decode-time eviction).
        prefix_len: n - w, the padded prefix length used in the normaliser. The normaliser is the same for every
            row and layer (padded n, not the row's own count of valid entries), so it rescales every e_l alike and
            does not change the allocation. Default: inferred from ``valid_prefix`` (exact with left padding).

    Returns ``[batch]`` float32 in [0, 1]: 1.0 for uniform scores on an unpadded row, 0.0 for a single non-zero
    entry. A row whose counted scores sum to 0 (e.g. no valid prefix token) gets 0; so does every row when
    H_kv * (n - w) <= 1.
    """
    b, h_kv, n = scores.shape
    if valid_prefix.shape not in ((b, n), (b, h_kv, n)):
        raise ValueError(f"valid_prefix must be [batch, tokens] = {(b, n)} or [batch, kv_heads, tokens], got "
                         f"{tuple(valid_prefix.shape)}")
    if prefix_len is None:
        prefix_len = _prefix_columns(valid_prefix if valid_prefix.dim() == 2 else valid_prefix.any(dim=1))
    scores = scores.float()
    counted = per_head(valid_prefix, h_kv).to(scores.device) & torch.isfinite(scores)  # [b, h_kv, n]
    s = torch.where(counted, scores, torch.zeros((), dtype=scores.dtype, device=scores.device)).flatten(1)
    total = s.sum(dim=-1, keepdim=True)  # [b, 1]
    p = torch.where(total > 0, s / total.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(s))
    entropy = -torch.xlogy(p, p).sum(dim=-1)  # [b]
    entries = h_kv * prefix_len
    if entries <= 1:
        return torch.zeros_like(entropy)
    return entropy / math.log(entries)


#: how CAKE's layer preference is computed: "reference" (CAKE's code) or "renormalized" (lavakv's earlier form)
PREFERENCES = ("reference", "renormalized")
#: CAKE's code: ``calculate_entropy`` in ``cake/utils.py`` takes -sum A * log(A + 1e-10)
CAKE_ENTROPY_EPS = 1e-10


def cake_preference(
    window_attention: torch.Tensor,
    valid_prefix: torch.Tensor,
    *,
    tau1_inv: float = 0.5,
    tau2_inv: float = 0.5,
    preference: str = "reference",
) -> torch.Tensor:
    """CAKE layer preference (Qin et al., ICLR 2025; docs/methods.md): P_l = H_l^{1/tau1} * V_l^{1/tau2}, per row.

    From the window attention A ``[b, q_heads, w, n]`` restricted to ``valid_prefix`` ``[b, n]`` (real tokens not in
    the window; or ``[b, kv_heads, n]`` during decode-time eviction), with ``preference``:

    - "reference" (default; CAKE's code, github.com/antgroup/cakekv, ``cake/model/modify_llama.py`` and
      ``calculate_entropy`` in ``cake/utils.py``): H_l = -sum_{h, j, i} A_h[j, i] * log(A_h[j, i] + 1e-10), the
      entropy of the raw window attention rows summed over query heads, window queries and prefix tokens (no
      renormalisation, no averaging); V_l = sum_{h, i} var_j A_h[j, i], the unbiased variance over the window
      queries (``torch.var``) summed over query heads and prefix tokens (a window of one query gives 0). CAKE's
      code sums over the batch too (it runs batch 1); here each row gets its own preference.
    - "renormalized" (lavakv's earlier form): H_l = entropy of each query head's window-mean attention renormalised
      to sum 1 over the prefix, averaged over query heads (a head with no prefix mass counts 0); V_l = population
      variance over the window queries, averaged over prefix tokens, then over query heads.

    Only the reference H_l differs in substance: the two V_l differ by a factor that is the same for every layer of
    a row (w / (w - 1) times the number of query heads and prefix tokens), which cancels in the proportional split.
    A row without valid prefix tokens gets 0 ** tau1_inv * 0 ** tau2_inv. Exponents ``tau1_inv`` = 1/tau1 and
    ``tau2_inv`` = 1/tau2 must be >= 0. Returns ``[batch]`` float32.
    """
    if tau1_inv < 0 or tau2_inv < 0:
        raise ValueError(f"tau1_inv and tau2_inv must be >= 0, got {tau1_inv} and {tau2_inv}")
    if preference not in PREFERENCES:
        raise ValueError(f"preference must be one of {PREFERENCES}, got {preference!r}")
    attn = window_attention.float()  # [b, hq, w, n]
    prefix = per_head(valid_prefix.to(attn.device), attn.shape[1])  # [b, 1 or q_heads, n]

    if preference == "reference":
        on_prefix = attn.masked_fill(~prefix[:, :, None, :], 0.0)  # [b, hq, w, n]; 0 * log(1e-10) = 0 elsewhere
        dispersion = -(on_prefix * torch.log(on_prefix + CAKE_ENTROPY_EPS)).sum(dim=(1, 2, 3))  # [b]
        correction = 1 if attn.shape[2] > 1 else 0
        var = attn.var(dim=2, correction=correction).masked_fill(~prefix, 0.0)  # [b, hq, n]
        shift = var.sum(dim=(1, 2))  # [b]
        return _checked_preference(dispersion, shift, tau1_inv, tau2_inv)

    mean = attn.mean(dim=2).masked_fill(~prefix, 0.0)  # [b, hq, n]
    mass = mean.sum(dim=-1, keepdim=True)  # [b, hq, 1]
    p = torch.where(mass > 0, mean / mass.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(mean))
    dispersion = -torch.xlogy(p, p).sum(dim=-1).mean(dim=-1)  # [b]

    var = attn.var(dim=2, correction=0).masked_fill(~prefix, 0.0)  # [b, hq, n]
    count = prefix.sum(dim=-1).clamp_min(1)  # [b, 1]
    shift = (var.sum(dim=-1) / count).mean(dim=-1)  # [b]
    return _checked_preference(dispersion, shift, tau1_inv, tau2_inv)


def _checked_preference(dispersion: torch.Tensor, shift: torch.Tensor, tau1_inv: float, tau2_inv: float
                        ) -> torch.Tensor:
    """``dispersion ** tau1_inv * shift ** tau2_inv`` ``[batch]``, refused where float32 overflows it, or rounds it
    to 0 although both factors are positive (an even split would follow silently)."""
    preference = dispersion.pow(tau1_inv) * shift.pow(tau2_inv)
    lost = ~torch.isfinite(preference) | ((preference == 0) & (dispersion > 0) & (shift > 0))
    if bool(lost.any()):
        raise ValueError(
            f"cake: the layer preference H^tau1_inv * V^tau2_inv (tau1_inv={tau1_inv}, tau2_inv={tau2_inv}) is out of "
            f"float32's range here (H={float(dispersion[lost][0]):.3g}, V={float(shift[lost][0]):.3g}); use "
            "exponents nearer CAKE's defaults (0.5, 0.5)"
        )
    return preference
