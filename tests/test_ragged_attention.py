"""The ragged attention strategies equal a float64 dense masked reference."""

from __future__ import annotations

import logging
import math
import os
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lavakv.attention import native
from lavakv.attention import ragged as kernels
from lavakv.attention.ragged import flat_attention, native_attention, ragged_attention, segment_attention
from lavakv.cache.storage import DenseKV, RaggedKV


def _dense_reference(query, keys, values, valid, tail_keys, tail_values, tail_valid, scaling):
    """float64, one (batch, query head) at a time, over the padded prefix + tail with explicit masks."""
    b, hq, q_len, d = query.shape
    h = keys.shape[1]
    g = hq // h
    out = torch.zeros(b, q_len, hq, values.shape[-1], dtype=torch.float64)
    for i in range(b):
        for qh in range(hq):
            kv = qh // g
            k = torch.cat([keys[i, kv][valid[i, kv]], tail_keys[i, kv]]).double()
            v = torch.cat([values[i, kv][valid[i, kv]], tail_values[i, kv]]).double()
            logits = query[i, qh].double() @ k.T * scaling  # [q, entries]
            n_prefix = int(valid[i, kv].sum())
            if tail_valid is not None:
                tail_rows = tail_valid[min(i, tail_valid.shape[0] - 1), 0]
                allowed = torch.cat([torch.ones(q_len, n_prefix, dtype=torch.bool), tail_rows], dim=1)
                logits = logits.masked_fill(~allowed, -math.inf)
            out[i, :, qh] = torch.softmax(logits, -1) @ v
    return out


STRATEGIES = {"dispatch": ragged_attention, "segments": segment_attention, "flat": flat_attention,
              "native": native_attention}


