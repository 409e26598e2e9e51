"""Budget allocation (docs/methods.md): head allocations, layer allocations, and the cascade through the runtime.

Scores follow the scorer convention: float32 ``[batch, kv_heads, tokens]``, +inf on the last ``window`` positions,
-inf on left padding. Expected results are computed independently in plain Python from the documented rules.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import prompt, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

import lavakv
from lavakv import scorers as runtime
from lavakv.allocation import HEAD_ALLOCATIONS, AdaptiveHeads, UniformHeads, adaptive_heads, uniform_heads
from lavakv.allocation.layers import (
    CakeCascade,
    EntropyCascade,
    PyramidLayers,
    UniformLayers,
    cake_budgets,
    proportional_budgets,
)
from lavakv.allocation.statistics import cake_preference

FAST = settings(max_examples=40, deadline=None, derandomize=True)
INF = float("inf")


# -- helpers ------------------------------------------------------------------------------------------------------
def make_scores(batch: int, heads: int, prefix: int, window: int, pads: list[int], seed: int) -> torch.Tensor:
    """Distinct random scores (a random permutation per row), +inf on the window, -inf on ``pads[r]`` left tokens."""
    g = torch.Generator().manual_seed(seed)
    n = prefix + window
    rows = [torch.randperm(heads * n, generator=g).float().view(heads, n) / (heads * n) for _ in range(batch)]
    s = torch.stack(rows)
    s[..., prefix:] = INF
    for row, pad in enumerate(pads):
        s[row, :, :pad] = -INF
    return s


@st.composite
def layer_case(draw, max_heads: int = 4, max_prefix: int = 24):
    """(scores, budget [batch], window, pads): budgets between 0 and each row's real prefix length."""
    batch = draw(st.integers(1, 3))
    heads = draw(st.integers(1, max_heads))
    prefix = draw(st.integers(1, max_prefix))
    window = draw(st.integers(1, 5))
    pads = [draw(st.integers(0, prefix - 1)) for _ in range(batch)]
    budget = torch.tensor([draw(st.integers(0, prefix - p)) for p in pads], dtype=torch.long)
    seed = draw(st.integers(0, 2**16))
    return make_scores(batch, heads, prefix, window, pads, seed), budget, window, pads


def split(scores: torch.Tensor, window: int):
    """Boolean masks ``[b, h, n]``: window (real rows), padding, and real prefix positions."""
    n = scores.shape[-1]
    in_window = torch.zeros(n, dtype=torch.bool)
    in_window[n - window :] = True
    padding = scores == -INF
    return in_window.expand_as(scores) & ~padding, padding, ~in_window.expand_as(scores) & ~padding


def global_top(scores: torch.Tensor, row: int, k: int, window: int) -> set[tuple[int, int]]:
    """The k best (head, token) prefix entries of one row, by plain Python sorting."""
    h, n = scores.shape[1:]
    entries = [
        (float(scores[row, g, i]), g, i) for g in range(h) for i in range(n - window) if scores[row, g, i] > -INF
    ]
    entries.sort(key=lambda e: -e[0])
    return {(g, i) for _, g, i in entries[:k]}


def head_top(scores: torch.Tensor, row: int, head: int, k: int, window: int) -> set[int]:
    n = scores.shape[-1]
    entries = [(float(scores[row, head, i]), i) for i in range(n - window) if scores[row, head, i] > -INF]
    entries.sort(key=lambda e: -e[0])
    return {i for _, i in entries[:k]}


def kept_prefix(keep: torch.Tensor, row: int, window: int) -> set[tuple[int, int]]:
    n = keep.shape[-1]
    return {(g, i) for g, i in torch.nonzero(keep[row, :, : n - window]).tolist()}


def check_window_and_padding(keep: torch.Tensor, scores: torch.Tensor, window: int) -> None:
    in_window, padding, _ = split(scores, window)
    assert bool(keep[in_window].all()), "the window is always kept"
    assert not bool(keep[padding].any()), "padding is never kept"


# -- adaptive heads, alpha = 0 --------------------------------------------------------------------------------------
@FAST
@given(layer_case())
def test_adaptive_alpha_zero_keeps_exactly_the_global_top(case):
    """Paper Algorithm 1: the flattened top H * B_l of the layer, nothing else (a head may end empty)."""
    scores, budget, window, pads = case
    keep = adaptive_heads(scores, budget, window)
    check_window_and_padding(keep, scores, window)
    h, n = scores.shape[1:]
    for row, pad in enumerate(pads):
        b = int(budget[row])
        assert kept_prefix(keep, row, window) == global_top(scores, row, h * b, window)
        per_head = keep[row, :, : n - window].sum(-1)
        assert bool((per_head <= n - window - pad).all()), "never more than n - w prefix tokens per head"


