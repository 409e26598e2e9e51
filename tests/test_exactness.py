"""Exactness: what must be identical to an uncompressed run, and restoring the model on exit."""

from __future__ import annotations

import pytest
import torch
from conftest import prompt, tiny_model

import lavakv


def _generate(model, ids, mask, cache=None, new=8):
    kwargs = {} if cache is None else {"past_key_values": cache}
    return model.generate(
        ids, attention_mask=mask, max_new_tokens=new, do_sample=False, output_logits=True,
        return_dict_in_generate=True, pad_token_id=0, **kwargs,
    )


def _assert_identical(a, b):
    assert torch.equal(a.sequences, b.sequences)
    assert len(a.logits) == len(b.logits)
    for x, y in zip(a.logits, b.logits, strict=False):
        assert torch.equal(x, y)


@pytest.mark.parametrize("method,kwargs", [
    ("snapkv", {"budget": 64}), ("ada-snapkv", {"budget": 80}), ("lava", {"budget": 64}),
    ("pyramidkv", {"budget": 70}), ("snapkv", {"compression_ratio": 0.0}), ("full", {}),
])
def test_budget_at_or_above_prompt_is_identity(family, method, kwargs):
    model = tiny_model(family)
    ids, mask = prompt(batch=2, length=64, pad=(0, 9))
    reference = _generate(model, ids, mask)
    window = {} if method == "full" else {"window": 8}
    with lavakv.method(method, **window, **kwargs).attach(model) as session:
        cache = session.cache()
        out = _generate(model, ids, mask, cache)
        kept = session.stats().kept_tokens
    _assert_identical(out, reference)
    for layer_kept in kept:  # padding is never counted
        assert layer_kept[0].tolist() == [64] * 2 and layer_kept[1].tolist() == [55] * 2


def test_prompt_shorter_than_window_is_identity(family):
    model = tiny_model(family)
    ids, mask = prompt(batch=1, length=20)
    reference = _generate(model, ids, mask)
    with lavakv.method("lava", budget=32, window=32).attach(model) as session:
        out = _generate(model, ids, mask, session.cache())
    _assert_identical(out, reference)


def test_last_prompt_logits_are_exact_under_compression(family):
    """Prefill attention is exact: the first generated token's logits never depend on the method."""
    model = tiny_model(family)
    ids, mask = prompt(batch=2, length=80, pad=(0, 11))
    reference = _generate(model, ids, mask, new=2)
    with lavakv.method("lava", budget=16, window=4).attach(model) as session:
        cache = session.cache()
        out = _generate(model, ids, mask, cache, new=2)
        assert session.stats().kept_entries < session.stats().prompt_tokens.sum() * 2 * len(cache.compressible_layers())
    assert torch.equal(out.logits[0], reference.logits[0])


def test_model_restored_on_exit():
    model = tiny_model("llama")
    fresh = tiny_model("llama")
    ids, mask = prompt(batch=2, length=60, pad=(0, 5))
    with lavakv.method("ada-snapkv", budget=16, window=4).attach(model) as session:
        _generate(model, ids, mask, session.cache())
        assert model.config._attn_implementation == "lavakv"
    assert model.config._attn_implementation == "sdpa"
    _assert_identical(_generate(model, ids, mask), _generate(fresh, ids, mask))
    assert len(model._forward_pre_hooks) == 0


def test_model_restored_after_exception():
    model = tiny_model("qwen2")
    fresh = tiny_model("qwen2")
    ids, mask = prompt(batch=1, length=40)
    with pytest.raises(RuntimeError, match="boom"):
        with lavakv.method("lava", budget=16, window=4).attach(model) as session:
            _generate(model, ids, mask, session.cache())
            raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    _assert_identical(_generate(model, ids, mask), _generate(fresh, ids, mask))


def test_plain_cache_inside_session_is_uncompressed():
    model = tiny_model("llama")
    ids, mask = prompt(batch=2, length=50, pad=(3, 0))
    reference = _generate(model, ids, mask)
    with lavakv.method("snapkv", budget=16, window=4).attach(model):
        out = _generate(model, ids, mask)  # no lavakv cache: transformers' DynamicCache, exact SDPA
    _assert_identical(out, reference)


