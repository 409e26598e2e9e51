"""The compressor's one operation, usable after the prefill: compress these layers to these budgets."""

from __future__ import annotations

import pytest
import torch
from conftest import prompt, tiny_model

import lavakv


@pytest.mark.parametrize("name", ["snapkv", "ada-snapkv", "lava-uniform-layer", "tova"])
def test_compress_after_prefill_equals_compressing_during_prefill(name):
    """Prefill with a budget covering the prompt (nothing evicted), then compress every layer to B - w from the
    recorded window queries: the same kept entries as a prefill at budget B, hence the same decode."""
    model = tiny_model("llama", layers=3, heads=4, kv_heads=2)
    ids, mask = prompt(batch=2, length=80, pad=(0, 9))
    budget, window = 24, 4
    with lavakv.method(name, budget=budget, window=window).attach(model) as session:
        direct = session.cache()
        with torch.no_grad():
            model(ids, attention_mask=mask, past_key_values=direct)
    with lavakv.method(name, budget=10_000, window=window).attach(model) as session:
        plain = session.cache()  # window queries are kept only on request
        with torch.no_grad():
            model(ids, attention_mask=mask, past_key_values=plain)
        with pytest.raises(ValueError, match="record_window_queries"):
            session.window_queries(plain, 0)
        later = session.cache(record_window_queries=True)
        with torch.no_grad():
            model(ids, attention_mask=mask, past_key_values=later)
        assert not any(layer.compressed for layer in later.layers)
        compressor = session.compressor(later)
        layers = session.stats(later).layers
        compressor.compress({i: torch.full((2,), budget - window) for i in layers},
                            {i: session.window_queries(later, i)[0] for i in layers})
        stats = session.stats(later)
        for a, b in zip(direct.layers, later.layers, strict=True):
            assert torch.equal(a.kept_prompt, b.kept_prompt)
            for x, y in zip(a.prompt_entries(), b.prompt_entries(), strict=True):
                assert torch.equal(x, y)
        assert all(bud.tolist() == [budget - window] * 2 for bud in stats.layer_budgets)
        # an already compressed layer can be compressed again: a subset of what it held, window kept, exact totals
        before_keys, _ = later.layers[0].prompt_entries()
        compressor.compress({0: torch.full((2,), 4)}, {0: session.window_queries(later, 0)[0]})
        kept = later.layers[0].kept_prompt
        assert kept.sum(-1).tolist() == [2 * (4 + window)] * 2
        after_keys, _ = later.layers[0].prompt_entries()
        assert all(any(torch.equal(k, b) for b in before_keys) for k in after_keys)


def test_compress_needs_a_compressing_method_and_a_prefill():
    model = tiny_model("llama")
    ids, mask = prompt(batch=1, length=40)
    with lavakv.method("snapkv", budget=16, window=4).attach(model) as session:
        cache = session.cache()
        with pytest.raises(ValueError, match="prefill"):
            session.compressor(cache).compress({0: torch.tensor([4])}, {0: torch.zeros(1, 4, 4, 16)})
        full = session.cache(lavakv.method("full"))
        with torch.no_grad():
            model(ids, attention_mask=mask, past_key_values=full)
        with pytest.raises(ValueError, match="'full'"):
            session.compressor(full).compress({0: torch.tensor([4])}, {0: torch.zeros(1, 4, 4, 16)})