def test_adaptive_alpha_zero_may_leave_a_head_empty():
    window, prefix = 3, 10
    scores = torch.full((1, 2, prefix + window), INF)
    scores[0, 0, :prefix] = 10.0 + torch.arange(prefix, dtype=torch.float32)  # head 0 beats head 1 everywhere
    scores[0, 1, :prefix] = torch.rand(prefix)
    keep = adaptive_heads(scores, torch.tensor([3]), window)
    assert keep[0, 0, :prefix].sum().item() == 6 and keep[0, 1, :prefix].sum().item() == 0
    assert bool(keep[0, :, prefix:].all())


# -- adaptive heads, alpha > 0, budget-exact floor ---------------------------------------------------------------------
def exact_floor_reference(scores: torch.Tensor, row: int, budget: int, alpha: float, window: int) -> set:
    """The budget-exact floor in plain Python: each head's own top floor(alpha * B), then the global top of the rest
    up to H * B in all."""
    h = scores.shape[1]
    f = math.floor(alpha * budget)
    kept = {(g, i) for g in range(h) for i in head_top(scores, row, g, f, window)}
    rest = scores.clone()
    for g, i in kept:
        rest[row, g, i] = -INF
    return kept | global_top(rest, row, h * budget - len(kept), window)


@FAST
@given(layer_case(), st.sampled_from([0.1, 0.2, 0.35, 0.5, 0.9]), st.booleans())
def test_exact_floor_keeps_h_times_b_and_every_head_its_floor(case, alpha, knockout):
    scores, budget, window, pads = case
    if knockout:
        scores = knock_out(scores, window, seed=int(budget.sum()))
    keep = adaptive_heads(scores, budget, window, alpha=alpha)
    check_window_and_padding(keep, scores, window)
    h, n = scores.shape[1:]
    for row in range(len(pads)):
        b = int(budget[row])
        kept = kept_prefix(keep, row, window)
        available = int((scores[row, :, : n - window] > -INF).sum())
        assert len(kept) == min(h * b, available), "exactly H * B_l prefix entries (when the heads have them)"
        assert kept == exact_floor_reference(scores, row, b, alpha, window)
        for g in range(h):
            own = int((scores[row, g, : n - window] > -INF).sum())
            assert sum(1 for head, _ in kept if head == g) >= min(math.floor(alpha * b), own)


@FAST
@given(layer_case(), st.sampled_from([0.0, 0.2, 0.5]), st.data())
def test_exact_floor_kept_sets_are_nested_and_truncation_is_one_shot(case, alpha, data):
    """As B_l shrinks the kept set only loses entries, and allocating from a kept set (its other entries -inf)
    equals allocating from all scores: why a cascade that truncates earlier layers is exact."""
    scores, budget, window, pads = case
    smaller = torch.tensor([data.draw(st.integers(0, int(b))) for b in budget])
    big = adaptive_heads(scores, budget, window, alpha=alpha)
    small = adaptive_heads(scores, smaller, window, alpha=alpha)
    assert not bool((small & ~big).any()), "nested"
    truncated = adaptive_heads(scores.masked_fill(~big, -INF), smaller, window, alpha=alpha)
    assert torch.equal(truncated, small)


# -- adaptive heads, alpha > 0 (Ada-KV floor) ---------------------------------------------------------------------
def knock_out(scores: torch.Tensor, window: int, seed: int) -> torch.Tensor:
    """Set ~30% of the prefix entries to -inf independently per head, as the cascade's candidate scores are."""
    g = torch.Generator().manual_seed(seed)
    drop = torch.rand(scores.shape, generator=g) < 0.3
    drop[..., scores.shape[-1] - window :] = False
    return scores.masked_fill(drop, -INF)


@FAST
@given(layer_case(), st.sampled_from([0.1, 0.2, 0.35, 0.5, 0.9]), st.sampled_from(["lava-reference",
       "adakv-reference"]), st.integers(0, 30), st.booleans())
