"""The expected-attention scorer against a float64 reference built from explicit rotation matrices."""

from __future__ import annotations

import pytest
import torch
from conftest import prompt, tiny_model

import lavakv
from lavakv.allocation.heads import adaptive_heads, uniform_heads
from lavakv.scorers import ScoringInputs, expected_attention, expected_attention_scores


def _rotation(freq: torch.Tensor, offset: float, dim: int) -> torch.Tensor:
    """The ``[dim, dim]`` float64 RoPE rotation by ``offset`` positions in the rotate-half layout."""
    half = freq.numel()
    matrix = torch.eye(dim, dtype=torch.float64)
    for i in range(half):
        angle = offset * float(freq[i])
        c, s = torch.cos(torch.tensor(angle, dtype=torch.float64)), torch.sin(torch.tensor(angle, dtype=torch.float64))
        matrix[i, i], matrix[i, i + half] = c, -s
        matrix[i + half, i], matrix[i + half, i + half] = s, c
    return matrix


def _reference(inputs: ScoringInputs, horizon: int, values: bool, statistics: str, n_sink: int) -> torch.Tensor:
    """Each counted query q_c (column c) asked at position n + t is R(n + t - c) q_c; mean and covariance over the
    counted queries of the horizon-averaged future query, then the Gaussian expected attention, in float64."""
    q = inputs.queries.double()  # [b, hq, m, d]
    b, hq, m, d = q.shape
    n = inputs.tokens
    freq = inputs.rope_inv_freq.double()
    out = torch.zeros(b, inputs.kv_heads, n, dtype=torch.float64)
    g = hq // inputs.kv_heads
    for row in range(b):
        real = [c for c in range(n) if inputs.valid[row, c]]
        counted = [c for c in real[n_sink:] if c >= n - m and (statistics == "prompt" or c >= n - inputs.window)]
        for head in range(hq):
            future = torch.stack([
                sum(_rotation(freq, n + t - c, d) for t in range(horizon)) / horizon @ q[row, head, c - (n - m)]
                for c in counted])  # [queries, d]
            mu = future.mean(0)
            sigma = (future - mu).T @ (future - mu) / len(counted)
            k = inputs.keys[row, head // g].double()  # [n, d]
            s = inputs.scaling
            logits = s * k @ mu + 0.5 * s * s * torch.einsum("nd,de,ne->n", k, sigma, k)
            scored = inputs.valid[row].clone()
            scored[real[:n_sink]] = False  # the sinks are outside the softmax
            logits = logits.masked_fill(~scored, float("-inf"))
            out[row, head // g] += torch.softmax(logits, dim=-1) / g
        if values:
            out[row] = out[row] * inputs.values[row].double().norm(dim=-1)
        if n_sink:
            top = out[row][:, real[n_sink:]].max()
            out[row][:, real[:n_sink]] = top
    window = torch.zeros(n, dtype=torch.bool)
    window[-inputs.window :] = True
    out = out.masked_fill(window, float("inf"))
    return out.masked_fill(~inputs.valid[:, None, :], float("-inf"))


def _inputs(b=2, hq=4, h=2, n=20, d=8, w=3, pad=(0, 0), queries=None, seed=3) -> ScoringInputs:
    generator = torch.Generator().manual_seed(seed)
    valid = torch.ones(b, n, dtype=torch.bool)
    for row, p in enumerate(pad):
        valid[row, :p] = False
    m = n if queries is None else queries
    return ScoringInputs(torch.randn(b, hq, m, d, generator=generator), torch.randn(b, h, n, d, generator=generator),
                         torch.randn(b, h, n, d, generator=generator), valid, d ** -0.5, w,
                         torch.tensor([1.0, 0.3, 0.05, 0.001]))


@pytest.mark.parametrize("statistics", ["prompt", "window"])
@pytest.mark.parametrize("values", [True, False])
@pytest.mark.parametrize("n_sink", [0, 4])
@pytest.mark.parametrize("shape", [dict(), dict(pad=(0, 5)), dict(queries=7)], ids=["full", "padded", "last-7"])
@pytest.mark.parametrize("block", [1024, 6])
def test_matches_float64_reference(statistics, values, n_sink, shape, block, monkeypatch):
    """Also with queries and keys processed in blocks of 6 (several blocks, the last one partial)."""
    monkeypatch.setattr(expected_attention, "_BLOCK", block)
    inputs = _inputs(**shape)
    got = expected_attention_scores(inputs, horizon=6, values=values, statistics=statistics, n_sink=n_sink)
    torch.testing.assert_close(got.double(), _reference(inputs, 6, values, statistics, n_sink), rtol=1e-4, atol=1e-6)


def test_left_padding_does_not_change_the_scores():
    """Only position offsets matter: a left-padded row scores its real tokens as the same row unpadded."""
    plain = _inputs(b=1, n=16, pad=(0,))
    padded = ScoringInputs(*(torch.cat([torch.randn(*t.shape[:2], 5, t.shape[3]), t], dim=2)
                             for t in (plain.queries, plain.keys, plain.values)),
                           torch.cat([torch.zeros(1, 5, dtype=torch.bool), plain.valid], dim=1), plain.scaling,
                           plain.window, plain.rope_inv_freq)
    for statistics in ("prompt", "window"):
        a = expected_attention_scores(plain, horizon=9, statistics=statistics)
        p = expected_attention_scores(padded, horizon=9, statistics=statistics)
        torch.testing.assert_close(p[..., 5:], a, rtol=1e-4, atol=1e-6)
        assert (p[..., :5] == float("-inf")).all()


@pytest.mark.parametrize("alpha", [0.0, 0.2])
def test_sinks_are_kept_by_every_head_allocation(alpha):
    """The first n_sink real tokens of each row score the layer's maximum, so per-head and flattened top-k keep
    them whenever the budget holds n_sink entries per head, even where their expected attention alone would drop
    them (n_sink=0)."""
    inputs = _inputs(b=2, hq=8, h=4, n=64, d=8, w=4, pad=(0, 9), seed=5)
    budget = torch.tensor([6, 6])
    plain = expected_attention_scores(inputs, n_sink=0)
    scores = expected_attention_scores(inputs, n_sink=4)
    sinks = [list(range(0, 4)), list(range(9, 13))]
    for keep in (uniform_heads(scores, budget, 4),
                 adaptive_heads(scores, budget, 4, alpha=alpha, floor="exact", configured=budget)):
        for row, positions in enumerate(sinks):
            assert keep[row][:, positions].all()
    dropped = uniform_heads(plain, budget, 4)
    assert not all(dropped[row][:, positions].all() for row, positions in enumerate(sinks))


def test_a_row_of_sinks_only_scores_its_real_entries():
    """A left-padded row whose real tokens are all sinks still scores them finite (never -inf, the padding mark),
    and the other row of the batch is scored as if alone."""
    inputs = _inputs(b=2, hq=4, h=2, n=20, d=8, w=1, pad=(0, 16))
    got = expected_attention_scores(inputs, n_sink=4)
    assert torch.isfinite(got[1, :, 16:19]).all() and (got[1, :, :16] == float("-inf")).all()
    alone = ScoringInputs(inputs.queries[:1], inputs.keys[:1], inputs.values[:1], inputs.valid[:1], inputs.scaling,
                          inputs.window, inputs.rope_inv_freq)
    torch.testing.assert_close(got[:1], expected_attention_scores(alone, n_sink=4))


def test_statistics_and_n_sink_are_checked():
    with pytest.raises(ValueError, match="statistics must be one of"):
        lavakv.method("expected-attention", budget=64, statistics="all")
    with pytest.raises(ValueError, match="n_sink"):
        lavakv.method("expected-attention", budget=64, n_sink=-1)


def test_needs_rope_and_a_positive_horizon():
    inputs = ScoringInputs(torch.randn(1, 2, 10, 4), torch.randn(1, 1, 10, 4), torch.randn(1, 1, 10, 4),
                           torch.ones(1, 10, dtype=torch.bool), 0.5, 2)
    with pytest.raises(ValueError, match="RoPE frequencies"):
        expected_attention_scores(inputs)
    with pytest.raises(ValueError, match="horizon"):
        lavakv.method("expected-attention", budget=64, horizon=0)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_presets_run_under_uniform_and_lava_budgets(family):
    model = tiny_model(family, layers=3)
    ids, mask = prompt(batch=2, length=120, pad=(0, 10))
    for name in ("expected-attention", "lava-ea"):
        m = lavakv.method(name, budget=32, window=8)
        with m.attach(model) as session:
            (cache,), logits = session.prefill(ids, mask, [m])
            stats = session.stats(cache)
        assert torch.isfinite(logits).all()
        for kept in stats.kept_tokens:
            assert kept.sum(-1).tolist() == [kept.shape[1] * 32] * 2 or name == "lava-ea"