@pytest.mark.parametrize("native", [True, False])
def test_ragged_and_dense_storage_agree(monkeypatch, native):
    """The same kept entries give the same decode through the ragged path as through dense SDPA.

    With ``native`` the decode steps go through the C kernel (padded batch: tail masks), else the PyTorch ones.
    """
    from lavakv.attention import ragged as kernels
    from lavakv.cache.storage import RaggedKV
    from lavakv.runtime import compressor as runtime

    calls = []
    if native:
        if kernels.native.ragged_decode() is None:
            pytest.skip("no C compiler: the native kernel cannot be built here")
        real = kernels.native_attention
        monkeypatch.setattr(kernels, "native_attention", lambda *a: calls.append(1) or real(*a))
    else:
        monkeypatch.setattr(kernels, "native_applies", lambda *a: False)

    model = tiny_model("llama", heads=8, kv_heads=2)
    ids, mask = prompt(batch=2, length=70)
    with lavakv.method("snapkv", budget=24, window=4).attach(model) as session:
        dense = _generate(model, ids, mask, session.cache(), new=6)
    monkeypatch.setattr(runtime, "compact", lambda k, v, lengths, **_: RaggedKV(k, v, lengths))
    with lavakv.method("snapkv", budget=24, window=4).attach(model) as session:
        cache = session.cache()
        ragged = _generate(model, ids, mask, cache, new=6)
        assert all(layer.prefix is not None for layer in cache.layers)
    assert len(calls) == (5 * len(cache.layers) if native else 0)  # every decode step after the first token
    assert torch.equal(dense.sequences, ragged.sequences)
    for x, y in zip(dense.logits, ragged.logits, strict=False):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


def test_query_block_after_compressed_context_matches_dense_reference(monkeypatch):
    """Query-agnostic use: compress a context, then feed a multi-token question through the compressed cache."""
    from lavakv.cache.storage import RaggedKV
    from lavakv.runtime import compressor as runtime

    model = tiny_model("qwen3", heads=6, kv_heads=3)
    ids, mask = prompt(batch=2, length=60, pad=(0, 7))
    question, _ = prompt(batch=2, length=5, seed=3)
    full_mask = torch.cat([mask, torch.ones_like(question)], dim=1)
    outs = []
    for ragged in (False, True):
        if ragged:
            monkeypatch.setattr(runtime, "compact", lambda k, v, lengths, **_: RaggedKV(k, v, lengths))
        with lavakv.method("snapkv", budget=20, window=4).attach(model) as session:
            cache = session.cache()
            with torch.no_grad():
                model(ids, attention_mask=mask, past_key_values=cache)
                with session.extending(cache):
                    outs.append(model(question, attention_mask=full_mask, past_key_values=cache).logits)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)


def test_compressed_cache_matches_transformers_over_the_kept_entries():
    """Independent reference: transformers' own DynamicCache holding exactly the kept entries, same positions."""
    from transformers import DynamicCache

    model = tiny_model("llama", heads=4, kv_heads=2, layers=2)
    ids, mask = prompt(batch=2, length=48)
    question, _ = prompt(batch=2, length=4, seed=5)
    positions = torch.arange(48, 52)[None].expand(2, -1)
    with lavakv.method("snapkv", budget=12, window=4).attach(model) as session:
        cache = session.cache()
        with torch.no_grad():
            model(ids, attention_mask=mask, past_key_values=cache)
            kept = [(layer.dense.keys.clone(), layer.dense.values.clone()) for layer in cache.layers]
            with session.extending(cache):
                ours = model(question, attention_mask=torch.ones(2, 52, dtype=torch.long), past_key_values=cache,
                             position_ids=positions).logits
    reference_cache = DynamicCache()
    for i, (k, v) in enumerate(kept):
        assert k.shape[2] == 12
        reference_cache.update(k, v, i)
    with torch.no_grad():
        reference = model(question, attention_mask=torch.ones(2, 16, dtype=torch.long),
                          past_key_values=reference_cache, position_ids=positions).logits
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_one_prefill_for_many_methods_equals_separate_runs(family):
    model = tiny_model(family, layers=4)
    ids, mask = prompt(batch=2, length=90, pad=(0, 13))
    methods = [lavakv.method(name, budget=24, window=4) for name in ("lava", "snapkv", "ada-snapkv", "cake")]
    methods.append(lavakv.method("full"))
    with methods[0].attach(model) as session:
        shared, logits = session.prefill(ids, mask, methods)
        for method, cache in zip(methods, shared, strict=False):
            alone = session.cache(method)
            with torch.no_grad():
                alone_logits = model(ids, attention_mask=mask, past_key_values=alone, logits_to_keep=1).logits[:, -1]
            assert torch.equal(alone_logits, logits)
            for a, b in zip(alone.layers, cache.layers, strict=False):
                if getattr(a, "compressible", False):
                    assert torch.equal(a.prompt_entries()[0], b.prompt_entries()[0])
                    assert torch.equal(a.prompt_entries()[1], b.prompt_entries()[1])
                else:
                    assert torch.equal(a.keys, b.keys)
            assert session.stats(alone).resident_kv_bytes == session.stats(cache).resident_kv_bytes
            new_mask = torch.cat([mask, torch.ones(2, 6, dtype=mask.dtype)], dim=1)
            full_ids = torch.cat([ids, torch.zeros(2, 6, dtype=ids.dtype)], dim=1)
            outs = []
            for c in (alone, cache):
                outs.append(model.generate(full_ids[:, :91], attention_mask=new_mask[:, :91], past_key_values=c,
                                           max_new_tokens=5, do_sample=False, pad_token_id=0))
            assert torch.equal(outs[0], outs[1])
