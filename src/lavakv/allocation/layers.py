"""Layer allocation: how the dynamic budget T = L * (B - w) is split over the layers (METHODS.md §3).

A static allocation knows every layer's budget before prefill. A cascade (LAVa, CAKE) learns one statistic per
layer as prefill reaches it, and after each layer re-budgets every layer seen so far in proportion to their
statistics; budgets only shrink as layers arrive, so earlier layers are truncated, never re-scored.
All budgets are prefix tokens per KV head (window excluded), per sequence of the batch.

A cascade's ``statistic`` takes tensors only; ``reads`` says which: ``"scores"`` (the layer's scores
``[batch, kv_heads, tokens]``) or ``"window_attention"`` (the window queries' attention ``[batch, q_heads, w,
tokens]``), each with ``valid_prefix [batch, tokens]`` (real tokens outside the window).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lavakv.allocation.statistics import cake_preference, normalized_entropy


@dataclass(frozen=True)
class UniformLayers:
    """Every layer gets B - w."""

    cascade = False

    def budgets(self, num_layers: int, mean: torch.Tensor) -> torch.Tensor:
        """``mean [batch]`` int64 -> ``[num_layers, batch]`` int64."""
        return mean[None, :].expand(num_layers, -1).clone()


@dataclass(frozen=True)
class PyramidLayers:
    """PyramidKV: linear from B_0 = 2(B - w) - B_{L-1} at the bottom to B_{L-1} = (B - w) / beta at the top.

    Integer budgets use largest-remainder rounding so the layers' mean is exactly B - w.
    """

    beta: float = 20.0
    cascade = False

    def __post_init__(self) -> None:
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not self.beta >= 1.0:
            raise ValueError(f"pyramid beta must be >= 1 (ratio of bottom to top slope), got {self.beta}")

    def budgets(self, num_layers: int, mean: torch.Tensor) -> torch.Tensor:
        if num_layers == 1:
            return mean[None, :].clone()
        m = mean.double()
        top = m / self.beta
        bottom = 2 * m - top
        steps = torch.linspace(0, 1, num_layers, dtype=torch.float64)[:, None]
        exact = bottom[None, :] + (top - bottom)[None, :] * steps.to(m)  # [L, b]
        return largest_remainder(exact, (m * num_layers).round().long())


def largest_remainder(exact: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Round ``exact [L, batch]`` (float) to integers summing to ``total [batch]`` per column."""
    base = torch.floor(exact).long()
    short = total - base.sum(0)  # [b]
    frac = exact - base
    order = frac.argsort(dim=0, descending=True, stable=True)
    bonus = (torch.arange(exact.shape[0], device=exact.device)[:, None] < short[None, :]).long()
    out = base.clone()
    out.scatter_add_(0, order, bonus)
    return out


def proportional_budgets(stats: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """B_j = floor(stat_j / sum_k stat_k * T) for the layers seen so far (METHODS.md §3, Eq. 7).

    Args:
        stats: ``[layers_seen, batch]`` float, non-negative.
        total: ``[batch]`` int64 T = L * (B - w).
    Returns ``[layers_seen, batch]`` int64. A column whose statistics are all zero is split evenly.
    """
    s = stats.double()
    norm = s.sum(0, keepdim=True)
    share = torch.where(norm > 0, s / norm.clamp_min(1e-300), torch.full_like(s, 1.0 / s.shape[0]))
    return torch.floor(share * total[None, :].double() + 1e-9).long()


@dataclass(frozen=True)
class EntropyCascade:
    """LAVa (paper Sec. 4.2, Eqs. 6-7, Algorithm 2): budgets proportional to each layer's normalised entropy."""

    cascade = True
    reads = "scores"

    def statistic(self, scores: torch.Tensor, valid_prefix: torch.Tensor, window: int) -> torch.Tensor:
        """``[batch]`` normalised entropy of the layer's flattened prefix scores ``[batch, kv_heads, tokens]``."""
        return normalized_entropy(scores, valid_prefix, prefix_len=scores.shape[-1] - window)

    budgets = staticmethod(proportional_budgets)


@dataclass(frozen=True)
class CakeCascade:
    """CAKE (Qin et al., ICLR 2025): budgets proportional to P_l = H_l^{1/tau1} * V_l^{1/tau2}."""

    tau1_inv: float = 0.5
    tau2_inv: float = 0.5
    cascade = True
    reads = "window_attention"

    def __post_init__(self) -> None:
        for name in ("tau1_inv", "tau2_inv"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"cake {name} (an exponent 1/tau) must be a number >= 0, got {value!r}")

    def statistic(self, window_attention: torch.Tensor, valid_prefix: torch.Tensor, window: int) -> torch.Tensor:
        """``[batch]`` CAKE preference from the window attention ``[batch, q_heads, w, tokens]``."""
        return cake_preference(window_attention, valid_prefix, tau1_inv=self.tau1_inv, tau2_inv=self.tau2_inv)

    budgets = staticmethod(proportional_budgets)


LAYER_ALLOCATIONS = {
    "uniform": UniformLayers,
    "pyramid": PyramidLayers,
    "lava": EntropyCascade,
    "cake": CakeCascade,
}
