"""Every preset end to end on a tiny random model: it generates, keeps exactly its budget, and holds that memory."""

from __future__ import annotations

import pytest
import torch
from conftest import prompt, tiny_model

import lavakv

# docs/methods.md, written out independently of lavakv.methods.PRESETS: preset -> (scorer, layers, heads).
TABLE: dict[str, tuple[str | None, str | None, str | None]] = {
    "full": (None, None, None),
    "streamingllm": ("streaming", "uniform", "uniform"),
    "h2o": ("h2o", "uniform", "uniform"),
    "tova": ("tova", "uniform", "uniform"),
    "knorm": ("knorm", "uniform", "uniform"),
    "random": ("random", "uniform", "uniform"),
    "snapkv": ("snapkv", "uniform", "uniform"),
    "pyramidkv": ("snapkv", "pyramid", "uniform"),
    "ada-snapkv": ("snapkv", "uniform", "adaptive"),
    "ada-pyramidkv": ("snapkv", "pyramid", "adaptive"),
    "cake": ("cake", "cake", "uniform"),
    "lava": ("lava", "lava", "adaptive"),
    "lava-uniform-layer": ("lava", "uniform", "adaptive"),
    "lava-uniform-head": ("lava", "lava", "uniform"),
    "lava-pyramid": ("lava", "pyramid", "adaptive"),
    # issue #14: the query-agnostic expected-attention scorer, alone and under LAVa's allocations
    "expected-attention": ("expected-attention", "uniform", "uniform"),
    "lava-ea": ("expected-attention", "lava", "adaptive"),
    "kvzip": ("kvzip", "uniform", "uniform"),
    "lava-kvzip": ("kvzip", "lava", "adaptive"),
}
# docs/methods.md defaults for the hyper-parameters the spec names.
DEFAULTS = {
    "streaming": {"n_sink": 4},
    "tova": {"head_scope": "layer"},
    "snapkv": {"kernel_size": 7, "pooling": "max", "gqa": "mean", "gqa_order": "before-pool"},
    "cake": {"gamma": 200.0, "kernel_size": 5, "pooling": "avg", "gqa": "mean", "gqa_order": "after-pool",
             "variance": "sample"},
    "lava": {"kernel_size": 7, "pooling": "max", "value_norm_range": "all"},
    "pyramid": {"beta": 20.0, "schedule": "reference"},
    "cake-layers": {"tau1_inv": 0.5, "tau2_inv": 0.5, "preference": "reference", "rounding": "reference"},
    "adaptive": {"alpha": 0.2, "floor": "exact"},
    "expected-attention": {"horizon": 512, "values": True},
    "kvzip": {"query_block": 256},
}
# kvzip presets compress only a context, after a reconstruction pass (tests/test_kvzip.py): not a bare prefill
COMPRESSING = [name for name in TABLE if name not in ("full", "kvzip", "lava-kvzip")]
CASCADES = {"lava", "cake"}  # layer allocations that split T = L (B - w) in proportion to a statistic

LAYERS, KV_HEADS, HEAD_DIM, WINDOW, LENGTH = 3, 2, 16, 8, 100
BUDGET, RATIO = 40, 0.6
PADS = {1: (0,), 2: (0, 20)}  # batch -> left padding per row


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", layers=LAYERS, heads=4, kv_heads=KV_HEADS, head_dim=HEAD_DIM)


def _row_budget(real: int, setting: dict) -> int:
    """B per row, window included (docs/methods.md)."""
    return setting["budget"] if "budget" in setting else round((1 - setting["compression_ratio"]) * real)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("setting", [{"budget": BUDGET}, {"compression_ratio": RATIO}], ids=["budget", "ratio"])
@pytest.mark.parametrize("name", COMPRESSING)
def test_preset_keeps_exactly_its_budget(model, name, setting, batch):
    ids, mask = prompt(batch=batch, length=LENGTH, pad=PADS[batch])
    real = mask.sum(-1)
    m = lavakv.method(name, window=WINDOW, **setting)
    with m.attach(model) as session:
        cache = session.cache()
        with torch.no_grad():
            model(ids, attention_mask=mask, past_key_values=cache)  # prefill only: the state before any decode
        stats = session.stats()
        out = model.generate(ids, attention_mask=mask, past_key_values=session.cache(), max_new_tokens=5,
                             do_sample=False, pad_token_id=0)
        after = session.stats()
    assert out.shape == (batch, LENGTH + 5)
    assert torch.equal(stats.prompt_tokens, real)
    assert len(stats.kept_tokens) == LAYERS and stats.layer_budgets is not None
    for a, b in zip(stats.kept_tokens, after.kept_tokens, strict=True):
        assert torch.equal(a, b), "generate keeps the same prompt entries as the bare prefill"

    kept = torch.stack(stats.kept_tokens)  # [L, batch, kv_heads]
    budgets = torch.stack(stats.layer_budgets)  # [L, batch], prefix tokens per head
    for row in range(batch):
        n_real = int(real[row])
        b_row = _row_budget(n_real, setting)
        target = LAYERS * KV_HEADS * b_row
        total = int(kept[:, row].sum())
        assert bool((kept[:, row] >= WINDOW).all()), "the window is always kept"
        if m.layers in CASCADES:
            assert int(budgets[:, row].sum()) > LAYERS * (b_row - WINDOW) - LAYERS, "floor rounding loses < L"
            exact = KV_HEADS * int(budgets[:, row].clamp(max=n_real - WINDOW).sum()) + LAYERS * KV_HEADS * WINDOW
            assert total == exact
            assert target - LAYERS * KV_HEADS < total <= target
        else:
            assert total == target, f"row {row}: {total} kept prompt entries, budget {target}"
        if m.heads == "uniform":  # every head of a layer keeps the same number
            assert bool((kept[:, row] == kept[:, row, :1]).all())

    entry_bytes = 2 * HEAD_DIM * 4  # K and V, float32
    expected_bytes = int(kept.sum()) * entry_bytes
    assert stats.kept_entries == int(kept.sum())
    assert abs(stats.resident_kv_bytes - expected_bytes) <= 0.02 * expected_bytes
    assert stats.resident_kv_bytes < stats.uncompressed_kv_bytes