def test_reference_floor_caps(case, alpha, floor, configured, knockout):
    """The authors' formula: cap_g = round((1 - alpha) * count_g + int(alpha * B_cfg)), B_cfg with the window (LAVa's
    code) or without (Ada-KV's code); head g keeps its own top cap_g."""
    scores, budget, window, pads = case
    if knockout:  # heads with different numbers of candidates: caps are clipped per head, not by head 0
        scores = knock_out(scores, window, seed=int(budget.sum()))
    keep = adaptive_heads(scores, budget, window, alpha=alpha, floor=floor,
                          configured=torch.full_like(budget, configured))
    check_window_and_padding(keep, scores, window)
    h, n = scores.shape[1:]
    b_ref = configured + window if floor == "lava-reference" else configured
    for row in range(len(pads)):
        b = int(budget[row])
        won = global_top(scores, row, h * b, window)
        for g in range(h):
            count = sum(1 for head, _ in won if head == g)
            cap = round((1.0 - alpha) * count + int(alpha * b_ref))
            available = int((scores[row, g, : n - window] > -INF).sum())  # the head's real prefix tokens
            kept = {i for i in range(n - window) if keep[row, g, i]}
            assert len(kept) == min(cap, available)
            assert kept == head_top(scores, row, g, min(cap, available), window), "a head keeps its top entries"


# -- uniform heads ------------------------------------------------------------------------------------------------
@FAST
@given(layer_case())
def test_uniform_heads_keep_their_own_top(case):
    scores, budget, window, pads = case
    budget = budget + torch.tensor([p % 3 for p in pads])  # some rows with budget above their prefix
    keep = uniform_heads(scores, budget, window)
    check_window_and_padding(keep, scores, window)
    h, n = scores.shape[1:]
    for row, pad in enumerate(pads):
        real_prefix = n - window - pad
        b = int(budget[row])
        if b >= real_prefix:
            assert torch.equal(keep[row], scores[row] > -INF), "a budget covering the prefix keeps every real token"
        for g in range(h):
            kept = {i for i in range(n - window) if keep[row, g, i]}
            assert kept == head_top(scores, row, g, b, window)
            assert len(kept) == min(b, real_prefix)


# -- layer allocations --------------------------------------------------------------------------------------------
@FAST
@given(
    layers=st.integers(1, 40),
    means=st.lists(st.integers(0, 600), min_size=1, max_size=3),
    beta=st.one_of(st.just(20.0), st.floats(1.0, 60.0)),
)
def test_pyramid_exact_schedule(layers, means, beta):
    mean = torch.tensor(means)
    budgets = PyramidLayers(beta=beta, schedule="exact").budgets(layers, mean)
    assert budgets.shape == (layers, len(means)) and budgets.dtype == torch.long
    assert torch.equal(budgets.sum(0), mean * layers), "mean over layers is exactly B - w"
    assert bool((budgets[1:] <= budgets[:-1]).all()), "non-increasing from bottom to top"
    assert bool((budgets >= 0).all())
    if layers == 1:
        assert torch.equal(budgets[0], mean)
    else:
        top = mean.double() / beta
        assert bool(((budgets[-1].double() - top).abs() < 1.0).all()), "top layer is (B - w) / beta"
        assert bool(((budgets[0].double() - (2 * mean.double() - top)).abs() < 1.0).all())


def test_pyramid_exact_examples():
    exact = PyramidLayers(schedule="exact")
    assert exact.budgets(1, torch.tensor([32])).tolist() == [[32]]
    b = PyramidLayers(beta=20, schedule="exact").budgets(32, torch.tensor([120]))[:, 0]
    assert int(b.sum()) == 32 * 120 and int(b[-1]) == 6 and int(b[0]) == 234
    assert torch.equal(UniformLayers().budgets(3, torch.tensor([5, 7])), torch.tensor([[5, 7]] * 3))
    assert torch.equal(UniformLayers().budgets(3, torch.tensor([5]), real_tokens=torch.tensor([9]), window=2),
                       torch.tensor([[5]] * 3))
    with pytest.raises(ValueError, match="beta"):
        PyramidLayers(beta=0.5)
    with pytest.raises(ValueError, match=r"schedule must be one of \('reference', 'exact'\)"):
        PyramidLayers(schedule="linear")


def pyramid_reference_row(layers: int, budget: int, window: int, beta: float, q_len: int | None) -> list[int]:
    """KVCache-Factory's ``PyramidKVCluster.update_kv`` capacity for every layer, transcribed in plain Python
    (``max_capacity_prompt`` = budget; the layer's prefix capacity, window excluded; None = no prompt rules)."""
    min_num = (budget - window) // beta
    max_num = (budget - window) * 2 - min_num
    if q_len is not None and max_num >= q_len - window:
        max_num = q_len - window
        min_num = (budget - window) * 2 - max_num
    steps = (max_num - min_num) // (layers - 1)
    caps = []
    for layer_idx in range(layers):
        capacity = max_num - layer_idx * steps
        if q_len is not None and q_len < budget:
            capacity = budget - window  # no compression: the layer keeps its whole prompt (<= B - w)
        elif q_len is not None and q_len < (budget - window) * 2:
            capacity = budget - window
        caps.append(int(capacity))
    return caps