def _native_or_skip():
    """The native kernel must build wherever a C compiler exists (CI has one); skip only without a compiler."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler: the native kernel cannot be built here")
    assert native.ragged_decode() is not None, "a C compiler exists but the native kernel did not build"


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("masked", [False, True])
@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    kv_heads=st.integers(1, 3),
    group=st.integers(1, 8),
    q_len=st.sampled_from([1, 2, 5]),
    tail=st.integers(0, 6),
    max_len=st.integers(1, 12),
    seed=st.integers(0, 10_000),
)
def test_ragged_attention_matches_float64_reference(strategy, masked, batch, kv_heads, group, q_len, tail, max_len,
                                                     seed):
    g = torch.Generator().manual_seed(seed)
    d = 8
    if strategy == "native":
        _native_or_skip()
        q_len = 1  # the native kernel is for single-token decoding (ragged_attention routes nothing else to it)
    tail = max(tail, q_len)  # the current query block is part of the tail
    lengths = torch.randint(0, max_len + 1, (batch, kv_heads), generator=g)  # a head may keep nothing
    valid = torch.arange(max_len)[None, None, :] < lengths[..., None]
    keys = torch.randn(batch, kv_heads, max_len, d, generator=g)
    values = torch.randn(batch, kv_heads, max_len, d, generator=g)
    prefix = RaggedKV(keys[valid], values[valid], lengths)
    tail_keys = torch.randn(batch, kv_heads, tail, d, generator=g)
    tail_values = torch.randn(batch, kv_heads, tail, d, generator=g)
    query = torch.randn(batch, kv_heads * group, q_len, d, generator=g)
    if q_len > 1:  # causal over the new block at the end of the tail
        q_pos = torch.arange(tail - q_len, tail)
        tail_valid = (torch.arange(tail)[None, :] <= q_pos[:, None])[None, None]
    elif masked:  # a padded batch: some tail entries hidden per sequence; the newest (the query's own) visible
        tail_valid = torch.rand(batch if seed % 2 else 1, 1, 1, tail, generator=g) < 0.6
        tail_valid[..., -1] = True
    else:
        tail_valid = None
    scaling = d ** -0.5
    ours = STRATEGIES[strategy](query, prefix, tail_keys, tail_values, tail_valid, scaling)
    reference = _dense_reference(query, keys, values, valid, tail_keys, tail_values, tail_valid, scaling)
    assert ours.shape == (batch, q_len, kv_heads * group, d)
    torch.testing.assert_close(ours.double(), reference, atol=1e-5, rtol=1e-5)


def _layer(batch, kv_heads, group, lengths, tail, d, dtype=torch.float32, seed=0):
    """A ragged prefix, a tail held by a grown DenseKV (strided view) and a transposed query, as at decode time."""
    g = torch.Generator().manual_seed(seed)
    entries = int(lengths.sum())
    prefix = RaggedKV(torch.randn(entries, d, generator=g).to(dtype), torch.randn(entries, d, generator=g).to(dtype),
                      lengths)
    tail_store = DenseKV(torch.randn(batch, kv_heads, 1, d, generator=g).to(dtype),
                         torch.randn(batch, kv_heads, 1, d, generator=g).to(dtype))
    for _ in range(tail - 1):
        tail_store.append(torch.randn(batch, kv_heads, 1, d, generator=g).to(dtype),
                          torch.randn(batch, kv_heads, 1, d, generator=g).to(dtype))
    assert tail_store.capacity > tail_store.length  # the tail is a strided view of a larger buffer
    query = torch.randn(batch, 1, kv_heads * group, d, generator=g).to(dtype).transpose(1, 2)
    return query, prefix, tail_store


def _reference_for(query, prefix, tail_store):
    keys, values, valid = prefix.padded()
    return _dense_reference(query, keys, values, valid, tail_store.keys, tail_store.values, None,
                            query.shape[-1] ** -0.5)


@pytest.mark.parametrize("dtype, tol, d", [(torch.float32, 1e-5, 16), (torch.float32, 1e-5, 64),
                                           (torch.float32, 1e-5, 128), (torch.bfloat16, 3e-2, 128)])
def test_strategies_on_decode_layouts_and_large_layers(dtype, tol, d):
    """Strided tails, transposed queries, long uneven heads (several native chunks, segments picked), bf16, and
    the head dims the native kernel specialises (64, 128) beside a generic one."""
    _native_or_skip()
    lengths = torch.tensor([[700, 1, 0], [300, 1200, 45]])
    query, prefix, tail_store = _layer(2, 3, 4, lengths, tail=300, d=d, dtype=dtype)
    reference = _reference_for(query, prefix, tail_store)
    for strategy in STRATEGIES.values():
        out = strategy(query, prefix, tail_store.keys, tail_store.values, None, d**-0.5)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), reference, atol=tol, rtol=tol)


def test_dispatch_uses_flat_attention_only_for_small_layers(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels, "native_applies", lambda *a: False)
    monkeypatch.setattr(kernels, "flat_attention", lambda *a: calls.append("flat"))
    monkeypatch.setattr(kernels, "segment_attention", lambda *a: calls.append("segments"))
    limit = kernels.FLAT_WASTE_LIMIT // (2 * 8)  # entries where 2 segments x 2 rows x d=8 waste the limit
    for lengths in (torch.tensor([[10, 30]]), torch.tensor([[limit - 1, 1]]), torch.tensor([[limit, 1]])):
        query, prefix, tail_store = _layer(1, 2, 2, lengths, tail=2, d=8)
        ragged_attention(query, prefix, tail_store.keys, tail_store.values, None, 1.0)
    assert calls == ["flat", "flat", "segments"]


def test_dispatch_takes_the_native_kernel_for_cpu_decoding_only(monkeypatch):
    _native_or_skip()
    calls = []
    monkeypatch.setattr(kernels, "native_attention", lambda *a: calls.append("native"))
    monkeypatch.setattr(kernels, "flat_attention", lambda *a: calls.append("flat"))
    query, prefix, tail_store = _layer(1, 2, 2, torch.tensor([[10, 30]]), tail=3, d=8)
    ragged_attention(query, prefix, tail_store.keys, tail_store.values, None, 1.0)
    ragged_attention(query.half(), RaggedKV(prefix.keys.half(), prefix.values.half(), prefix.lengths),
                     tail_store.keys.half(), tail_store.values.half(), None, 1.0)  # float16: not native
    two_tokens = torch.cat([query, query], dim=2)
    ragged_attention(two_tokens, prefix, tail_store.keys, tail_store.values, None, 1.0)
    assert calls == ["native", "flat", "flat"]


def test_dispatch_runs_the_path_strategy_names(monkeypatch):
    calls = []
    for name in ("flash_varlen", "native", "flat", "segment"):
        function = f"{name}_attention"
        monkeypatch.setattr(kernels, function, lambda *a, function=function: calls.append(function))
    query, prefix, tail_store = _layer(1, 2, 2, torch.tensor([[10, 30]]), tail=3, d=8)
    for chosen in ("flash_varlen", "native", "flat", "segments"):
        monkeypatch.setattr(kernels, "strategy", lambda *a, chosen=chosen: chosen)
        ragged_attention(query, prefix, tail_store.keys, tail_store.values, None, 1.0)
    assert calls == ["flash_varlen_attention", "native_attention", "flat_attention", "segment_attention"]
    assert not kernels.flash_varlen_available(query)  # CPU: never flash


def test_native_build_is_cached_and_a_missing_compiler_falls_back(monkeypatch, tmp_path, caplog):
    _native_or_skip()
    monkeypatch.setenv("LAVAKV_CACHE", str(tmp_path))
    built = native.build()
    assert built.parent == tmp_path / "native" and built.exists()
    stamp = built.stat().st_mtime_ns
    assert native.build() == built and built.stat().st_mtime_ns == stamp  # cached, not rebuilt
    query, prefix, tail_store = _layer(1, 2, 3, torch.tensor([[5, 9]]), tail=4, d=8)
    expected = native_attention(query, prefix, tail_store.keys, tail_store.values, None, 0.3)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("LAVAKV_CACHE", str(tmp_path / "empty"))
    native.ragged_decode.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="lavakv.attention.native"):
            assert native.ragged_decode() is None
        assert "no working C compiler" in caplog.text
        out = ragged_attention(query, prefix, tail_store.keys, tail_store.values, None, 0.3)  # PyTorch fallback
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
        monkeypatch.delenv("CC")
        monkeypatch.setenv("LAVAKV_NATIVE", "0")
        native.ragged_decode.cache_clear()
        assert native.ragged_decode() is None
    finally:
        native.ragged_decode.cache_clear()


def test_segments_and_their_foreign_entries():
    store = RaggedKV(torch.zeros(6, 2), torch.zeros(6, 2), torch.tensor([[2, 0], [3, 1]]))
    assert store.segments() == [(0, 2), (2, 0), (2, 3), (5, 1)]
    own = ~store.foreign_entries()[:, 0]
    assert torch.equal(own, torch.tensor([[1, 1, 0, 0, 0, 0], [0] * 6, [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]]).bool())


def test_ragged_storage_holds_exactly_the_entries():
    lengths = torch.tensor([[3, 7], [1, 5]])
    keys = torch.randn(16, 4)
    store = RaggedKV(keys, keys.clone(), lengths)
    assert store.nbytes() == 16 * 4 * 4 * 2
    padded_k, _, valid = store.padded()
    assert padded_k.shape == (2, 2, 7, 4)
    assert valid.sum().item() == 16
    assert torch.equal(padded_k[0, 1, :7], keys[3:10])
    assert torch.equal(padded_k[1, 0, :1], keys[10:11])


def test_long_query_blocks_are_split_without_changing_the_result(monkeypatch):
    """A block of queries (chunked prefill, an extended question) is attended QUERY_BLOCK rows at a time: the same
    output as all rows at once, with padding visible per sequence and causality inside the block."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([[3, 0], [5, 2]])
    prefix = RaggedKV(torch.randn(10, 8, generator=g), torch.randn(10, 8, generator=g), lengths)
    tail_keys, tail_values = torch.randn(2, 2, 9, 8, generator=g), torch.randn(2, 2, 9, 8, generator=g)
    query = torch.randn(2, 4, 7, 8, generator=g)
    tail_valid = (torch.arange(9)[None, :] <= torch.arange(2, 9)[:, None])[None, None].repeat(2, 1, 1, 1)
    tail_valid[1, :, :, :3] = False  # the second sequence's first tail entries are padding
    whole = kernels.ragged_attention(query, prefix, tail_keys, tail_values, tail_valid, 0.35)
    monkeypatch.setattr(kernels, "QUERY_BLOCK", 3)
    blocked = kernels.ragged_attention(query, prefix, tail_keys, tail_values, tail_valid, 0.35)
    torch.testing.assert_close(blocked, whole, rtol=1e-6, atol=1e-6)
