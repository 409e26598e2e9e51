"""The ragged reference kernel equals a float64 dense masked reference."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lavakv.attention import ragged_attention
from lavakv.storage import RaggedKV


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
def test_ragged_attention_matches_float64_reference(batch, kv_heads, group, q_len, tail, max_len, seed):
    g = torch.Generator().manual_seed(seed)
    d = 8
    tail = max(tail, q_len)  # the current query block is part of the tail
    lengths = torch.randint(1, max_len + 1, (batch, kv_heads), generator=g)
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
    else:
        tail_valid = None
    scaling = d ** -0.5
    ours = ragged_attention(query, prefix, tail_keys, tail_values, tail_valid, scaling)
    reference = _dense_reference(query, keys, values, valid, tail_keys, tail_values, tail_valid, scaling)
    assert ours.shape == (batch, q_len, kv_heads * group, d)
    torch.testing.assert_close(ours.double(), reference, atol=1e-5, rtol=1e-5)


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
