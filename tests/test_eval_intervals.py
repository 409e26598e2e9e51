"""The bootstrap intervals and paired comparisons of lavakv.eval.intervals, against independent float64 references
and known properties (zero width on constants, coverage, pairing)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lavakv.eval.intervals import (
    LEADS,
    TOO_FEW,
    TRAILS,
    UNRESOLVED,
    bootstrap_interval,
    paired_comparison,
    resample_indices,
    resample_means,
    stratified_interval,
    verdict,
)


def _reference_percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between order statistics at position q * (B - 1), written out here."""
    position = q * (len(sorted_values) - 1)
    below = math.floor(position)
    above = min(below + 1, len(sorted_values) - 1)
    return sorted_values[below] + (position - below) * (sorted_values[above] - sorted_values[below])


def test_interval_equals_an_independent_float64_reference_on_fixed_resamples():
    values = [0.0, 1.0, 1.0, 0.25, 0.5, 1.0, 0.0]
    resamples, seed = 500, 3
    # the resamples are the documented ones: numpy's default_rng(seed) drawing [resamples, n] indices
    blocks = list(resample_indices(len(values), resamples, seed))
    indices = np.concatenate(blocks)
    assert indices.shape == (resamples, len(values))
    assert np.array_equal(indices, np.random.default_rng(seed).integers(0, len(values), size=(resamples, 7)))
    means = sorted(math.fsum(values[i] for i in row) / len(values) for row in indices.tolist())
    interval = bootstrap_interval(values, resamples=resamples, seed=seed)
    assert interval.mean == pytest.approx(math.fsum(values) / 7, abs=1e-15)
    assert interval.low == pytest.approx(_reference_percentile(means, 0.025), abs=1e-12)
    assert interval.high == pytest.approx(_reference_percentile(means, 0.975), abs=1e-12)
    assert interval.n == 7
    assert interval.low < interval.mean < interval.high
    # a 90 % interval is the 5th and 95th percentiles of the same resample means
    narrower = bootstrap_interval(values, resamples=resamples, seed=seed, confidence=0.9)
    assert narrower.low == pytest.approx(_reference_percentile(means, 0.05), abs=1e-12)
    assert interval.low <= narrower.low and narrower.high <= interval.high


def test_fixed_seed_reproduces_and_another_seed_differs():
    values = np.random.default_rng(0).random(30)
    assert bootstrap_interval(values) == bootstrap_interval(values)
    assert bootstrap_interval(values, seed=1) != bootstrap_interval(values)
    # resample means drawn block by block (bounded memory) for a large n: same count, same values every time
    big = np.random.default_rng(1).random(5000)
    first, second = resample_means(big, 2000), resample_means(big, 2000)
    assert first.shape == (2000,) and np.array_equal(first, second)


@pytest.mark.parametrize("value", [0.0, 1.0, 0.1, 37.5])
def test_constant_samples_give_a_zero_width_interval_at_their_value(value):
    interval = bootstrap_interval([value] * 9)
    assert interval.low == interval.high == interval.mean == pytest.approx(value, abs=1e-15)
    assert interval.resolved
    assert interval.excludes_zero() == (value != 0.0)


def test_fewer_than_two_samples_give_no_interval():
    one = bootstrap_interval([0.7])
    assert one.mean == 0.7 and one.n == 1 and not one.resolved and math.isnan(one.low)
    none = bootstrap_interval([])
    assert none.n == 0 and math.isnan(none.mean)
    assert verdict(one) == TOO_FEW
    assert paired_comparison({"a": 1.0}, {"a": 0.0}).verdict == TOO_FEW


def test_non_finite_values_are_refused():
    with pytest.raises(ValueError, match="must be finite"):
        bootstrap_interval([1.0, math.nan])


def test_coverage_of_the_true_mean_is_near_95_percent():
    """Property: over many samples from a known distribution the interval holds the true mean about 95 % of the
    time (percentile bootstrap with n = 40 slightly under-covers; far from 95 % would be a bug)."""
    rng = np.random.default_rng(123)
    true_mean, trials, covered = 0.3, 300, 0
    for trial in range(trials):
        sample = rng.normal(true_mean, 1.0, size=40)
        interval = bootstrap_interval(sample, resamples=1000, seed=trial)
        covered += interval.low <= true_mean <= interval.high
    assert 0.88 <= covered / trials <= 0.99
    # Bernoulli scores (exact match): the same
    covered = 0
    for trial in range(trials):
        sample = (rng.random(60) < 0.7).astype(float)
        interval = bootstrap_interval(sample, resamples=1000, seed=trial)
        covered += interval.low <= 0.7 <= interval.high
    assert 0.88 <= covered / trials <= 0.99


