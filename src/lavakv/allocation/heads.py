"""Head allocation inside one layer: which prompt entries each KV head keeps (METHODS.md §2).

Inputs follow the scorer conventions: ``scores [batch, kv_heads, tokens]`` float32 with +inf on the window and
-inf on padding. ``budget [batch]`` is the layer's budget B_l in prefix tokens per KV head (window excluded).
The output ``keep [batch, kv_heads, tokens]`` bool always contains the window and never padding. A sequence whose
budget covers its whole prefix keeps every real token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FLOOR_CONVENTIONS = ("layer", "configured")


def prefix_scores(scores: torch.Tensor, window: int) -> torch.Tensor:
    """Scores with the window excluded (-inf), so rankings only see prefix tokens."""
    out = scores.clone()
    out[..., max(0, scores.shape[-1] - window) :] = float("-inf")
    return out


def _window_keep(scores: torch.Tensor, window: int) -> torch.Tensor:
    """``[batch, heads, tokens]`` bool: the window entries of real tokens (always kept)."""
    n = scores.shape[-1]
    valid = scores != float("-inf")
    in_window = torch.zeros(n, dtype=torch.bool, device=scores.device)
    in_window[max(0, n - window) :] = True
    return valid & in_window


def top_per_head(ranked: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``[batch, heads, tokens]`` bool: each head's ``counts[b, h]`` best entries of ``ranked`` (ties: lower index)."""
    order = ranked.argsort(dim=-1, descending=True, stable=True)
    rank_ok = torch.arange(ranked.shape[-1], device=ranked.device)[None, None, :] < counts[..., None]
    keep = torch.zeros_like(ranked, dtype=torch.bool)
    keep.scatter_(-1, order, rank_ok)
    return keep & torch.isfinite(ranked)


def uniform_heads(scores: torch.Tensor, budget: torch.Tensor, window: int) -> torch.Tensor:
    """Every KV head keeps its own top-``budget`` prefix tokens plus the window (METHODS.md §2, uniform)."""
    keep = _window_keep(scores, window)
    counts = budget[:, None].expand(scores.shape[0], scores.shape[1])
    return keep | top_per_head(prefix_scores(scores, window), counts)


def adaptive_heads(
    scores: torch.Tensor,
    budget: torch.Tensor,
    window: int,
    *,
    alpha: float = 0.0,
    floor_budget: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ada-KV / LAVa: the layer keeps the global top ``kv_heads * budget`` of its flattened prefix scores.

    Head g keeps the entries it won (count_g). With a floor fraction ``alpha`` > 0 (Ada-KV's safeguard,
    METHODS.md §2): cap_g = round((1 - alpha) * count_g + floor), floor = floor(alpha * B), where B is ``budget``
    (paper convention) or ``floor_budget`` when given (reference-code convention: the configured B - w); head g
    then keeps its own top cap_g, and at least one token when ``budget >= 1`` (the floor can be 0 for small B).
    With ``alpha`` = 0 and ``budget >= 1`` no head is left without a prefix token either: an empty head takes its
    best token in place of the weakest entry of a head that holds more than one, so the total stays H * B.

    Args:
        scores: ``[batch, kv_heads, tokens]``.
        budget: ``[batch]`` int64 prefix tokens per head on average (B_l).
    """
    keep = _window_keep(scores, window)
    b, h, n = scores.shape
    ranked = prefix_scores(scores, window)
    flat = ranked.reshape(b, 1, h * n)
    won = top_per_head(flat, (budget * h)[:, None]).view(b, h, n)
    if alpha > 0.0:
        counts = won.sum(-1).double()
        ref = budget if floor_budget is None else floor_budget
        floor = torch.floor(alpha * ref.double())[:, None]
        caps = torch.round((1.0 - alpha) * counts + floor).long()
        caps = torch.where(budget[:, None] >= 1, caps.clamp_min(1), caps)  # no empty head when B_l >= 1
        won = top_per_head(ranked, caps)  # a head never keeps more than its finite prefix entries (<= n - w)
    else:
        won = _fill_empty_heads(ranked, won, budget)
    return keep | won


def _fill_empty_heads(ranked: torch.Tensor, won: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """Give each empty head (that has prefix tokens) its best token, taken from the weakest entry of a head > 1."""
    b, h, n = ranked.shape
    for _ in range(h - 1):
        counts = won.sum(-1)  # [b, h]
        has_tokens = torch.isfinite(ranked).any(-1)
        empty = (counts == 0) & has_tokens & (budget[:, None] >= 1)
        rows = empty.any(-1)
        if not bool(rows.any()):
            break
        head = empty.float().argmax(-1)  # first empty head per row
        best = ranked.gather(1, head[:, None, None].expand(b, 1, n)).squeeze(1).argmax(-1)  # [b]
        donors = won & (counts > 1)[..., None]
        weakest = torch.where(donors, ranked, torch.full_like(ranked, float("inf"))).reshape(b, -1).argmin(-1)
        can = rows & donors.reshape(b, -1).any(-1)
        idx = torch.arange(b, device=ranked.device)[can]
        won = won.clone()
        flat = won.view(b, -1)
        flat[idx, weakest[can]] = False
        flat[idx, head[can] * n + best[can]] = True
    return won


@dataclass(frozen=True)
class UniformHeads:
    """Head allocation "uniform": every KV head keeps its own top-B_l prefix tokens plus the window."""

    def __call__(
        self, scores: torch.Tensor, budget: torch.Tensor, window: int, configured: torch.Tensor
    ) -> torch.Tensor:
        """``scores [batch, kv_heads, tokens]``, ``budget [batch]`` -> keep ``[batch, kv_heads, tokens]`` bool."""
        return uniform_heads(scores, budget, window)


@dataclass(frozen=True)
class AdaptiveHeads:
    """Head allocation "adaptive" (Ada-KV / LAVa): a flattened top-k over the layer's heads, with a floor.

    Attributes:
        alpha: floor fraction in [0, 1) (Ada-KV's safeguard); 0 = the paper's plain flattened top-k.
        floor_from: "layer" (floor from the layer's budget B_l) or "configured" (reference code: from the
            configured B - w).
    """

    alpha: float = 0.0
    floor_from: str = "layer"

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise TypeError(f"alpha (adaptive-head floor fraction) must be a float in [0, 1), got {self.alpha!r}")
        if not 0.0 <= float(self.alpha) < 1.0:
            raise ValueError(f"alpha (adaptive-head floor fraction) must be in [0, 1), got {self.alpha}")
        if self.floor_from not in FLOOR_CONVENTIONS:
            raise ValueError(
                f"floor_from must be 'layer' (paper) or 'configured' (reference code), got {self.floor_from!r}"
            )

    def __call__(
        self, scores: torch.Tensor, budget: torch.Tensor, window: int, configured: torch.Tensor
    ) -> torch.Tensor:
        """``scores [batch, kv_heads, tokens]``, ``budget [batch]``, ``configured [batch]`` (B - w) -> keep mask."""
        floor_budget = configured if self.floor_from == "configured" else None
        return adaptive_heads(scores, budget, window, alpha=float(self.alpha), floor_budget=floor_budget)


HEAD_ALLOCATIONS = {"uniform": UniformHeads, "adaptive": AdaptiveHeads}