def test_pyramid_reference_worked_examples():
    """B = 128, w = 32, beta = 20, L = 32: min = 96 // 20 = 4, max = 192 - 4 = 188, steps = 184 // 31 = 5."""
    pyramid = PyramidLayers()  # the default schedule is KVCache-Factory's
    assert pyramid.schedule == "reference"
    mean = torch.full((5,), 96)
    real = torch.tensor([4096, 200, 220, 180, 100])
    b = pyramid.budgets(32, mean, real_tokens=real, window=32)
    assert b.shape == (32, 5) and b.dtype == torch.long
    # q_len 4096: no clamp; 188, 183, ..., 33; the total is not redistributed (3536, not 32 * 96 = 3072)
    assert b[:, 0].tolist() == [188 - 5 * layer for layer in range(32)]
    assert int(b[:, 0].sum()) == 3536
    # q_len 200: max = 188 >= 200 - 32 = 168 is clamped: max = 168, min = 192 - 168 = 24, steps = 144 // 31 = 4
    assert b[:, 1].tolist() == [168 - 4 * layer for layer in range(32)]
    assert int(b[:, 1].sum()) == 3392 and int(b[-1, 1]) == 44
    # q_len 220: 188 = 220 - 32, the clamp leaves max = 188 and min = 4
    assert b[:, 2].tolist() == b[:, 0].tolist()
    # q_len 180 < 2 (B - w) = 192: every layer gets B - w; q_len 100 < B: no compression (B - w covers it)
    assert b[:, 3].tolist() == [96] * 32 and b[:, 4].tolist() == [96] * 32
    # without prompt lengths: the schedule of an unbounded prompt
    assert torch.equal(pyramid.budgets(32, mean), b[:, :1].expand(-1, 5))
    for column, q_len in enumerate(real.tolist()):
        assert b[:, column].tolist() == pyramid_reference_row(32, 128, 32, 20, q_len)
    assert pyramid.budgets(1, torch.tensor([96]), real_tokens=torch.tensor([200]), window=32).tolist() == [[96]]
    with pytest.raises(ValueError, match="window"):
        pyramid.budgets(32, mean, real_tokens=real)


@FAST
@given(
    layers=st.integers(2, 40),
    rows=st.lists(st.tuples(st.integers(1, 300), st.integers(0, 2000)), min_size=1, max_size=3),
    window=st.integers(1, 40),
    beta=st.one_of(st.just(20), st.integers(1, 60), st.floats(1.0, 60.0)),
)
def test_pyramid_reference_schedule_matches_kvcache_factory(layers, rows, window, beta):
    """Against the plain-Python transcription, for rows the runtime compresses (w < n, w <= B <= n)."""
    budgets = [window + extra for extra, _ in rows]
    real = [b + more for b, (_, more) in zip(budgets, rows, strict=True)]
    mean = torch.tensor([b - window for b in budgets])
    got = PyramidLayers(beta=beta).budgets(layers, mean, real_tokens=torch.tensor(real), window=window)
    assert got.shape == (layers, len(rows)) and got.dtype == torch.long
    for column, (b, n) in enumerate(zip(budgets, real, strict=True)):
        expected = pyramid_reference_row(layers, b, window, beta, n)
        assert got[:, column].tolist() == expected
        assert bool((got[1:, column] <= got[:-1, column]).all()), "non-increasing from bottom to top"
        assert int(got[:, column].sum()) >= layers * (b - window), "flooring steps never loses budget"
        if n >= 2 * (b - window):
            assert int(got[0, column]) <= n - window, "the first layer never exceeds the prompt's prefix"


