"""Scorers and the layer statistics (docs/methods.md): shared checks for every scorer plus float64 references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lavakv.allocation.statistics import cake_preference, normalized_entropy
from lavakv.scorers import SCORERS, ScoringInputs, get_scorer
from lavakv.scorers.cake import cake_scores
from lavakv.scorers.h2o import h2o_scores
from lavakv.scorers.lava import lava_scores
from lavakv.scorers.random import random_scores
from lavakv.scorers.snapkv import snapkv_scores
from lavakv.scorers.streaming import streaming_scores
from lavakv.scorers.tova import tova_scores

# (name, hyper-parameters): every scorer, and the non-default options that change the code path.
CONFIGS = [
    ("snapkv", {}),
    ("snapkv", {"pooling": "avg", "gqa": "max"}),
    ("snapkv", {"kernel_size": 1}),
    ("snapkv", {"gqa_order": "after-pool"}),
    ("lava", {}),
    ("lava", {"pooling": "avg", "value_norm_range": "prefix"}),
    ("h2o", {"query_block": 5}),
    ("tova", {}),
    ("tova", {"head_scope": "group"}),
    ("streaming", {}),
    ("knorm", {}),
    ("random", {"seed": 3}),
    ("cake", {}),
    ("cake", {"pooling": "avg", "gqa": "max", "gamma": 3.0}),
    ("cake", {"pooling": "max", "kernel_size": 7, "gqa_order": "before-pool", "variance": "population"}),
]
PADDING_INVARIANT = CONFIGS  # random too: a real entry's draw depends on its rank among the real ones
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" if kw else name for name, kw in CONFIGS]
PAD_IDS = IDS
FAST = settings(max_examples=20, deadline=None, derandomize=True)
TOL = {"rtol": 1e-5, "atol": 1e-6}


def make_inputs(
    *,
    batch: int = 2,
    kv_heads: int = 2,
    group: int = 2,
    tokens: int = 20,
    head_dim: int = 8,
    window: int = 4,
    pads: tuple[int, ...] | None = None,
    seed: int = 0,
) -> ScoringInputs:
    """Random post-RoPE q/k/v; row r is left-padded with ``pads[r]`` positions (garbage values, valid=False)."""
    torch.manual_seed(seed)
    hq = kv_heads * group
    queries = 2.0 * torch.randn(batch, hq, tokens, head_dim)  # x2: peakier attention than N(0, 1)
    keys = 2.0 * torch.randn(batch, kv_heads, tokens, head_dim)
    values = torch.randn(batch, kv_heads, tokens, head_dim)
    valid = torch.ones(batch, tokens, dtype=torch.bool)
    for row, pad in enumerate(pads or ()):
        valid[row, :pad] = False
        queries[row, :, :pad] *= 10.0  # large garbage on padding: any leak shows
        keys[row, :, :pad] *= 10.0
        values[row, :, :pad] *= 10.0
    return ScoringInputs(queries, keys, values, valid, scaling=head_dim**-0.5, window=window)


def row_unpadded(inputs: ScoringInputs, row: int, pad: int) -> ScoringInputs:
    """Row ``row`` alone with its ``pad`` padding positions cut off."""
    return ScoringInputs(
        inputs.queries[row : row + 1, :, pad:].clone(),
        inputs.keys[row : row + 1, :, pad:].clone(),
        inputs.values[row : row + 1, :, pad:].clone(),
        torch.ones(1, inputs.tokens - pad, dtype=torch.bool),
        scaling=inputs.scaling,
        window=inputs.window,
    )


# ---- float64 references, written from the formulas (dense n x n attention: fine for tiny n) ----


def dense_attention64(inputs: ScoringInputs) -> torch.Tensor:
    """A[b, h, j, i] in float64 for every query j: causal, padding keys and padding queries give 0."""
    g = inputs.group_size
    q = inputs.queries.double()
    k = inputs.keys.double().repeat_interleave(g, dim=1)  # query head h -> KV head h // G
    logits = torch.einsum("bhjd,bhid->bhji", q, k) * inputs.scaling
    n = inputs.tokens
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    allowed = causal[None, None] & inputs.valid[:, None, None, :] & inputs.valid[:, None, :, None]
    probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.nan_to_num(probs, nan=0.0)


def pool64(a: torch.Tensor, valid: torch.Tensor, window: int, kernel: int, mode: str) -> torch.Tensor:
    """Explicit-loop pooling of ``a`` [b, h, n] over the valid prefix columns; border and padding count as absent
    for max and as 0 for avg (divide by the kernel size)."""
    b, h, n = a.shape
    prefix, r = n - window, kernel // 2
    out = a.clone()
    for bi in range(b):
        for hi in range(h):
            for i in range(prefix):
                near = [a[bi, hi, j].item() for j in range(i - r, i + r + 1) if 0 <= j < prefix and valid[bi, j]]
                if valid[bi, i]:
                    out[bi, hi, i] = max(near) if mode == "max" else sum(near) / kernel
    return out


def group64(a: torch.Tensor, kv_heads: int, how: str) -> torch.Tensor:
    """[b, hq, n] -> [b, kv_heads, n], reducing query heads kv*G .. kv*G + G - 1 by an explicit loop."""
    g = a.shape[1] // kv_heads
    parts = [a[:, kv * g : (kv + 1) * g] for kv in range(kv_heads)]
    return torch.stack([p.mean(dim=1) if how == "mean" else p.amax(dim=1) for p in parts], dim=1)


def finalize64(scores: torch.Tensor, inputs: ScoringInputs) -> torch.Tensor:
    out = scores.clone()
    out[..., inputs.tokens - inputs.window :] = float("inf")
    return out.masked_fill(~inputs.valid[:, None, :], float("-inf"))


def window_mean64(inputs: ScoringInputs) -> torch.Tensor:
    return dense_attention64(inputs)[:, :, -inputs.window :, :].mean(dim=2)  # [b, hq, n]


def value_max64(inputs: ScoringInputs, value_norm_range: str) -> torch.Tensor:
    """max_k ||V[b, g, k]||_1 over counted tokens, by explicit loop: [b, kv_heads]."""
    b, h_kv, n, _ = inputs.values.shape
    out = torch.zeros(b, h_kv, dtype=torch.float64)
    for bi in range(b):
        for g in range(h_kv):
            counted = [
                k for k in range(n) if inputs.valid[bi, k] and (value_norm_range == "all" or k < n - inputs.window)
            ]
            out[bi, g] = max(inputs.values[bi, g, k].double().abs().sum().item() for k in counted)
    return out


# ---- shared matrix: every scorer ----


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=IDS)
@FAST
@given(
    group=st.integers(1, 8),
    kv_heads=st.integers(1, 3),
    tokens=st.integers(6, 24),
    window=st.integers(1, 5),
    pads=st.lists(st.integers(0, 10), min_size=1, max_size=3),
)
def test_scores_shape_dtype_window_inf_padding_neg_inf(name, kwargs, group, kv_heads, tokens, window, pads):
    pads = tuple(min(p, tokens - 1) for p in pads)
    inputs = make_inputs(batch=len(pads), kv_heads=kv_heads, group=group, tokens=tokens, window=window, pads=pads)
    scores = get_scorer(name)(inputs, **kwargs)
    assert scores.shape == (len(pads), kv_heads, tokens)
    assert scores.dtype == torch.float32
    in_window = torch.zeros(tokens, dtype=torch.bool)
    in_window[tokens - window :] = True
    valid = inputs.valid[:, None, :].expand_as(scores)
    kept = valid & in_window
    assert torch.all(scores[kept] == float("inf"))
    assert torch.all(scores[~valid] == float("-inf"))
    assert torch.all(torch.isfinite(scores[valid & ~in_window]))


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=IDS)
def test_scores_are_deterministic(name, kwargs):
    inputs = make_inputs(pads=(3, 0))
    first = get_scorer(name)(inputs, **kwargs)
    again = get_scorer(name)(inputs, **kwargs)
    fresh = get_scorer(name)(make_inputs(pads=(3, 0)), **kwargs)
    assert torch.equal(first, again)
    assert torch.equal(first, fresh)


@pytest.mark.parametrize(("name", "kwargs"), PADDING_INVARIANT, ids=PAD_IDS)
@FAST
@given(group=st.integers(1, 8), pads=st.lists(st.integers(0, 9), min_size=2, max_size=3), window=st.integers(1, 5))
def test_left_padding_never_leaks_into_real_tokens(name, kwargs, group, pads, window):
    tokens = 20  # every row keeps >= 11 real tokens > window
    inputs = make_inputs(batch=len(pads), group=group, tokens=tokens, window=window, pads=tuple(pads), seed=1)
    scores = get_scorer(name)(inputs, **kwargs)
    for row, pad in enumerate(pads):
        alone = get_scorer(name)(row_unpadded(inputs, row, pad), **kwargs)
        torch.testing.assert_close(scores[row, :, pad:], alone[0], rtol=1e-5, atol=1e-5)


def test_registry_names_and_unknown_name_lists_valid_ones():
    assert set(SCORERS) == {"snapkv", "lava", "h2o", "tova", "streaming", "knorm", "random", "cake",
                            "expected-attention", "kvzip"}
    with pytest.raises(ValueError, match="valid names: cake, expected-attention, h2o, knorm, kvzip"):
        get_scorer("snap")


@pytest.mark.parametrize("kernel_size", [0, 2, 4, -1, 7.0, True])
@pytest.mark.parametrize("scorer", [snapkv_scores, lava_scores, cake_scores])
def test_bad_kernel_size_is_rejected(scorer, kernel_size):
    with pytest.raises(ValueError, match="kernel_size must be an odd integer"):
        scorer(make_inputs(), kernel_size=kernel_size)


def test_bad_options_are_rejected():
    inputs = make_inputs()
    with pytest.raises(ValueError, match="pooling must be one of"):
        snapkv_scores(inputs, pooling="mean")
    with pytest.raises(ValueError, match="gqa must be one of"):
        cake_scores(inputs, gqa="sum")
    for scorer in (snapkv_scores, cake_scores):
        with pytest.raises(ValueError, match=r"gqa_order must be one of \('before-pool', 'after-pool'\)"):
            scorer(inputs, gqa_order="before")
    with pytest.raises(ValueError, match=r"variance must be one of \('sample', 'population'\)"):
        cake_scores(inputs, variance="unbiased")
    with pytest.raises(ValueError, match=r"head_scope must be one of \('layer', 'group'\)"):
        tova_scores(inputs, head_scope="kv")
    with pytest.raises(ValueError, match="value_norm_range must be one of"):
        lava_scores(inputs, value_norm_range="window")
    with pytest.raises(ValueError, match="query_block"):
        h2o_scores(inputs, query_block=0)
    with pytest.raises(ValueError, match="n_sink"):
        streaming_scores(inputs, n_sink=-1)


def test_window_queries_are_the_last_window_positions():
    inputs = make_inputs(tokens=10, window=3)
    assert torch.equal(inputs.window_queries(), inputs.queries[:, :, 7:])
    empty = make_inputs(tokens=10, window=0)
    assert empty.window_queries().shape[2] == 0


# ---- float64 references ----


@pytest.mark.parametrize("gqa_order", ["before-pool", "after-pool"])
@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("gqa", ["mean", "max"])
@pytest.mark.parametrize("kernel_size", [1, 3, 7])
def test_snapkv_matches_float64_reference(pooling, gqa, kernel_size, gqa_order):
    """before-pool (Ada-KV / LAVa / KVCache-Factory GQA code): pool(reduce(mean_j A)); after-pool (kvpress):
    reduce(pool(mean_j A))."""
    inputs = make_inputs(batch=2, kv_heads=2, group=3, tokens=18, window=4, pads=(5, 0), seed=2)
    mean, valid, w = window_mean64(inputs), inputs.valid, inputs.window
    if gqa_order == "before-pool":
        expected = pool64(group64(mean, inputs.kv_heads, gqa), valid, w, kernel_size, pooling)
    else:
        expected = group64(pool64(mean, valid, w, kernel_size, pooling), inputs.kv_heads, gqa)
    got = snapkv_scores(inputs, kernel_size=kernel_size, pooling=pooling, gqa=gqa, gqa_order=gqa_order)
    torch.testing.assert_close(got.double(), finalize64(expected, inputs), **TOL)


def test_snapkv_default_reduces_the_group_before_pooling():
    """The default is the authors' GQA order; it differs from kvpress's exactly when max pooling meets the mean."""
    inputs = make_inputs(batch=2, kv_heads=2, group=4, tokens=20, window=4, pads=(3, 0), seed=14)
    assert torch.equal(snapkv_scores(inputs), snapkv_scores(inputs, gqa_order="before-pool"))
    before, after = snapkv_scores(inputs, gqa_order="before-pool"), snapkv_scores(inputs, gqa_order="after-pool")
    finite = torch.isfinite(before)
    assert not torch.allclose(before[finite], after[finite])
    assert bool((after[finite] >= before[finite] - 1e-7).all()), "mean of maxima >= maximum of the mean"
    for kw in ({"pooling": "avg", "gqa": "mean"}, {"pooling": "max", "gqa": "max"}, {"kernel_size": 1}):
        torch.testing.assert_close(snapkv_scores(inputs, gqa_order="before-pool", **kw),
                                   snapkv_scores(inputs, gqa_order="after-pool", **kw), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("value_norm_range", ["all", "prefix"])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_lava_matches_float64_reference_of_eq5(value_norm_range, group):
    inputs = make_inputs(batch=2, kv_heads=2, group=group, tokens=16, window=4, pads=(0, 4), seed=3)
    n, w, r = inputs.tokens, inputs.window, 3
    attention = dense_attention64(inputs)
    vmax = value_max64(inputs, value_norm_range)
    expected = torch.empty(2, 2, n, dtype=torch.float64)
    for b in range(2):
        for g in range(2):
            for i in range(n):
                best = 0.0  # s[g, i] = vmax * max over the group's heads of maxpool7(mean_j A[j, i])
                for h in range(g * group, (g + 1) * group):
                    for t in range(max(0, i - r), min(n - w, i + r + 1)):
                        if inputs.valid[b, t]:
                            best = max(best, sum(attention[b, h, j, t].item() for j in range(n - w, n)) / w)
                expected[b, g, i] = vmax[b, g] * best
    expected = finalize64(expected, inputs)
    got = lava_scores(inputs, value_norm_range=value_norm_range)
    torch.testing.assert_close(got.double(), expected, **TOL)


def test_lava_value_norm_range_prefix_ignores_window_values():
    inputs = make_inputs(pads=(2, 0), seed=4)
    inputs.values[:, :, -1] = 100.0  # a huge value vector in the window
    prefix = lava_scores(inputs, value_norm_range="prefix")
    full = lava_scores(inputs, value_norm_range="all")
    finite = torch.isfinite(prefix)
    assert torch.all(full[finite] > prefix[finite])


def test_lava_with_max_pool_is_independent_of_pool_scale_groupmax_order():
    inputs = make_inputs(batch=2, kv_heads=3, group=4, tokens=20, window=5, pads=(6, 0), seed=5)
    valid, w, h_kv, g = inputs.valid, inputs.window, inputs.kv_heads, inputs.group_size
    a = window_mean64(inputs)  # [b, hq, n]
    vmax = value_max64(inputs, "all")  # [b, h_kv]
    per_query_head = vmax.repeat_interleave(g, dim=1)[..., None]  # [b, hq, 1]

    def pool(x: torch.Tensor) -> torch.Tensor:
        return pool64(x, valid, w, 7, "max")

    pool_scale_group = group64(pool(a) * per_query_head, h_kv, "max")
    scale_group_pool = pool(group64(a * per_query_head, h_kv, "max"))
    group_pool_scale = pool(group64(a, h_kv, "max")) * vmax[..., None]
    prefix_valid = valid[:, None, : inputs.tokens - w].expand(-1, h_kv, -1)

    def on_prefix(x: torch.Tensor) -> torch.Tensor:
        return x[..., : inputs.tokens - w][prefix_valid]

    torch.testing.assert_close(on_prefix(pool_scale_group), on_prefix(scale_group_pool), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(on_prefix(pool_scale_group), on_prefix(group_pool_scale), rtol=1e-12, atol=1e-14)
    got = lava_scores(inputs)
    torch.testing.assert_close(on_prefix(got.double()), on_prefix(group_pool_scale), **TOL)


@pytest.mark.parametrize("gqa_order", ["before-pool", "after-pool"])
@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("gqa", ["mean", "max"])
@pytest.mark.parametrize("kernel_size", [1, 5])
def test_cake_with_gamma_zero_equals_snapkv_exactly(pooling, gqa, kernel_size, gqa_order):
    inputs = make_inputs(group=3, pads=(4, 0), seed=6)
    kw = {"kernel_size": kernel_size, "pooling": pooling, "gqa": gqa, "gqa_order": gqa_order}
    assert torch.equal(cake_scores(inputs, gamma=0.0, **kw), snapkv_scores(inputs, **kw))


def cake64(inputs: ScoringInputs, *, gamma: float, kernel: int, pooling: str, gqa: str, order: str,
           variance: str) -> torch.Tensor:
    """mean_j A[j, i] + gamma * var_j A[j, i] over the window queries, by explicit sums, then pooled and reduced."""
    w = inputs.window
    rows = dense_attention64(inputs)[:, :, -w:, :]  # [b, hq, w, n]
    mean = rows.sum(dim=2) / w
    squares = ((rows - mean[:, :, None]) ** 2).sum(dim=2)
    var = squares / (w - 1) if variance == "sample" else squares / w
    a = mean + gamma * var
    valid, h_kv = inputs.valid, inputs.kv_heads
    if order == "before-pool":
        return finalize64(pool64(group64(a, h_kv, gqa), valid, w, kernel, pooling), inputs)
    return finalize64(group64(pool64(a, valid, w, kernel, pooling), h_kv, gqa), inputs)


def test_cake_defaults_match_float64_reference_of_cakes_code():
    """CAKE's code: attn.mean(-2) + gamma * attn.var(-2) (unbiased), avg_pool1d(kernel 5) per query head, then the
    mean over the group."""
    inputs = make_inputs(batch=2, kv_heads=2, group=2, tokens=16, window=5, pads=(3, 0), seed=7)
    expected = cake64(inputs, gamma=200.0, kernel=5, pooling="avg", gqa="mean", order="after-pool", variance="sample")
    torch.testing.assert_close(cake_scores(inputs).double(), expected, **TOL)


@pytest.mark.parametrize("variance", ["sample", "population"])
@pytest.mark.parametrize("gqa_order", ["before-pool", "after-pool"])
@pytest.mark.parametrize(("pooling", "kernel_size", "gqa"), [("max", 7, "mean"), ("avg", 3, "max")])
def test_cake_options_match_float64_reference(variance, gqa_order, pooling, kernel_size, gqa):
    inputs = make_inputs(batch=2, kv_heads=2, group=3, tokens=17, window=4, pads=(0, 5), seed=15)
    expected = cake64(inputs, gamma=7.0, kernel=kernel_size, pooling=pooling, gqa=gqa, order=gqa_order,
                      variance=variance)
    got = cake_scores(inputs, gamma=7.0, kernel_size=kernel_size, pooling=pooling, gqa=gqa, gqa_order=gqa_order,
                      variance=variance)
    torch.testing.assert_close(got.double(), expected, **TOL)


def test_cake_sample_variance_of_a_one_query_window_is_zero():
    inputs = make_inputs(window=1, pads=(2, 0), seed=16)
    assert torch.equal(cake_scores(inputs, gamma=50.0), cake_scores(inputs, gamma=0.0))


@pytest.mark.parametrize("query_block", [1, 7, 16, 1000])
def test_h2o_chunked_matches_dense_float64_reference(query_block):
    inputs = make_inputs(batch=2, kv_heads=2, group=3, tokens=16, window=3, pads=(0, 5), seed=8)
    attention = dense_attention64(inputs) * inputs.valid[:, None, :, None]  # padding queries excluded
    expected = finalize64(group64(attention.sum(dim=2), inputs.kv_heads, "mean"), inputs)
    torch.testing.assert_close(h2o_scores(inputs, query_block=query_block).double(), expected, **TOL)


@pytest.mark.parametrize("head_scope", ["layer", "group"])
def test_tova_matches_last_query_attention_float64(head_scope):
    """"layer" (TOVA's code): the mean over all H query heads, the same ranking in every KV head; "group": the mean
    over each KV head's G query heads."""
    inputs = make_inputs(batch=2, kv_heads=3, group=2, tokens=15, window=3, pads=(4, 0), seed=9)
    last = dense_attention64(inputs)[:, :, -1, :]  # [b, hq, n]
    if head_scope == "layer":
        layer = sum(last[:, h] for h in range(last.shape[1])) / last.shape[1]  # [b, n]
        expected = layer[:, None, :].expand(-1, inputs.kv_heads, -1)
    else:
        expected = group64(last, inputs.kv_heads, "mean")
    got = tova_scores(inputs, head_scope=head_scope)
    torch.testing.assert_close(got.double(), finalize64(expected, inputs), **TOL)
    if head_scope == "layer":
        assert torch.equal(got, tova_scores(inputs)), "the default is TOVA's layer-wide mean"
        assert torch.equal(got[:, 0], got[:, 1]) and torch.equal(got[:, 0], got[:, 2])


def test_knorm_is_minus_key_l2_norm():
    inputs = make_inputs(pads=(2, 0), seed=10)
    expected = finalize64(-inputs.keys.double().pow(2).sum(-1).sqrt(), inputs)
    torch.testing.assert_close(get_scorer("knorm")(inputs).double(), expected, **TOL)


@pytest.mark.parametrize("n_sink", [0, 1, 4])
def test_streaming_top_k_keeps_sinks_of_real_tokens_then_most_recent(n_sink):
    tokens, window, pad, recent = 24, 4, 7, 5
    inputs = make_inputs(batch=2, kv_heads=2, tokens=tokens, window=window, pads=(pad, 0))
    scores = streaming_scores(inputs, n_sink=n_sink)
    k = n_sink + recent + window
    for row, first in enumerate((pad, 0)):
        expected = set(range(first, first + n_sink)) | set(range(tokens - window - recent, tokens))
        for head in range(2):
            kept = set(torch.topk(scores[row, head], k).indices.tolist())
            assert kept == expected


def test_random_same_seed_same_scores_different_seed_differs():
    inputs = make_inputs(pads=(3, 0))
    a, b, c = random_scores(inputs, seed=11), random_scores(inputs, seed=11), random_scores(inputs, seed=12)
    assert torch.equal(a, b)
    finite = torch.isfinite(a)
    assert not torch.equal(a[finite], c[finite])


# ---- layer statistics (docs/methods.md) ----


def valid_prefix_of(inputs: ScoringInputs) -> torch.Tensor:
    return inputs.valid & ~inputs.window_mask()[None, :]


def test_normalized_entropy_of_uniform_scores_is_one():
    inputs = make_inputs(batch=2, kv_heads=3, tokens=20, window=4)
    scores = inputs.finalize(torch.full((2, 3, 20), 0.25))
    torch.testing.assert_close(normalized_entropy(scores, valid_prefix_of(inputs)), torch.ones(2))


def test_normalized_entropy_of_one_hot_scores_is_zero():
    inputs = make_inputs(batch=2, kv_heads=3, tokens=20, window=4, pads=(5, 0))
    raw = torch.zeros(2, 3, 20)
    raw[0, 1, 9] = 2.0
    raw[1, 2, 0] = 0.5
    entropy = normalized_entropy(inputs.finalize(raw), valid_prefix_of(inputs))
    assert entropy.dtype == torch.float32
    torch.testing.assert_close(entropy, torch.zeros(2))


def test_normalized_entropy_matches_float64_reference_with_padding():
    inputs = make_inputs(batch=3, kv_heads=2, group=2, tokens=18, window=4, pads=(0, 6, 17), seed=12)
    scores = lava_scores(inputs)
    valid_prefix = valid_prefix_of(inputs)
    expected = []
    for b in range(3):
        entries = [
            scores[b, g, i].double().item() for g in range(2) for i in range(18) if valid_prefix[b, i]
        ]  # row 2 has no valid prefix token: entropy 0
        total = sum(entries)
        e = -sum(s / total * math.log(s / total) for s in entries if s > 0) if total > 0 else 0.0
        expected.append(e / math.log(2 * (18 - 4)))
    got = normalized_entropy(scores, valid_prefix)
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64), **TOL)
    torch.testing.assert_close(normalized_entropy(scores, valid_prefix, prefix_len=14), got)


