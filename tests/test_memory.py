"""Resident bytes follow the kept entries; decode-time append is amortised."""

from __future__ import annotations

import torch
from conftest import prompt, tiny_model

import lavakv
from lavakv.cache.storage import DenseKV


def _entry_bytes(model) -> int:
    cfg = model.config
    return 2 * cfg.head_dim * torch.finfo(model.dtype).bits // 8


def test_adaptive_resident_bytes_match_kept_entries_and_beat_padding():
    model = tiny_model("llama", layers=3, heads=8, kv_heads=4, head_dim=32)
    ids, mask = prompt(batch=2, length=256, pad=(0, 30))
    with lavakv.method("ada-snapkv", budget=40, window=8).attach(model) as session:
        cache = session.cache()
        with torch.no_grad():
            model(ids, attention_mask=mask, past_key_values=cache)
        st = session.stats()
    per_entry = _entry_bytes(model)
    expected = st.kept_entries * per_entry
    assert abs(st.resident_kv_bytes - expected) <= 0.02 * expected
    padded = sum(int(k.max()) * k.numel() for k in st.kept_tokens) * per_entry
    assert any(int(k.max()) != int(k.min()) for k in st.kept_tokens), "head budgets should differ in this case"
    assert st.resident_kv_bytes < padded
    assert st.uncompressed_kv_bytes == 3 * 2 * 4 * 256 * per_entry
    # kept entries per row and layer equal the budget: kv_heads * B (window included), padding never counted
    for kept in st.kept_tokens:
        assert kept.sum(-1).tolist() == [4 * 40, 4 * 40]


def test_decode_append_is_amortised():
    model = tiny_model("qwen2", layers=2, heads=4, kv_heads=2)
    ids, mask = prompt(batch=1, length=120)
    with lavakv.method("lava", budget=24, window=4).attach(model) as session:
        cache = session.cache()
        model.generate(ids, attention_mask=mask, past_key_values=cache, max_new_tokens=201, min_new_tokens=201,
                       do_sample=False, pad_token_id=0)
        kept = session.stats().kept_tokens
    for layer, layer_kept in zip(cache.layers, kept, strict=False):
        # the prefill token's step appends nothing: 200 decode steps append 200 entries to every head
        store = layer.tail if layer.prefix is not None else layer.dense
        appended = store.length - (0 if layer.prefix is not None else layer.dense_prompt_entries)
        assert appended == 200
        lengths = layer_kept + appended
        assert (lengths == layer_kept + 200).all()
        assert store.growth_events <= 6, store.growth_events


def test_dense_buffer_growth_events_are_logarithmic():
    store = DenseKV(torch.zeros(1, 2, 10, 4), torch.zeros(1, 2, 10, 4))
    for _ in range(1000):
        store.append(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4))
    assert store.length == 1010
    assert store.growth_events <= 8
    assert torch.equal(store.keys[:, :, 10:], torch.ones(1, 2, 1000, 4))
    assert store.capacity <= 2 * 1010 + 16