@FAST
@given(
    stats=st.lists(st.floats(1e-4, 1e3), min_size=1, max_size=40),
    total=st.integers(0, 200_000),
)
def test_cascade_budgets_only_shrink_and_sum_to_total(stats, total):
    layers = len(stats)
    s = torch.tensor(stats, dtype=torch.float32)[:, None]
    t = torch.tensor([total])
    previous = None
    for seen in range(1, layers + 1):
        budgets = proportional_budgets(s[:seen], t)[:, 0]
        assert bool((budgets >= 0).all())
        if previous is not None:
            assert bool((budgets[:-1] <= previous).all()), "a layer's budget never grows as later layers arrive"
        previous = budgets
    assert total - layers < int(previous.sum()) <= total, "floor rounding: within L of T"
    exact = [math.floor(x / sum(stats) * total) for x in s[:, 0].double().tolist()]
    assert all(abs(a - b) <= 1 for a, b in zip(previous.tolist(), exact, strict=True))


def test_cascade_budgets_zero_statistics_split_evenly():
    budgets = proportional_budgets(torch.zeros(4, 2), torch.tensor([100, 7]))
    assert budgets.tolist() == [[25, 1]] * 4
    mixed = proportional_budgets(torch.tensor([[0.0, 1.0], [0.0, 3.0]]), torch.tensor([10, 10]))
    assert mixed.tolist() == [[5, 2], [5, 7]]
    stats, total = torch.tensor([[1.0, 2.0], [3.0, 0.5], [0.7, 0.7]]), torch.tensor([101, 37])
    assert torch.equal(EntropyCascade().budgets(stats, total), proportional_budgets(stats, total))
    assert torch.equal(CakeCascade(rounding="floor").budgets(stats, total), proportional_budgets(stats, total))


