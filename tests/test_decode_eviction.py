"""Decode-time eviction (``decode_budget`` / ``decode_interval``): the bound, exactness, padding, allocation, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import prompt, tiny_model
from test_generation import tiny_pair

import lavakv
from lavakv.allocation.layers import proportional_budgets
from lavakv.cli import app as cli

PRESETS = ["lava", "snapkv", "ada-snapkv", "pyramidkv", "cake", "h2o", "tova", "streamingllm", "knorm", "random",
           "lava-uniform-head"]


def _steps(model, session, cache, ids, mask, new_tokens):
    """Prefill, then ``new_tokens`` greedy one-token steps; yields (step, logits [b, vocab]) after each forward."""
    with torch.no_grad():
        out = model(ids, attention_mask=mask, past_key_values=cache)
        yield 0, out.logits[:, -1]
        for step in range(1, new_tokens + 1):
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            out = model(token, attention_mask=mask, past_key_values=cache)
            yield step, out.logits[:, -1]


def _bound_bytes(model, batch, decode_budget):
    cfg = model.config
    head_dim = cfg.head_dim
    return batch * cfg.num_hidden_layers * cfg.num_key_value_heads * decode_budget * 2 * head_dim * 4


@pytest.mark.parametrize("name", PRESETS)
def test_memory_stays_bounded_while_generating(name):
    """Every preset: after every step the cache holds at most decode_budget entries per KV head on average, the
    resident bytes stay under the bound for any length (520 generated tokens for lava and streamingllm, 128 for
    the others), and evictions run every decode_interval tokens."""
    new = 520 if name in ("lava", "streamingllm") else 128
    model = tiny_model("llama", layers=3, heads=4, kv_heads=2)
    ids, mask = prompt(batch=2, length=150, pad=(0, 20))
    budget, decode_budget, interval, window = 48, 96, 16, 8
    m = lavakv.method(name, budget=budget, decode_budget=decode_budget, decode_interval=interval, window=window)
    bound = _bound_bytes(model, 2, decode_budget)
    with m.attach(model) as session:
        cache = session.cache()
        compressor = session.compressor(cache)
        for step, _ in _steps(model, session, cache, ids, mask, new):
            held = compressor.held_per_head()
            assert max(held) <= decode_budget - 1 + 1e-9, (step, held)
            assert cache.resident_kv_bytes() <= bound
        stats = session.stats(cache)
        assert cache.get_seq_length() == 150 + new
        # after the prompt at B = 48 the cache grows to 96, then evicts every 16 tokens: about (new - 48) / 16 times
        assert (new - (decode_budget - budget)) // interval - 2 <= stats.decode_evictions <= new // interval + 1
        if m.layers == "uniform":  # uniform layer budgets reach the target exactly (entropy shares are floored)
            assert min(stats.held_per_head) >= decode_budget - interval
        # the slack of the growing buffers stays bounded too (about an interval per head), not O(generated)
        assert stats.slack_kv_bytes <= 3 * bound * interval // decode_budget


def test_without_evictions_outputs_are_bit_identical():
    """A decode budget covering prompt + generated tokens evicts nothing: logits equal the run without it."""
    model = tiny_model("qwen2", layers=2)
    ids, mask = prompt(batch=2, length=60, pad=(0, 7))
    runs = []
    for decode_budget in (None, 60 + 40):
        m = lavakv.method("lava", budget=24, window=4, decode_budget=decode_budget)
        with m.attach(model) as session:
            cache = session.cache()
            runs.append([logits.clone() for _, logits in _steps(model, session, cache, ids, mask, 40)])
            assert session.stats(cache).decode_evictions == 0
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_model_generate_greedy_and_sampling():
    model = tiny_model("llama", layers=2)
    ids, mask = prompt(batch=2, length=80, pad=(0, 5))
    m = lavakv.method("lava", budget=32, decode_budget=64, decode_interval=8, window=8)
    with m.attach(model) as session:
        for sample in (False, True):
            cache = session.cache()
            torch.manual_seed(0)
            out = model.generate(ids, attention_mask=mask, past_key_values=cache, max_new_tokens=120,
                                 min_new_tokens=120, do_sample=sample, pad_token_id=0)
            assert out.shape == (2, 80 + 120)
            stats = session.stats(cache)
            assert stats.decode_evictions > 5 and max(stats.held_per_head) < 64


@pytest.mark.parametrize("name", ["lava", "snapkv", "streamingllm"])
def test_padded_batch_rows_evolve_as_alone(name):
    """Each row evicts when it reaches the bound, scored on its own entries: a left-padded batch generates the
    same tokens as each sequence alone, and holds the same number of entries."""
    model = tiny_model("llama", layers=2, heads=4, kv_heads=2)
    ids, mask = prompt(batch=2, length=90, pad=(0, 25))
    m = lavakv.method(name, budget=32, decode_budget=64, decode_interval=8, window=8)

    def run(ids, mask):
        tokens, held = [], []
        with m.attach(model) as session:
            cache = session.cache()
            for _, logits in _steps(model, session, cache, ids, mask, 150):
                tokens.append(logits.argmax(-1))
                held.append(session.stats(cache).held_per_head)
        return torch.stack(tokens, 1), torch.tensor(held)

    batch_tokens, batch_held = run(ids, mask)
    for row, pad in enumerate((0, 25)):
        alone_tokens, alone_held = run(ids[row : row + 1, pad:], mask[row : row + 1, pad:])
        assert torch.equal(batch_tokens[row], alone_tokens[0])
        assert torch.allclose(batch_held[:, row], alone_held[:, 0])


def test_streamingllm_keeps_sinks_and_the_most_recent_tokens():
    """The classical baseline at decode time: the held keys are exactly the full cache's keys of the first n_sink
    positions and of the most recent ones, in every head. Teacher-forced, layer 0 (whose keys depend only on the
    token and its position, so both runs compute the same keys)."""
    model = tiny_model("llama", layers=2)
    ids, mask = prompt(batch=1, length=70)
    forced, _ = prompt(batch=1, length=200, seed=5)
    caches = []
    for m in (lavakv.method("full"),
              lavakv.method("streamingllm", budget=24, decode_budget=48, decode_interval=12, window=8)):
        with m.attach(model) as session, torch.no_grad():
            cache = session.cache()
            model(ids, attention_mask=mask, past_key_values=cache)
            for t in range(forced.shape[1]):
                model(forced[:, t : t + 1], past_key_values=cache)
            caches.append(cache)
            if m.compresses:
                assert session.stats(cache).decode_evictions > 10
    full_keys = caches[0].layers[0].keys  # [1, h, 270, d]
    keys, _, valid = caches[1].layers[0].held_entries(None)
    assert valid.all()
    held = keys.shape[2]
    assert 48 - 12 <= held < 48
    expected = torch.cat([full_keys[:, :, :4], full_keys[:, :, 270 - (held - 4) :]], dim=2)
    assert torch.allclose(keys, expected, atol=1e-6)


def test_layer_budgets_at_decode_are_one_global_allocation_of_current_statistics():
    """LAVa at decode: every eviction re-budgets all layers at once from their current entropies, and the layers'
    budgets are Eq. 7's floored shares of L * (decode_budget - decode_interval - window)."""
    model = tiny_model("llama", layers=4, heads=4, kv_heads=2)
    ids, mask = prompt(batch=1, length=120)
    decode_budget, interval, window = 64, 16, 8
    m = lavakv.method("lava", budget=40, decode_budget=decode_budget, decode_interval=interval, window=window)
    seen = []
    with m.attach(model) as session:
        cache = session.cache()
        compressor = session.compressor(cache)
        evictions = 0
        for _ in _steps(model, session, cache, ids, mask, 120):
            if compressor.decode_evictions > evictions:
                evictions = compressor.decode_evictions
                stats = session.stats(cache)
                budgets = torch.stack(stats.layer_budgets)  # [L, b]
                statistics = torch.stack(stats.layer_statistics)
                target = 4 * (decode_budget - interval - window)
                assert target - 4 < int(budgets.sum()) <= target  # floors: short by less than one per layer
                assert torch.equal(budgets, proportional_budgets(statistics, torch.tensor([target])))
                for i, layer in zip(stats.layers, stats.kept_tokens, strict=True):
                    assert int(layer.sum()) == 2 * (int(stats.layer_budgets[i][0]) + window)
                seen.append(statistics.clone())
    assert len(seen) >= 3
    assert not all(torch.equal(seen[0], s) for s in seen[1:])  # recomputed, not frozen at the prefill's values


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(budget=64, decode_budget=32), "larger than budget"),
        (dict(budget=64, decode_budget=64), "larger than budget"),
        (dict(budget=64, decode_budget=128, decode_interval=0), "decode_interval must be >= 1"),
        (dict(budget=64, decode_budget=128, decode_interval=65), "decode_interval .65. is larger"),
        (dict(budget=64, decode_interval=8), "needs decode_budget"),
        (dict(compression_ratio=0.5, decode_budget=16), "larger than the observation window"),
    ],
)
def test_bad_decode_settings_are_refused_at_method(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lavakv.method("lava", window=32, **kwargs)


def test_decode_budget_type_and_full_are_refused():
    with pytest.raises(TypeError, match="decode_budget must be an int"):
        lavakv.method("lava", budget=64, decode_budget=128.0)
    with pytest.raises(ValueError, match="'full' does not compress"):
        lavakv.method("full", decode_budget=128)
    m = lavakv.method("snapkv", budget=64, decode_budget=100)
    assert m.decode_interval == 32 and m.describe()["decode_budget"] == 100
    assert lavakv.method("snapkv", budget=64, decode_budget=80).decode_interval == 16


def test_cli_generate_with_decode_budget(monkeypatch, capsys):
    """End to end through the CLI on a tiny model: evictions reported; bad settings are usage errors."""
    pair = tiny_pair(chat=True)
    monkeypatch.setattr(cli, "load_model", lambda name, *, dtype, device: pair)
    args = ["generate", "--method", "snapkv", "--budget", "32", "--window", "8",
            "--prompt", "Kyoto has 12 parks. " * 8, "--no-chat", "--max-new-tokens", "150"]
    assert cli.main([*args, "--decode-budget", "64", "--decode-interval", "8"]) == 0
    report = capsys.readouterr().out.splitlines()[-1]
    assert "(150 tokens)" in report and "decode-time evictions" in report
    assert cli.main([*args, "--decode-budget", "16"]) == 2
    assert "--decode-budget (16) must be larger than budget (32)" in capsys.readouterr().err
    assert cli.main([*args, "--method", "full", "--budget", "32", "--decode-budget", "64"]) == 2
