"""Confidence intervals over samples: percentile bootstrap of a mean, and paired method-vs-method comparisons.

Everything here works on plain float64 numbers (numpy), one value per sample:

* :func:`bootstrap_interval` -- the mean of the values with a percentile-bootstrap interval: the values are
  resampled with replacement ``resamples`` times (fixed seed, so a report is reproducible to the digit), the mean
  of every resample is taken, and the interval runs from the ``(1 - confidence) / 2`` to the
  ``(1 + confidence) / 2`` quantile of those means (numpy's default linear interpolation between order statistics).
* :func:`stratified_interval` -- the mean of several groups' means (e.g. the RULER mean over its sub-tasks), each
  group resampled on its own.
* :func:`paired_comparison` -- a method against a reference method on the same samples, matched by sample id: the
  mean of the per-sample differences (candidate - reference) with its bootstrap interval, the win / tie / loss
  counts, and a verdict: ``"leads"`` or ``"trails"`` when the interval excludes zero, else
  ``"no difference resolved"``. Pairing removes the between-sample variance that two separate intervals would
  carry, so it resolves differences that overlapping per-method intervals cannot.

The percentile bootstrap is approximate with few samples: it ignores that the spread of a small sample
underestimates the population's, so with fewer than about 20 samples its intervals are too narrow. With fewer than
2 values no interval is given (``low`` and ``high`` are NaN) and no verdict is reached.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000
SEED = 0
CONFIDENCE = 0.95
_BLOCK_ELEMENTS = 1 << 22  # resample indices drawn per block (32 MiB of int64)

LEADS, TRAILS, UNRESOLVED, TOO_FEW = "leads", "trails", "no difference resolved", "too few samples"


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` samples with its bootstrap interval ``[low, high]`` (NaN when ``n < 2``)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def resolved(self) -> bool:
        """Whether there is an interval at all (at least two samples)."""
        return not (math.isnan(self.low) or math.isnan(self.high))

    def excludes_zero(self) -> bool:
        """Whether the whole interval lies on one side of zero (False without an interval)."""
        return self.resolved and (self.low > 0 or self.high < 0)

    def scaled(self, factor: float) -> Interval:
        """The same interval with every value multiplied by ``factor`` (> 0)."""
        return Interval(self.mean * factor, self.low * factor, self.high * factor, self.n)


@dataclass(frozen=True)
class PairedComparison:
    """A candidate against a reference over their common samples.

    Attributes:
        difference: mean of candidate - reference per sample, with its bootstrap interval.
        wins / ties / losses: samples where the candidate is better / equal / worse (in the metric's direction).
        verdict: ``"leads"`` / ``"trails"`` (the interval excludes zero, better / worse), ``"no difference
            resolved"`` (it contains zero), or ``"too few samples"`` (fewer than 2 pairs).
        only_candidate / only_reference: ids present on one side only (left out of the comparison).
    """

    difference: Interval
    wins: int
    ties: int
    losses: int
    verdict: str
    only_candidate: tuple[str, ...] = ()
    only_reference: tuple[str, ...] = ()

    @property
    def ids_match(self) -> bool:
        """Whether both sides had exactly the same sample ids."""
        return not self.only_candidate and not self.only_reference


def _values(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """``values`` as a 1-D float64 array; NaN or infinite values -> ValueError."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise ValueError("bootstrap: values must be finite (drop the NaN samples first)")
    return array


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> Iterator[np.ndarray]:
    """The bootstrap resamples of ``n`` values as index blocks ``[rows, n]`` (int64), ``resamples`` rows in all.

    Drawn from ``numpy.random.default_rng(seed)`` block by block (bounded memory); the same ``(n, resamples,
    seed)`` always gives the same indices, which is what makes a report reproducible.
    """
    if n < 1:
        raise ValueError(f"bootstrap: need at least one value, got {n}")
    if resamples < 1:
        raise ValueError(f"bootstrap: resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, resamples, rows):
        yield rng.integers(0, n, size=(min(rows, resamples - start), n))


def resample_means(values: Sequence[float] | np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """The mean of each bootstrap resample of ``values`` (float64, ``[resamples]``)."""
    array = _values(values)
    return np.concatenate([array[block].mean(axis=1) for block in resample_indices(len(array), resamples, seed)])


def percentile_interval(means: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resample means."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    low, high = np.percentile(means, [50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)])
    return float(low), float(high)


def bootstrap_interval(values: Sequence[float] | np.ndarray, *, confidence: float = CONFIDENCE,
                       resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """The mean of ``values`` with its percentile-bootstrap interval (NaN bounds with fewer than 2 values).

    Constant values give a zero-width interval at their value.
    """
    array = _values(values)
    if len(array) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(array.mean())
    if len(array) < 2:
        return Interval(mean, math.nan, math.nan, 1)
    low, high = percentile_interval(resample_means(array, resamples, seed), confidence)
    # the resample means of constant values are that value up to rounding: pin the bounds to it
    if np.all(array == array[0]):
        low = high = mean
    return Interval(mean, low, high, len(array))


def stratified_interval(groups: Sequence[Sequence[float] | np.ndarray], *, confidence: float = CONFIDENCE,
                        resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """The unweighted mean of the groups' means (e.g. a benchmark mean over sub-tasks), with a bootstrap interval
    that resamples each group on its own (group ``k`` with seed ``seed + k``). ``n`` is the total sample count;
    every group needs at least 2 values for an interval."""
    arrays = [_values(g) for g in groups]
    if not arrays or any(len(a) == 0 for a in arrays):
        return Interval(math.nan, math.nan, math.nan, sum(len(a) for a in arrays))
    mean = float(np.mean([a.mean() for a in arrays]))
    total = sum(len(a) for a in arrays)
    if any(len(a) < 2 for a in arrays):
        return Interval(mean, math.nan, math.nan, total)
    means = np.mean([resample_means(a, resamples, seed + k) for k, a in enumerate(arrays)], axis=0)
    low, high = percentile_interval(means, confidence)
    return Interval(mean, low, high, total)


def verdict(difference: Interval, higher_is_better: bool = True) -> str:
    """``"leads"`` / ``"trails"`` when the interval of candidate - reference excludes zero (on the better / worse
    side for the metric's direction), ``"no difference resolved"`` when it contains zero, ``"too few samples"``
    without an interval."""
    if not difference.resolved:
        return TOO_FEW
    if not difference.excludes_zero():
        return UNRESOLVED
    better = difference.low > 0 if higher_is_better else difference.high < 0
    return LEADS if better else TRAILS


def paired_comparison(candidate: Mapping[str, float], reference: Mapping[str, float], *,
                      higher_is_better: bool = True, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                      seed: int = SEED) -> PairedComparison:
    """Compare ``candidate`` with ``reference`` (sample id -> value) over the ids both have.

    Pairs where either value is NaN are left out (and counted in neither list of unmatched ids). The bootstrap
    resamples pairs, so the interval is that of the mean per-sample difference ``candidate - reference``.
    """
    common = [i for i in reference if i in candidate]
    only_candidate = tuple(i for i in candidate if i not in reference)
    only_reference = tuple(i for i in reference if i not in candidate)
    pairs = [(candidate[i], reference[i]) for i in common
             if not (math.isnan(candidate[i]) or math.isnan(reference[i]))]
    a = np.array([p[0] for p in pairs], dtype=np.float64)
    b = np.array([p[1] for p in pairs], dtype=np.float64)
    difference = bootstrap_interval(a - b, confidence=confidence, resamples=resamples, seed=seed)
    better = (a > b) if higher_is_better else (a < b)
    worse = (a < b) if higher_is_better else (a > b)
    wins, losses = int(better.sum()), int(worse.sum())
    return PairedComparison(difference, wins, len(pairs) - wins - losses, losses,
                            verdict(difference, higher_is_better), only_candidate, only_reference)