@pytest.mark.parametrize("setting", [{"budget": 40}, {"budget": 30}, {"compression_ratio": 0.0}],
                         ids=["above", "equal", "ratio0"])
@pytest.mark.parametrize("name", COMPRESSING)
def test_short_prompt_keeps_every_real_token(model, name, setting):
    ids, mask = prompt(batch=2, length=30, pad=(0, 6))
    real = mask.sum(-1)
    with lavakv.method(name, window=WINDOW, **setting).attach(model) as session:
        with torch.no_grad():
            model(ids, attention_mask=mask, past_key_values=session.cache())
        stats = session.stats()
    assert len(stats.kept_tokens) == LAYERS
    for layer_kept in stats.kept_tokens:
        assert torch.equal(layer_kept, real[:, None].expand(-1, KV_HEADS))


@pytest.mark.parametrize("name", list(TABLE))
def test_describe_matches_the_methods_table(name):
    info = lavakv.describe(name)
    scorer, layers, heads = TABLE[name]
    assert (info["name"], info["scorer"], info["layers"], info["heads"]) == (name, scorer, layers, heads)
    if scorer is None:
        assert info["params"] == {}
        return
    params = info["params"]
    expected = dict(DEFAULTS.get(scorer, {}))
    expected.update({"cake": DEFAULTS["cake-layers"], "pyramid": DEFAULTS["pyramid"]}.get(layers, {}))
    if heads == "adaptive":
        expected.update(DEFAULTS["adaptive"])
    for key, value in expected.items():
        assert params[key] == value, f"{name}: {key}"
    if heads == "uniform":
        assert "alpha" not in params and "floor" not in params


def test_every_preset_is_listed():
    assert lavakv.list_methods() == list(TABLE)


def test_custom_composition_and_parameters():
    m = lavakv.method(scorer="lava", layers="pyramid", heads="adaptive", budget=64)
    info = m.describe()
    assert (info["name"], info["scorer"], info["layers"], info["heads"]) == ("custom", "lava", "pyramid", "adaptive")
    assert info["budget"] == 64 and info["params"]["beta"] == 20.0
    assert lavakv.method("lava", budget=64, heads="uniform").name == "custom"  # overriding a component
    assert lavakv.method("lava", budget=64, heads="adaptive").name == "lava"  # restating it is still the preset
    assert lavakv.method("lava-pyramid", budget=64, beta=5.0).describe()["params"]["beta"] == 5.0
    assert lavakv.method("ada-snapkv", budget=64, alpha=0.2, floor="adakv-reference").params["alpha"] == 0.2
    with pytest.raises(TypeError, match="bogus"):
        lavakv.method("snapkv", budget=64, bogus=1)
    with pytest.raises(TypeError, match="alpha"):
        lavakv.method("snapkv", budget=64, alpha=0.2)  # uniform heads have no floor
    with pytest.raises(TypeError, match="beta"):
        lavakv.method("lava", budget=64, beta=10.0)  # the cascade has no pyramid slope
    with pytest.raises(TypeError):
        lavakv.method(scorer="knorm", budget=64, kernel_size=7)


def test_custom_composition_runs(model):
    """A composition outside the presets (cake scorer, pyramid layers, adaptive heads) keeps its budget too."""
    ids, mask = prompt(batch=2, length=LENGTH, pad=(0, 20))
    m = lavakv.method(scorer="cake", layers="pyramid", heads="adaptive", budget=BUDGET, window=WINDOW)
    with m.attach(model) as session:
        out = model.generate(ids, attention_mask=mask, past_key_values=session.cache(), max_new_tokens=3,
                             do_sample=False, pad_token_id=0)
        kept = torch.stack(session.stats().kept_tokens)
    assert out.shape == (2, LENGTH + 3)
    assert kept.sum((0, 2)).tolist() == [LAYERS * KV_HEADS * BUDGET] * 2