@pytest.mark.parametrize(("tau1_inv", "tau2_inv"), [(0.5, 0.5), (1.0, 2.0), (0.625, 2.5)])
def test_cake_preference_reference_matches_float64_reference_of_cakes_code(tau1_inv, tau2_inv):
    """CAKE's code: H = -sum A * log(A + 1e-10) over heads, window queries and prefix tokens of the raw window
    attention (no renormalisation); V = sum over heads and prefix tokens of the unbiased variance over the window."""
    inputs = make_inputs(batch=3, kv_heads=2, group=3, tokens=16, window=4, pads=(0, 5, 14), seed=13)
    n, w = inputs.tokens, inputs.window
    rows = dense_attention64(inputs)[:, :, -w:, :]  # [b, hq, w, n]
    valid_prefix = valid_prefix_of(inputs)
    expected = []
    for b in range(3):
        prefix = [i for i in range(n) if valid_prefix[b, i]]
        dispersion, shift = 0.0, 0.0
        for h in range(rows.shape[1]):
            for i in prefix:
                column = [rows[b, h, j, i].item() for j in range(w)]
                dispersion -= sum(a * math.log(a + 1e-10) for a in column)
                mean = sum(column) / w
                shift += sum((a - mean) ** 2 for a in column) / (w - 1)
        expected.append(dispersion**tau1_inv * shift**tau2_inv)  # row 2: no prefix token, 0
    got = cake_preference(inputs.window_attention(), valid_prefix, tau1_inv=tau1_inv, tau2_inv=tau2_inv)
    assert got.shape == (3,) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64), **TOL)
    default = cake_preference(inputs.window_attention(), valid_prefix, tau1_inv=tau1_inv, tau2_inv=tau2_inv,
                              preference="reference")
    assert torch.equal(got, default)


