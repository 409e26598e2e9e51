"""Head allocation inside one layer: which prompt entries each KV head keeps (docs/methods.md).

Inputs follow the scorer conventions: ``scores [batch, kv_heads, tokens]`` float32 with +inf on the window and
-inf on padding. ``budget [batch]`` is the layer's budget B_l in prefix tokens per KV head (window excluded).
The output ``keep [batch, kv_heads, tokens]`` bool always contains the window and never padding. A sequence whose
budget covers its whole prefix keeps every real token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FLOORS = ("exact", "lava-reference", "adakv-reference")


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
    """Every KV head keeps its own top-``budget`` prefix tokens plus the window (docs/methods.md, uniform)."""
    keep = _window_keep(scores, window)
    counts = budget[:, None].expand(scores.shape[0], scores.shape[1])
    return keep | top_per_head(prefix_scores(scores, window), counts)


def adaptive_heads(
    scores: torch.Tensor,
    budget: torch.Tensor,
    window: int,
    *,
    alpha: float = 0.0,
    floor: str = "exact",
    configured: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ada-KV / LAVa: the layer keeps ``kv_heads * budget`` prefix entries chosen across its heads (docs/methods.md).

    With ``alpha`` = 0 (paper Algorithm 1): the global top ``kv_heads * budget`` of the flattened prefix scores;
    head g keeps what it won, possibly nothing. With a floor fraction ``alpha`` > 0 (Ada-KV's safeguard):

    * ``floor="exact"`` (lavakv): every head first keeps its own top ``floor(alpha * budget)``, then the other
      ``kv_heads * (budget - floor(alpha * budget))`` entries are the flattened top-k of everything else. Exactly
      ``kv_heads * budget`` entries (when the heads have that many), and the kept set only shrinks as ``budget``
      shrinks, so truncating a kept set equals allocating afresh at the smaller budget (cascades are exact);
    * ``floor="lava-reference"`` / ``"adakv-reference"`` (the authors' code): count_g = what head g wins in the
      global top ``kv_heads * budget``, cap_g = round((1 - alpha) * count_g + f) with f = int(alpha * B_cfg),
      B_cfg = the configured budget including the window (LAVa's code) or without it (Ada-KV's code); head g keeps
      its own top cap_g. Totals differ from ``kv_heads * budget`` by rounding and by f vs alpha * budget.

    Args:
        scores: ``[batch, kv_heads, tokens]`` float, +inf on the window, -inf on padding / evicted entries.
        budget: ``[batch]`` int64 prefix tokens per head on average (B_l, window excluded).
        configured: ``[batch]`` the configured B - w (needed by the reference floors).
    Returns ``[batch, kv_heads, tokens]`` bool: the kept prefix entries plus the window.
    """
    keep = _window_keep(scores, window)
    b, h, n = scores.shape
    ranked = prefix_scores(scores, window)
    if alpha == 0.0:
        return keep | top_per_head(ranked.reshape(b, 1, h * n), (budget * h)[:, None]).view(b, h, n)
    if floor == "exact":
        per_head = torch.floor(alpha * budget.double()).long()  # [b]
        floored = top_per_head(ranked, per_head[:, None].expand(b, h))  # [b, h, n]
        rest = ranked.masked_fill(floored, float("-inf")).reshape(b, 1, h * n)
        extra = (budget * h - floored.sum((1, 2)))[:, None]  # [b, 1]
        return keep | floored | top_per_head(rest, extra).view(b, h, n)
    if configured is None:
        raise ValueError(f"floor={floor!r} needs the configured budget (B - w)")
    won = top_per_head(ranked.reshape(b, 1, h * n), (budget * h)[:, None]).view(b, h, n)
    reference = configured + window if floor == "lava-reference" else configured
    f = torch.floor(alpha * reference.double())[:, None]  # int() of a non-negative number
    caps = torch.round((1.0 - alpha) * won.sum(-1).double() + f).long()  # [b, h]
    return keep | top_per_head(ranked, caps)  # a head never keeps more than its finite prefix entries


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
        alpha: floor fraction in [0, 1) (Ada-KV's safeguard). Default 0.2, the value the LAVa and Ada-KV authors'
            scripts run (measured level with 0 on the packaged models: benchmarks/RESULTS-eval.md); 0 = the plain
            flattened top-k of the LAVa paper's Algorithm 1.
        floor: how the floor is applied: "exact" (lavakv: budget-exact and nested, cascades exact),
            "lava-reference" or "adakv-reference" (the authors' cap formula; see :func:`adaptive_heads`).
    """

    alpha: float = 0.2
    floor: str = "exact"

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise TypeError(f"alpha (adaptive-head floor fraction) must be a float in [0, 1), got {self.alpha!r}")
        if not 0.0 <= float(self.alpha) < 1.0:
            raise ValueError(f"alpha (adaptive-head floor fraction) must be in [0, 1), got {self.alpha}")
        if self.floor not in FLOORS:
            raise ValueError(f"floor must be one of {', '.join(FLOORS)}, got {self.floor!r}")

    def __call__(
        self, scores: torch.Tensor, budget: torch.Tensor, window: int, configured: torch.Tensor
    ) -> torch.Tensor:
        """``scores [batch, kv_heads, tokens]``, ``budget [batch]``, ``configured [batch]`` (B - w) -> keep mask."""
        return adaptive_heads(scores, budget, window, alpha=float(self.alpha), floor=self.floor,
                              configured=configured)


HEAD_ALLOCATIONS = {"uniform": UniformHeads, "adaptive": AdaptiveHeads}