def adjust_budgets_reference(budget_list: list[float], total: int, seq_len: float) -> list[int]:
    """CAKE's ``adjust_budgets`` (cake/utils.py) transcribed in plain Python, then CAKE's min(budget, seq_len)."""
    budgets = [int(x) for x in budget_list]
    excess = sum(max(b - seq_len, 0) for b in budgets)
    budgets = [min(b, seq_len) for b in budgets]
    if excess > 0:
        valid = [i for i, b in enumerate(budgets) if b < seq_len]
        if valid:
            for i in valid:
                budgets[i] += excess // len(valid)
            for i in valid[: int(excess % len(valid))]:
                budgets[i] += 1
    diff = total - sum(budgets)
    if diff != 0:
        valid = [i for i, b in enumerate(budgets) if (b < seq_len if diff > 0 else b > 1)]
        if valid:
            for i in valid:
                budgets[i] += (1 if diff > 0 else -1) * (abs(diff) // len(valid))
            for i in valid[: abs(diff) % len(valid)]:
                budgets[i] += 1 if diff > 0 else -1
    return [int(min(b, seq_len)) for b in budgets]


def test_cake_budgets_worked_examples():
    # floors 15, 30, 46, 7 (sum 98): the 2 missing entries go to the first two layers
    assert cake_budgets(torch.tensor([[1.0], [2.0], [3.0], [0.5]]), torch.tensor([100])).T.tolist() == [[16, 31, 46, 7]]
    # T = 300, n - w = 150: shares 250, 25, 25 -> layer 0 is cut to 150 and its excess of 100 goes 50 / 50
    three = torch.tensor([[10.0], [1.0], [1.0]])
    assert cake_budgets(three, torch.tensor([300]), [150]).T.tolist() == [[150, 75, 75]]
    assert cake_budgets(three, torch.tensor([300])).T.tolist() == [[250, 25, 25]], "without n - w: no cap"
    # every layer at the cap: nothing to spread, the total stays short
    assert cake_budgets(three, torch.tensor([300]), [90]).T.tolist() == [[90, 90, 90]]
    assert CakeCascade().budgets(three, torch.tensor([300]), real_tokens=torch.tensor([158]), window=8).T.tolist() == [
        [150, 75, 75]]


@FAST
@given(
    stats=st.lists(st.floats(1e-4, 1e3), min_size=1, max_size=40),
    total=st.integers(0, 20_000),
    prefix=st.one_of(st.none(), st.integers(0, 3000)),
)
def test_cake_budgets_match_adjust_budgets_and_sum_exactly(stats, total, prefix):
    layers = len(stats)
    s = torch.tensor(stats, dtype=torch.float32)[:, None]
    got = cake_budgets(s, torch.tensor([total]), None if prefix is None else [prefix])[:, 0]
    assert got.dtype == torch.long and got.shape == (layers,)
    shares = proportional_budgets(s, torch.tensor([total]))[:, 0].tolist()  # the floors CAKE truncates to
    cap = math.inf if prefix is None else prefix
    assert got.tolist() == adjust_budgets_reference(shares, total, cap)
    assert bool((got >= 0).all()) and bool((got <= cap).all())
    if prefix is None or layers * prefix >= total:
        assert int(got.sum()) == total, "CAKE's redistribution makes the total exact"
    else:
        assert got.tolist() == [prefix] * layers, "a prompt too short for T: every layer keeps its whole prefix"


def test_cake_cascade_validates_options():
    for field, bad in (("preference", "paper"), ("rounding", "largest-remainder")):
        with pytest.raises(ValueError, match=f"cake {field} must be one of"):
            CakeCascade(**{field: bad})
    for field in ("tau1_inv", "tau2_inv"):
        for bad in (math.inf, math.nan, -1.0):
            with pytest.raises(ValueError, match=f"cake {field} .* must be a finite number >= 0"):
                CakeCascade(**{field: bad})
    for bad in (math.inf, math.nan, -1.0):  # gamma nan / inf used to leave every head only its window
        with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
            lavakv.method("cake", budget=16, window=8, gamma=bad)


@pytest.mark.parametrize(("tau1_inv", "tau2_inv"), [(0.5, 80.0), (40.0, 0.5)])
def test_cake_preference_out_of_float32_range_is_refused(tau1_inv, tau2_inv):
    """H ** 40 overflows and V ** 80 (V < 1) rounds to 0 in float32: an even split (or inf) would follow silently."""
    attention = torch.softmax(torch.randn(1, 4, 6, 50, generator=torch.Generator().manual_seed(0)), dim=-1)
    valid = torch.ones(1, 50, dtype=torch.bool)
    valid[:, -6:] = False
    with pytest.raises(ValueError, match="out of float32's range"):
        cake_preference(attention, valid, tau1_inv=tau1_inv, tau2_inv=tau2_inv)
    assert torch.isfinite(cake_preference(attention, valid, tau1_inv=0.5, tau2_inv=0.5)).all()


# -- the cascade through the real coordinator ----------------------------------------------------------------------
def _record_scorer(monkeypatch, name: str) -> list[tuple]:
    """Wrap ``runtime.SCORERS[name]`` so every call's (inputs, scores) is recorded, in call (= layer) order."""
    calls: list[tuple] = []
    inner = runtime.SCORERS[name]

    def wrapper(inputs, **kwargs):
        scores = inner(inputs, **kwargs)
        calls.append((inputs, scores.clone(), inputs.keys.clone()))
        return scores

    monkeypatch.setitem(runtime.SCORERS, name, wrapper)
    return calls


def _statistic(allocation, inputs, scores):
    valid_prefix = inputs.valid & ~inputs.window_mask()[None, :]
    source = scores if allocation.reads == "scores" else inputs.window_attention()
    return allocation.statistic(source, valid_prefix, inputs.window)


@pytest.mark.parametrize("preset,kwargs", [
    ("lava", {"alpha": 0.0}), ("cake", {}), ("lava-uniform-head", {}), ("lava-pyramid", {}),
    ("lava", {"alpha": 0.2}), ("lava", {"alpha": 0.5}), ("cake", {"heads": "adaptive", "alpha": 0.2}),
])
def test_cascade_equals_one_shot_allocation_with_final_budgets(monkeypatch, preset, kwargs):
    """After the cascade each layer holds exactly what a one-shot allocation with its final budget keeps."""
    window, budget = 8, 30
    m = lavakv.method(preset, budget=budget, window=window, **kwargs)
    calls = _record_scorer(monkeypatch, m.scorer)
    model = tiny_model("llama", layers=4, heads=4, kv_heads=2, head_dim=16)
    ids, mask = prompt(batch=2, length=100, pad=(0, 13))
    _assert_cascade_is_one_shot(m, model, ids, mask, calls)


def _assert_cascade_is_one_shot(m, model, ids, mask, calls: list) -> None:
    """Prefill ``ids`` with method ``m`` (its scorer recorded into ``calls``), then check the statistics and final
    budgets against a recomputation and every layer's kept set against a one-shot allocation at its final budget;
    with adaptive heads, also that a compressed layer keeps exactly ``kv_heads * (B_l + w)`` entries per row."""
    window = m.window
    real = mask.sum(-1)
    row_budget, active = m.resolve().row_budgets(real)  # B per row (at most its prompt) and the rows that evict
    with m.attach(model) as session:
        cache = session.cache()
        with torch.no_grad():
            model(ids, attention_mask=mask, past_key_values=cache)
        stats = session.stats()
    layers = cache.compressible_layers()
    if not calls:  # short prompts: nothing to compress
        assert not bool(active.any()), "a prompt longer than the budget was not scored"
        return
    assert len(calls) == len(layers) and stats.layer_budgets is not None
    allocation = m.layer_allocation()
    mean = row_budget - window
    if allocation.cascade:
        recomputed = torch.stack([_statistic(allocation, inputs, scores) for inputs, scores, _ in calls])
        torch.testing.assert_close(torch.stack(stats.layer_statistics), recomputed)
        final = allocation.budgets(recomputed, mean * len(layers), real_tokens=real, window=window)
    else:  # static allocation (pyramid): the same check, with budgets known before prefill
        assert stats.layer_statistics is None
        final = allocation.budgets(len(layers), mean, real_tokens=real, window=window)
    assert torch.equal(torch.stack(stats.layer_budgets), final)
    configured = row_budget - window
    for idx, (layer_idx, (_, scores, keys)) in enumerate(zip(layers, calls, strict=True)):
        b_l = stats.layer_budgets[idx]
        keep = m.allocate_heads(scores, b_l, configured)
        keep_all = (b_l >= real - window) | ~active
        keep = torch.where(keep_all[:, None, None], scores > -INF, keep)
        assert torch.equal(stats.kept_tokens[idx], keep.sum(-1)), f"layer {layer_idx}: kept counts per head"
        if m.heads == "adaptive":
            heads = keep.shape[1]
            exact = torch.where(keep_all, heads * real, heads * (b_l + window))
            assert torch.equal(stats.kept_tokens[idx].sum(-1), exact), f"layer {layer_idx}: H * (B_l + w) per row"
        layer = cache.layers[layer_idx]
        if bool(keep_all.all()):  # a short prompt for this budget: the layer keeps everything
            continue
        assert layer.compressed
        stored_keys, _ = layer.prompt_entries()
        assert torch.equal(stored_keys, keys[keep]), f"layer {layer_idx}: the kept set differs from one-shot"


CASCADES = [("lava", {}), ("lava-ea", {}), ("cake", {"heads": "adaptive", "rounding": "floor"})]


@given(alpha=st.sampled_from([0.0, 0.2, 0.5]), seed=st.integers(0, 10**6), length=st.integers(24, 110),
       pad=st.integers(0, 20), extra=st.integers(1, 40), cascade=st.sampled_from(CASCADES))
@settings(max_examples=30, deadline=None)
def test_cascade_equals_one_shot_for_any_prompt_and_budget(alpha, seed, length, pad, extra, cascade):
    """Property: for alpha in {0, 0.2, 0.5}, any seed, prompt length, left padding (a row may be shorter than the
    budget) and budget, the cascade through the real coordinator (LAVa's entropy cascade under two scorers, CAKE's
    with floored shares) keeps exactly the one-shot selection at the final budgets, H * (B_l + w) per layer."""
    window = 6
    budget = window + extra
    preset, options = cascade
    m = lavakv.method(preset, budget=budget, window=window, alpha=alpha, **options)
    calls: list[tuple] = []
    inner = runtime.SCORERS[m.scorer]

    def recording(inputs, **kwargs):
        scores = inner(inputs, **kwargs)
        calls.append((inputs, scores.clone(), inputs.keys.clone()))
        return scores

    model = tiny_model("llama", layers=4, heads=4, kv_heads=2, head_dim=16, seed=seed % 7)
    ids, mask = prompt(batch=2, length=length, pad=(0, min(pad, length - window - 1)), seed=seed)
    runtime.SCORERS[m.scorer] = recording
    try:
        _assert_cascade_is_one_shot(m, model, ids, mask, calls)
    finally:
        runtime.SCORERS[m.scorer] = inner


def test_lava_statistics_are_normalised_entropies_and_budgets_sum_to_total():
    window, budget = 8, 24
    model = tiny_model("qwen3", layers=4, heads=4, kv_heads=2, head_dim=16)
    ids, mask = prompt(batch=2, length=96, pad=(0, 20))
    with lavakv.method("lava", budget=budget, window=window).attach(model) as session:
        with torch.no_grad():
            model(ids, attention_mask=mask, past_key_values=session.cache())
        stats = session.stats()
    entropies = torch.stack(stats.layer_statistics)  # [L, b]
    assert bool(((entropies >= 0) & (entropies <= 1)).all())
    assert bool((entropies > 0).all()), "random attention is spread out"
    layers = len(stats.layers)
    total = layers * (budget - window)
    sums = torch.stack(stats.layer_budgets).sum(0)
    assert bool(((sums <= total) & (sums > total - layers)).all())


@pytest.mark.parametrize("rounding", ["reference", "floor"])
def test_cake_budgets_through_the_runtime_sum_exactly_to_the_total(rounding):
    """CAKE's rounding (default) hands out exactly T = L (B - w) per sequence; plain flooring loses < L."""
    window, budget = 8, 24
    model = tiny_model("llama", layers=5, heads=4, kv_heads=2, head_dim=16)
    ids, mask = prompt(batch=2, length=96, pad=(0, 20))
    with lavakv.method("cake", budget=budget, window=window, rounding=rounding).attach(model) as session:
        with torch.no_grad():
            model(ids, attention_mask=mask, past_key_values=session.cache())
        stats = session.stats()
    layers = len(stats.layers)
    total = layers * (budget - window)
    sums = torch.stack(stats.layer_budgets).sum(0)
    if rounding == "reference":
        assert sums.tolist() == [total, total]
    else:
        assert bool(((sums <= total) & (sums > total - layers)).all())


def test_cascade_with_floor_truncates_like_one_shot(monkeypatch):
    """Adaptive heads with an Ada-KV floor (alpha > 0) under a cascade: controlled scores and statistics.

    Layer 0 is compressed with B_0 = 80, then truncated to B_0 = 75 when layer 1 arrives. Head 0 dominates every
    token. Under the authors' cap formula its floored cap at B_0 = 80 is smaller than its global win at B_0 = 75, so
    truncating could not reproduce a one-shot allocation; the budget-exact floor keeps nested sets, so it does.
    """
    window = 8
    stats_by_layer = iter([torch.tensor([1.0]), torch.tensor([0.0625])])
    monkeypatch.setattr(EntropyCascade, "statistic", lambda self, source, valid_prefix, window: next(stats_by_layer))
    calls = []

    def designed(inputs, **kwargs):
        g = torch.Generator().manual_seed(len(calls))
        raw = torch.rand(inputs.batch, inputs.kv_heads, inputs.tokens, generator=g)
        raw[:, 0] += 2.0  # head 0 beats head 1 on every token
        scores = inputs.finalize(raw)
        calls.append((scores.clone(), inputs.keys.clone()))
        return scores

    m = lavakv.method("lava", budget=48, window=window, alpha=0.2)  # built first: building probes the scorer
    monkeypatch.setitem(runtime.SCORERS, "lava", designed)
    model = tiny_model("llama", layers=2, heads=4, kv_heads=2, head_dim=16)
    ids, mask = prompt(batch=1, length=100)
    with m.attach(model) as session:
        cache = session.cache()
        with torch.no_grad():
            model(ids, attention_mask=mask, past_key_values=cache)
        stats = session.stats()
    assert stats.layer_budgets[0].tolist() == [75]
    scores, keys = calls[0]
    keep = m.allocate_heads(scores, stats.layer_budgets[0], torch.tensor([40]))
    assert torch.equal(stats.kept_tokens[0], keep.sum(-1))
    assert torch.equal(cache.layers[0].prompt_entries()[0], keys[keep])


def test_head_allocation_registry():
    assert HEAD_ALLOCATIONS == {"uniform": UniformHeads, "adaptive": AdaptiveHeads}
    scores = make_scores(1, 2, 10, 2, [0], seed=0)
    everything = adaptive_heads(scores, torch.tensor([10]), 2)
    assert bool(everything.all()), "a budget equal to the prefix keeps everything"



@pytest.mark.parametrize("seed,layers,budget,length", [(2, 10, 8, 40), (0, 6, 20, 90), (1, 8, 12, 60)])
def test_cake_cascade_reports_the_budgets_it_holds(seed, layers, budget, length):
    """CAKE's budget adjustment can raise a layer's budget after the layer was truncated; a cascade cannot re-admit
    evicted entries, so the recorded budget is the one held: kept == kv_heads * B_l in every compressed layer."""
    window = 4
    model = tiny_model("llama", layers=layers, heads=4, kv_heads=2, head_dim=16, seed=seed)
    ids, mask = prompt(batch=1, length=length, seed=seed + 1)  # (2, 10, 8, 40): a budget that rises after a cut
    with lavakv.method("cake", budget=budget, window=window).attach(model) as session:
        cache = session.cache()
        with torch.no_grad():
            model(ids, attention_mask=mask, past_key_values=cache)
        stats = session.stats(cache)
    for kept, budget in zip(stats.kept_tokens, stats.layer_budgets, strict=True):
        assert torch.equal(kept.sum(-1), 2 * (budget + window))