def test_interval_width_shrinks_like_one_over_root_n():
    rng = np.random.default_rng(7)
    small = bootstrap_interval(rng.normal(size=100))
    large = bootstrap_interval(rng.normal(size=1600))
    ratio = (small.high - small.low) / (large.high - large.low)
    assert 3.0 < ratio < 5.5  # sqrt(1600 / 100) = 4


def test_paired_comparison_counts_and_verdicts():
    reference = {"a": 0.0, "b": 1.0, "c": 0.5, "d": 1.0, "e": 0.0}
    candidate = {"a": 1.0, "b": 1.0, "c": 0.25, "d": 1.0, "e": 1.0}
    result = paired_comparison(candidate, reference, resamples=2000)
    assert (result.wins, result.ties, result.losses) == (2, 2, 1)
    assert result.difference.mean == pytest.approx((1 + 0 - 0.25 + 0 + 1) / 5)
    assert result.difference.n == 5 and result.ids_match
    expected = bootstrap_interval([1.0, 0.0, -0.25, 0.0, 1.0], resamples=2000)
    assert (result.difference.low, result.difference.high) == (expected.low, expected.high)
    assert result.verdict == UNRESOLVED  # the interval contains zero
    # lower is better (KL): the same numbers count the other way
    lower = paired_comparison(candidate, reference, higher_is_better=False, resamples=2000)
    assert (lower.wins, lower.ties, lower.losses) == (1, 2, 2)


def test_leads_and_trails_need_the_interval_to_exclude_zero():
    rng = np.random.default_rng(0)
    base = {f"s{i}": float(v) for i, v in enumerate(rng.random(50))}
    better = {k: v + 0.1 + 0.01 * rng.standard_normal() for k, v in base.items()}
    assert paired_comparison(better, base).verdict == LEADS
    assert paired_comparison(base, better).verdict == TRAILS
    assert paired_comparison(better, base, higher_is_better=False).verdict == TRAILS  # e.g. a higher KL
    same = paired_comparison(base, dict(base))
    assert same.verdict == UNRESOLVED and same.difference.low == same.difference.high == 0.0
    assert (same.wins, same.ties, same.losses) == (0, 50, 0)


def test_pairing_resolves_what_two_separate_intervals_cannot():
    """Samples vary a lot in difficulty, the methods differ a little but consistently: the per-method intervals
    overlap, the paired interval excludes zero."""
    rng = np.random.default_rng(5)
    difficulty = rng.random(40) * 100
    reference = {f"s{i}": float(d) for i, d in enumerate(difficulty)}
    candidate = {k: v + 2.0 + rng.standard_normal() * 0.5 for k, v in reference.items()}
    a = bootstrap_interval(list(candidate.values()))
    b = bootstrap_interval(list(reference.values()))
    assert a.low < b.high  # overlapping: separately, nothing is resolved
    assert paired_comparison(candidate, reference).verdict == LEADS


def test_unmatched_ids_and_nan_pairs_are_left_out():
    reference = {"a": 1.0, "b": 0.0, "c": 1.0, "x": 1.0}
    candidate = {"a": 1.0, "b": 1.0, "c": math.nan, "y": 0.0}
    result = paired_comparison(candidate, reference)
    assert result.only_candidate == ("y",) and result.only_reference == ("x",) and not result.ids_match
    assert result.difference.n == 2  # a and b; c has no candidate value
    assert (result.wins, result.ties, result.losses) == (1, 1, 0)


def test_stratified_interval_resamples_each_group():
    assert stratified_interval([[1.0] * 5, [0.0] * 8]).low == pytest.approx(0.5)
    one = stratified_interval([[0.1, 0.9, 0.4, 0.6]])
    alone = bootstrap_interval([0.1, 0.9, 0.4, 0.6])
    assert (one.mean, one.low, one.high) == pytest.approx((alone.mean, alone.low, alone.high))
    rng = np.random.default_rng(2)
    groups = [rng.random(20), rng.random(35) + 1.0]
    mixed = stratified_interval(groups, resamples=2000)
    assert mixed.mean == pytest.approx((groups[0].mean() + groups[1].mean()) / 2) and mixed.n == 55
    expected = (resample_means(groups[0], 2000, 0) + resample_means(groups[1], 2000, 1)) / 2
    assert mixed.low == pytest.approx(float(np.percentile(expected, 2.5)))
    assert not stratified_interval([[1.0], [0.0, 1.0]]).resolved  # a group of one sample: no interval
