"""Layer allocation: how the dynamic budget T = L * (B - w) is split over the layers (docs/methods.md).

A static allocation knows every layer's budget before prefill. A cascade (LAVa, CAKE) learns one statistic per
layer as prefill reaches it, and after each layer re-budgets every layer seen so far in proportion to their
statistics; earlier layers are truncated from their kept candidates, never re-scored.
All budgets are prefix tokens per KV head (window excluded), per sequence of the batch.

A cascade's ``statistic`` takes tensors only; ``reads`` says which: ``"scores"`` (the layer's scores
``[batch, kv_heads, tokens]``) or ``"window_attention"`` (the window queries' attention ``[batch, q_heads, w,
tokens]``), each with ``valid_prefix [batch, tokens]`` (real tokens outside the window; ``[batch, kv_heads,
tokens]`` when the heads hold different entries, during decode-time eviction).

Every ``budgets`` method takes the keyword-only ``real_tokens`` (``[batch]`` real prompt tokens n) and ``window``
(w). The reference schedules need them (PyramidKV's clamp to the prompt, CAKE's cap at n - w); without them those
steps are skipped, as if the prompt were arbitrarily long.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lavakv.allocation.statistics import PREFERENCES, cake_preference, normalized_entropy

#: PyramidKV schedules: "reference" (KVCache-Factory's integer schedule) or "exact" (linear, mean exactly B - w)
SCHEDULES = ("reference", "exact")
#: CAKE budget rounding: "reference" (CAKE's ``adjust_budgets``: totals exact) or "floor" (floor of each share)
ROUNDINGS = ("reference", "floor")


def _prefix_lengths(real_tokens: torch.Tensor | None, window: int | None) -> list[int] | None:
    """``[batch]`` n - w as Python ints (>= 0), or None when the caller did not give the prompt lengths."""
    if real_tokens is None:
        return None
    if window is None:
        raise ValueError("real_tokens needs window (the observation window w) to give the prefix length n - w")
    return [max(0, int(n) - int(window)) for n in real_tokens.tolist()]


@dataclass(frozen=True)
class UniformLayers:
    """Every layer gets B - w."""

    cascade = False

    def budgets(
        self, num_layers: int, mean: torch.Tensor, *, real_tokens: torch.Tensor | None = None,
        window: int | None = None,
    ) -> torch.Tensor:
        """``mean [batch]`` int64 -> ``[num_layers, batch]`` int64 (``real_tokens`` and ``window`` are unused)."""
        return mean[None, :].expand(num_layers, -1).clone()


@dataclass(frozen=True)
class PyramidLayers:
    """PyramidKV (Cai et al., 2024): budgets fall linearly from the first layer to the last.

    Attributes:
        beta: the slope parameter, >= 1: the last layer's target is (B - w) / beta.
        schedule: "reference" (default; KVCache-Factory's ``PyramidKVCluster``, the PyramidKV authors' code, see
            :func:`pyramid_reference`) or "exact" (lavakv: the straight line from 2(B - w) - (B - w) / beta down to
            (B - w) / beta, rounded by largest remainder so the layers' mean is exactly B - w).
    """

    beta: float = 20.0
    schedule: str = "reference"
    cascade = False

    def __post_init__(self) -> None:
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not self.beta >= 1.0:
            raise ValueError(f"pyramid beta must be >= 1 (ratio of bottom to top slope), got {self.beta}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"pyramid schedule must be one of {SCHEDULES}, got {self.schedule!r}")

    def budgets(
        self, num_layers: int, mean: torch.Tensor, *, real_tokens: torch.Tensor | None = None,
        window: int | None = None,
    ) -> torch.Tensor:
        """``mean [batch]`` int64 B - w -> ``[num_layers, batch]`` int64 prefix budgets.

        ``real_tokens [batch]`` (n) and ``window`` (w) let the reference schedule apply its prompt-length rules.
        """
        if self.schedule == "reference":
            return pyramid_reference(num_layers, mean, self.beta, _prefix_lengths(real_tokens, window), window)
        if num_layers == 1:
            return mean[None, :].clone()
        m = mean.double()
        top = m / self.beta
        bottom = 2 * m - top
        steps = torch.linspace(0, 1, num_layers, dtype=torch.float64)[:, None]
        exact = bottom[None, :] + (top - bottom)[None, :] * steps.to(m)  # [L, b]
        return largest_remainder(exact, (m * num_layers).round().long())


def pyramid_reference(
    num_layers: int, mean: torch.Tensor, beta: float, prefix: list[int] | None = None, window: int | None = None
) -> torch.Tensor:
    """KVCache-Factory's PyramidKV schedule (``PyramidKVCluster.update_kv`` in ``pyramidkv/pyramidkv_utils.py``).

    With B' = B - w (``mean``), per sequence, in integers::

        min = B' // beta;  max = 2 B' - min
        if max >= n - w:  max = n - w;  min = 2 B' - max        (the clamp to the prompt)
        steps = (max - min) // (L - 1);  B_l = max - l * steps  (l = 0 .. L - 1)

    and, before that, n < B (no compression: every layer gets B', which covers the prefix) or n < 2 B' (every
    layer gets B'). The budgets are not redistributed: flooring ``steps`` leaves the layers' total at or above
    L * B' (B=128, w=32, beta=20, L=32: 188 down to 33, total 3536 instead of 3072). A non-integer ``beta`` floors
    B' / beta as Python's ``//`` does. One layer gets B'.

    Args:
        num_layers: L.
        mean: ``[batch]`` int64 B' = B - w.
        beta: the slope parameter.
        prefix: per row n - w (real prompt tokens minus the window), or None to skip the prompt-length rules.
        window: w (needed with ``prefix``).
    Returns ``[num_layers, batch]`` int64.
    """
    rows = []
    for row, b_prime in enumerate(int(x) for x in mean.tolist()):
        if num_layers == 1:
            rows.append([b_prime])
            continue
        low = int(b_prime // beta)
        high = 2 * b_prime - low
        if prefix is not None:
            n = prefix[row] + int(window)
            if n < b_prime + int(window) or n < 2 * b_prime:
                rows.append([b_prime] * num_layers)
                continue
            if high >= prefix[row]:
                high = prefix[row]
                low = 2 * b_prime - high
        steps = (high - low) // (num_layers - 1)
        rows.append([high - layer * steps for layer in range(num_layers)])
    out = torch.tensor(rows, dtype=torch.long).reshape(len(rows), num_layers)
    return out.T.contiguous().to(mean.device)


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
    """B_j = floor(stat_j / sum_k stat_k * T) for the layers seen so far (docs/methods.md; paper Eq. 7).

    Args:
        stats: ``[layers_seen, batch]`` float, non-negative.
        total: ``[batch]`` int64 T = L * (B - w).
    Returns ``[layers_seen, batch]`` int64. A column whose statistics are all zero is split evenly.
    """
    s = stats.double()
    norm = s.sum(0, keepdim=True)
    share = torch.where(norm > 0, s / norm.clamp_min(1e-300), torch.full_like(s, 1.0 / s.shape[0]))
    return torch.floor(share * total[None, :].double() + 1e-9).long()


def cake_budgets(stats: torch.Tensor, total: torch.Tensor, prefix: list[int] | None = None) -> torch.Tensor:
    """CAKE's budget split (``CakeprefillKVCache.__call__`` and ``adjust_budgets`` in github.com/antgroup/cakekv,
    ``cake/cake_cache.py`` and ``cake/utils.py``), per sequence; the layers' budgets add up to T exactly.

    1. B_j = floor(x_j / sum_k x_k * T) for the layers seen so far (shares in float64; an all-zero column is split
       evenly);
    2. with P = n - w: every B_j above P is cut to P and the excess is spread over the layers below P: each gets
       excess // count, and the first excess % count of them (in layer order) one more;
    3. the difference T - sum_j B_j is spread the same way: when positive over the layers below P, when negative
       taken from the layers above 1;
    4. every B_j is cut to P (CAKE evicts with min(B_j, n - w)).

    Without ``prefix`` (P unknown) steps 2 and 4 are skipped and every layer counts as below P. The totals are
    exactly T unless every layer is at P. Unlike :func:`proportional_budgets`, a layer's budget may grow by a few
    entries between cascade steps (a remainder entry or a share of the excess moves to it).

    Args:
        stats: ``[layers_seen, batch]`` float, non-negative.
        total: ``[batch]`` int64 T = L * (B - w).
        prefix: per row n - w, or None.
    Returns ``[layers_seen, batch]`` int64.
    """
    base = proportional_budgets(stats, total)  # [k, b]
    columns = []
    for row, (col, t) in enumerate(zip(base.T.tolist(), total.tolist(), strict=True)):
        cap = math.inf if prefix is None else prefix[row]
        columns.append(_cake_adjust(col, int(t), cap))
    out = torch.tensor(columns, dtype=torch.long).reshape(len(columns), base.shape[0])
    return out.T.contiguous().to(stats.device)


def _spread(budgets: list[int], amount: int, eligible: list[bool], sign: int) -> None:
    """Spread ``sign * amount`` over the eligible layers: ``amount // count`` each, the first ``amount % count``
    (in layer order) one more."""
    chosen = [j for j, ok in enumerate(eligible) if ok]
    if not chosen or amount == 0:
        return
    each, extra = divmod(amount, len(chosen))
    for rank, j in enumerate(chosen):
        budgets[j] += sign * (each + (1 if rank < extra else 0))


def _cake_adjust(budgets: list[int], total: int, cap: float) -> list[int]:
    """CAKE's ``adjust_budgets`` on one sequence's floored budgets (``cap`` = n - w, or inf), then min(B_j, cap)."""
    excess = sum(max(b - cap, 0) for b in budgets)
    budgets = [int(min(b, cap)) for b in budgets]
    if excess > 0:
        _spread(budgets, int(excess), [b < cap for b in budgets], +1)
    diff = total - sum(budgets)
    if diff > 0:
        _spread(budgets, diff, [b < cap for b in budgets], +1)
    elif diff < 0:
        _spread(budgets, -diff, [b > 1 for b in budgets], -1)
    return [int(min(b, cap)) for b in budgets]


@dataclass(frozen=True)
class EntropyCascade:
    """LAVa (paper Sec. 4.2, Eqs. 6-7, Algorithm 2): budgets proportional to each layer's normalised entropy."""

    cascade = True
    reads = "scores"

    def statistic(self, scores: torch.Tensor, valid_prefix: torch.Tensor, window: int, *,
                  prefix_len: int | None = None) -> torch.Tensor:
        """``[batch]`` normalised entropy of the layer's flattened prefix scores ``[batch, kv_heads, tokens]``.

        ``prefix_len`` is the normaliser's n - w (default: the scores' tokens minus the window); decode-time eviction
        passes the same value for every layer, whose held entries differ in number.
        """
        if prefix_len is None:
            prefix_len = scores.shape[-1] - window
        return normalized_entropy(scores, valid_prefix, prefix_len=prefix_len)

    def budgets(
        self, stats: torch.Tensor, total: torch.Tensor, *, real_tokens: torch.Tensor | None = None,
        window: int | None = None,
    ) -> torch.Tensor:
        """:func:`proportional_budgets` of ``stats [layers_seen, batch]`` (``real_tokens``, ``window`` unused)."""
        return proportional_budgets(stats, total)


@dataclass(frozen=True)
class CakeCascade:
    """CAKE (Qin et al., ICLR 2025): budgets proportional to P_l = H_l^{1/tau1} * V_l^{1/tau2}.

    Attributes:
        tau1_inv, tau2_inv: the exponents 1/tau1 and 1/tau2 (>= 0).
        preference: how H_l and V_l are computed: "reference" (default, CAKE's code: entropy of the raw window
            attention summed over heads, window queries and prefix tokens) or "renormalized" (lavakv's earlier
            form); see :func:`lavakv.allocation.statistics.cake_preference`.
        rounding: how shares become integers: "reference" (default, CAKE's ``adjust_budgets``: floor, then the
            shortfall and any excess over n - w spread over the other layers, so totals are exact; see
            :func:`cake_budgets`) or "floor" (:func:`proportional_budgets`: floor only, total short by < L).
    """

    tau1_inv: float = 0.5
    tau2_inv: float = 0.5
    preference: str = "reference"
    rounding: str = "reference"
    cascade = True
    reads = "window_attention"

    def __post_init__(self) -> None:
        for name in ("tau1_inv", "tau2_inv"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"cake {name} (an exponent 1/tau) must be a finite number >= 0, got {value!r}")
        if self.preference not in PREFERENCES:
            raise ValueError(f"cake preference must be one of {PREFERENCES}, got {self.preference!r}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"cake rounding must be one of {ROUNDINGS}, got {self.rounding!r}")

    def statistic(self, window_attention: torch.Tensor, valid_prefix: torch.Tensor, window: int, *,
                  prefix_len: int | None = None) -> torch.Tensor:
        """``[batch]`` CAKE preference from the window attention ``[batch, q_heads, w, tokens]`` (``prefix_len`` is
        unused: the preference has no normaliser)."""
        return cake_preference(window_attention, valid_prefix, tau1_inv=self.tau1_inv, tau2_inv=self.tau2_inv,
                               preference=self.preference)

    def budgets(
        self, stats: torch.Tensor, total: torch.Tensor, *, real_tokens: torch.Tensor | None = None,
        window: int | None = None,
    ) -> torch.Tensor:
        """``stats [layers_seen, batch]``, ``total [batch]`` T -> ``[layers_seen, batch]`` int64 budgets.

        ``real_tokens [batch]`` (n) and ``window`` (w) give the reference rounding its cap n - w.
        """
        if self.rounding == "floor":
            return proportional_budgets(stats, total)
        return cake_budgets(stats, total, _prefix_lengths(real_tokens, window))


LAYER_ALLOCATIONS = {
    "uniform": UniformLayers,
    "pyramid": PyramidLayers,
    "lava": EntropyCascade,
    "cake": CakeCascade,
}
