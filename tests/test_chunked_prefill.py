"""Chunked prefill (``chunk_size``): exact when one chunk, bounded K/V while prefilling, generate's chunking, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import prompt, tiny_model
from test_generation import tiny_pair

import lavakv
from lavakv.cache.compressed import CompressedLayer
from lavakv.cli import app as cli


@pytest.mark.parametrize("name", ["lava", "snapkv", "cake", "pyramidkv"])
def test_one_chunk_is_exactly_the_exact_prefill(name):
    model = tiny_model("llama", layers=3)
    ids, mask = prompt(batch=2, length=120, pad=(0, 11))
    exact = lavakv.method(name, budget=40, window=8)
    chunked = lavakv.method(name, budget=40, window=8, chunk_size=120)
    with exact.attach(model) as session:
        (a,), logits_a = session.prefill(ids, mask, [exact])
        (b,), logits_b = session.prefill(ids, mask, [chunked])
        assert torch.equal(logits_a, logits_b)
        for x, y in zip(session.stats(a).kept_tokens, session.stats(b).kept_tokens, strict=True):
            assert torch.equal(x, y)
        for i in session.stats(a).layers:
            for u, v in zip(a.layers[i].prompt_entries(), b.layers[i].prompt_entries(), strict=True):
                assert torch.equal(u, v)


@pytest.mark.parametrize("name", ["snapkv", "lava", "streamingllm"])
def test_kv_held_while_prefilling_stays_near_budget_plus_chunk(name):
    """At every attention call of a 400-token prefill in chunks of 48, each layer holds at most B + C entries per
    head (uniform heads; on average over layers and heads for LAVa's layer budgets), and the result is at budget."""
    model = tiny_model("llama", layers=3, heads=4, kv_heads=2)
    ids, mask = prompt(batch=2, length=400, pad=(0, 30))
    budget, chunk, window = 32, 48, 8
    m = lavakv.method(name, budget=budget, window=window, chunk_size=chunk)
    peaks: list[float] = []

    def held_per_head(cache):
        per_layer = []
        for layer in cache.layers:
            if isinstance(layer, CompressedLayer) and layer.is_initialized:
                per_layer.append(layer.nbytes() / (layer.batch * layer.kv_heads * layer.entry_bytes))
        return per_layer

    with m.attach(model) as session:
        cache = session.cache()
        hooks = [module.register_forward_hook(lambda *a: peaks.append(held_per_head(cache)))
                 for module in model.modules() if type(module).__name__.endswith("Attention")]
        try:
            with torch.no_grad():
                for start in range(0, 400, chunk):
                    model(ids[:, start : start + chunk], attention_mask=mask[:, : start + chunk],
                          past_key_values=cache)
        finally:
            for hook in hooks:
                hook.remove()
        stats = session.stats(cache)
    exact_bytes_per_head = 400
    if name == "lava":
        assert max(sum(p) / len(p) for p in peaks if len(p) == 3) <= budget + chunk + 1
    else:
        assert max(max(p) for p in peaks) <= budget + chunk
    assert max(max(p) for p in peaks) < exact_bytes_per_head / 2
    assert max(stats.held_per_head) <= budget + 1e-9
    assert stats.prompt_tokens.tolist() == [400, 370]


def test_model_generate_prefill_chunk_size_equals_session_prefill():
    model = tiny_model("llama", layers=2)
    ids, mask = prompt(batch=1, length=150)
    m = lavakv.method("lava", budget=32, window=8, chunk_size=40)
    with m.attach(model) as session:
        cache = session.cache()
        out = model.generate(ids, attention_mask=mask, past_key_values=cache, max_new_tokens=12, do_sample=False,
                             prefill_chunk_size=40, pad_token_id=0)
        (other,), logits = session.prefill(ids, mask, [m])
        tokens = [int(logits.argmax())]
        with torch.no_grad():
            for _ in range(11):
                step = model(torch.tensor([[tokens[-1]]]), past_key_values=other)
                tokens.append(int(step.logits[0, -1].argmax()))
    assert out[0, 150:].tolist() == tokens


def test_padded_rows_do_not_interact():
    """Chunk boundaries are counted in the batch's columns (padding included): a padded batch gives each row what
    a batch of one with the same padding gives, a row whose first chunk is all padding included."""
    model = tiny_model("llama", layers=2)
    ids, mask = prompt(batch=2, length=160, pad=(0, 70))
    m = lavakv.method("snapkv", budget=32, window=8, chunk_size=64)
    with m.attach(model) as session:
        _, both = session.prefill(ids, mask, [m])
        for row in range(2):
            _, alone = session.prefill(ids[row : row + 1], mask[row : row + 1], [m])
            torch.testing.assert_close(both[row], alone[0], rtol=1e-4, atol=1e-4)
    assert torch.isfinite(both).all()


def test_chunked_prefill_then_decode_budget():
    model = tiny_model("llama", layers=2)
    ids, mask = prompt(batch=1, length=200)
    m = lavakv.method("lava", budget=32, window=8, chunk_size=64, decode_budget=64, decode_interval=16)
    with m.attach(model) as session:
        cache = session.cache()
        model.generate(ids, attention_mask=mask, past_key_values=cache, max_new_tokens=100, min_new_tokens=100,
                       do_sample=False, prefill_chunk_size=64, pad_token_id=0)
        stats = session.stats(cache)
    assert stats.decode_evictions >= 3 and max(stats.held_per_head) < 64


def test_bad_chunk_settings_and_calls_are_refused():
    with pytest.raises(ValueError, match="smaller than the observation window"):
        lavakv.method("lava", budget=64, window=32, chunk_size=16)
    with pytest.raises(TypeError, match="chunk_size must be an int"):
        lavakv.method("lava", budget=64, chunk_size=64.0)
    with pytest.raises(ValueError, match="'full' does not compress"):
        lavakv.method("full", chunk_size=64)
    model = tiny_model("llama", layers=2)
    ids, mask = prompt(batch=1, length=100)
    chunked = lavakv.method("snapkv", budget=16, window=4, chunk_size=32)
    with chunked.attach(model) as session, torch.no_grad():
        with pytest.raises(ValueError, match="once per method"):
            session.prefill(ids, mask, [chunked, lavakv.method("snapkv", budget=16, window=4)])
        with pytest.raises(ValueError, match="prefill_chunk_size=32"):
            model(ids, attention_mask=mask, past_key_values=session.cache())
        cache = session.cache()
        model(ids[:, :32], attention_mask=mask[:, :32], past_key_values=cache)
        with pytest.raises(ValueError, match="longer than the method's chunk_size=32"):
            model(ids[:, 32:], attention_mask=mask, past_key_values=cache)
        # one-token chunks would all count as generated tokens: the prompt would never be compressed
        with pytest.raises(ValueError, match=r"prefill_chunk_size=C\) with C >= 2"):
            model.generate(ids, attention_mask=mask, past_key_values=session.cache(), max_new_tokens=1,
                           do_sample=False, prefill_chunk_size=1, pad_token_id=0)
        with pytest.raises(ValueError, match="first chunk is a single token"):
            session.prefill(ids[:, :1], mask[:, :1], [chunked])
        # the window queries of an exact prefill do not exist for a chunked one (they used to be the first chunk's)
        with pytest.raises(ValueError, match="record_window_queries keeps the window queries of an exact prefill"):
            session.prefill(ids, mask, [chunked], record_window_queries=True)


def test_cli_generate_with_chunk_size(monkeypatch, capsys):
    pair = tiny_pair(chat=True)
    monkeypatch.setattr(cli, "load_model", lambda name, *, dtype, device: pair)
    args = ["generate", "--method", "lava", "--budget", "24", "--window", "8", "--prompt", "Kyoto has 12 parks. " * 10,
            "--question", "How many parks?", "--max-new-tokens", "4"]
    assert cli.main([*args, "--chunk-size", "48"]) == 0
    assert "kept" in capsys.readouterr().out
    assert cli.main([*args, "--chunk-size", "4"]) == 2
    assert "--chunk-size (4) is smaller than the observation window (8)" in capsys.readouterr().err


def test_chunks_within_a_sliding_window_are_refused_with_the_fix():
    """Gemma 3: a first chunk that fits the sliding window gets its sliding layers compressed as full-attention
    layers, which the next chunk would push past the window: refused naming chunk sizes; longer chunks work."""
    model = tiny_model("gemma3", layers=4)  # sliding_window 8 in the tiny config
    window = model.config.sliding_window
    ids, _ = prompt(batch=1, length=5 * window)
    small = lavakv.method("snapkv", budget=6, window=4, chunk_size=window)
    with small.attach(model) as session, torch.no_grad():
        with pytest.raises(ValueError, match=f"prefill_chunk_size > {window}"):
            session.prefill(ids, None, [small])
        with pytest.raises(ValueError, match=f"prefill_chunk_size > {window}"):
            model.generate(ids, past_key_values=session.cache(), max_new_tokens=2, do_sample=False,
                           prefill_chunk_size=window, pad_token_id=0)
    large = lavakv.method("snapkv", budget=6, window=4, chunk_size=2 * window)
    with large.attach(model) as session, torch.no_grad():
        (cache,), _ = session.prefill(ids, None, [large])
        assert session.stats(cache).layers  # the full-attention layers are compressed
