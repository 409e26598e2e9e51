"""The expected-attention scorer against a float64 reference built from explicit rotation matrices."""

from __future__ import annotations

import pytest
import torch
from conftest import prompt, tiny_model

import lavakv
from lavakv.scorers import ScoringInputs, expected_attention_scores


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


def _reference(inputs: ScoringInputs, horizon: int, values: bool) -> torch.Tensor:
    q = inputs.window_queries().double()  # [b, hq, w, d]
    b, hq, w, d = q.shape
    freq = inputs.rope_inv_freq.double()
    out = torch.zeros(b, inputs.kv_heads, inputs.tokens, dtype=torch.float64)
    g = hq // inputs.kv_heads
    for row in range(b):
        for head in range(hq):
            future = []
            for j in range(w):
                mean_rotation = sum(_rotation(freq, (w - j) + t, d) for t in range(horizon)) / horizon
                future.append(mean_rotation @ q[row, head, j])
            future = torch.stack(future)  # [w, d]
            mu = future.mean(0)
            sigma = (future - mu).T @ (future - mu) / w
            k = inputs.keys[row, head // g].double()  # [n, d]
            s = inputs.scaling
            logits = s * k @ mu + 0.5 * s * s * torch.einsum("nd,de,ne->n", k, sigma, k)
            out[row, head // g] += torch.softmax(logits, dim=-1) / g
    if values:
        out = out * inputs.values.double().norm(dim=-1)
    window = torch.zeros(inputs.tokens, dtype=torch.bool)
    window[-inputs.window :] = True
    return out.masked_fill(window, float("inf"))


@pytest.mark.parametrize("values", [True, False])
def test_matches_float64_reference(values):
    generator = torch.Generator().manual_seed(3)
    b, hq, h, n, d, w = 2, 4, 2, 20, 8, 3
    inputs = ScoringInputs(torch.randn(b, hq, n, d, generator=generator), torch.randn(b, h, n, d, generator=generator),
                           torch.randn(b, h, n, d, generator=generator), torch.ones(b, n, dtype=torch.bool), d ** -0.5,
                           w, torch.tensor([1.0, 0.3, 0.05, 0.001]))
    got = expected_attention_scores(inputs, horizon=6, values=values)
    torch.testing.assert_close(got.double(), _reference(inputs, 6, values), rtol=1e-4, atol=1e-6)


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