def test_cake_preference_rejects_unknown_form():
    inputs = make_inputs()
    with pytest.raises(ValueError, match=r"preference must be one of \('reference', 'renormalized'\)"):
        cake_preference(inputs.window_attention(), valid_prefix_of(inputs), preference="paper")


@pytest.mark.parametrize(("tau1_inv", "tau2_inv"), [(0.5, 0.5), (1.0, 2.0)])
def test_cake_preference_renormalized_matches_float64_reference(tau1_inv, tau2_inv):
    inputs = make_inputs(batch=3, kv_heads=2, group=3, tokens=16, window=4, pads=(0, 5, 14), seed=13)
    n, w = inputs.tokens, inputs.window
    rows = dense_attention64(inputs)[:, :, -w:, :]  # [b, hq, w, n]
    valid_prefix = valid_prefix_of(inputs)
    expected = []
    for b in range(3):
        prefix = [i for i in range(n) if valid_prefix[b, i]]
        if not prefix:
            expected.append(0.0)
            continue
        dispersion, shift = 0.0, 0.0
        for h in range(rows.shape[1]):
            mean = [rows[b, h, :, i].mean().item() for i in prefix]
            p = [m / sum(mean) for m in mean]
            dispersion += -sum(x * math.log(x) for x in p if x > 0) / rows.shape[1]
            variances = [((rows[b, h, :, i] - rows[b, h, :, i].mean()) ** 2).mean().item() for i in prefix]
            shift += sum(variances) / len(prefix) / rows.shape[1]
        expected.append(dispersion**tau1_inv * shift**tau2_inv)
    got = cake_preference(inputs.window_attention(), valid_prefix, tau1_inv=tau1_inv, tau2_inv=tau2_inv,
                          preference="renormalized")
    assert got.shape == (3,) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64), **TOL)
