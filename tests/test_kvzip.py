"""The kvzip scorer (float64 reference) and its reconstruction pass in Session.compress_context."""

from __future__ import annotations

import pytest
import torch
from test_generation import tiny_pair

import lavakv
from lavakv.scorers import ScoringInputs, kvzip_scores


@pytest.mark.parametrize("block", [1, 5, 100])
def test_matches_float64_reference(block):
    generator = torch.Generator().manual_seed(2)
    b, hq, h, n, r, d, w = 2, 4, 2, 15, 11, 8, 3
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[1, :4] = False  # left padding
    inputs = ScoringInputs(torch.randn(b, hq, r, d, generator=generator), torch.randn(b, h, n, d, generator=generator),
                           torch.randn(b, h, n, d, generator=generator), valid, d ** -0.5, w)
    expected = torch.zeros(b, h, n, dtype=torch.float64)
    for row in range(b):
        for head in range(hq):
            k = inputs.keys[row, head // 2].double()[valid[row]]
            probs = torch.softmax(inputs.queries[row, head].double() @ k.T * d ** -0.5, dim=-1)  # [r, real]
            best = torch.zeros(n, dtype=torch.float64)
            best[valid[row]] = probs.amax(0)
            expected[row, head // 2] = torch.maximum(expected[row, head // 2], best)
    expected[..., -w:] = float("inf")
    expected = expected.masked_fill(~valid[:, None, :], float("-inf"))
    torch.testing.assert_close(kvzip_scores(inputs, query_block=block).double(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["kvzip", "lava-kvzip"])
def test_compress_context_by_reconstruction(name):
    """The context is compressed to its budget after one reconstruction pass; questions are answered from forks
    exactly as alone; the cache holds only the context (the reconstruction ran on a fork)."""
    model, tokenizer = tiny_pair(chat=True)
    ids = torch.tensor([tokenizer("Kyoto has 12 parks. Osaka has 7 bridges. " * 8)["input_ids"]])
    m = lavakv.method(name, budget=24, window=8)
    with m.attach(model) as session:
        ctx = session.compress_context(ids, tokenizer=tokenizer)
        stats = session.stats(ctx.cache)
        assert ctx.cache.get_seq_length() == ids.shape[1]
        layers = len(stats.kept_tokens)
        kv_heads = stats.kept_tokens[0].shape[1]
        assert abs(stats.kept_entries - layers * kv_heads * 24) <= layers * kv_heads  # floored layer shares
        first = session.extend(ctx.fork(), ids[:, :5]).logits
        again = session.extend(ctx.fork(), ids[:, :5]).logits
        assert torch.equal(first, again)


def test_kvzip_is_refused_where_it_cannot_work():
    model, tokenizer = tiny_pair(chat=True)
    ids = torch.tensor([tokenizer("Kyoto has 12 parks. " * 8)["input_ids"]])
    m = lavakv.method("kvzip", budget=24, window=8)
    with m.attach(model) as session:
        with pytest.raises(ValueError, match="reconstruction pass"):
            session.prefill(ids, None, [m])
        with pytest.raises(ValueError, match="needs the tokenizer"):
            session.compress_context(ids)
    for kwargs in (dict(decode_budget=64), dict(chunk_size=32), dict(layers="cake")):
        with pytest.raises(ValueError, match="reconstruction pass"):
            lavakv.method("kvzip", budget=24, window=8, **kwargs)


def test_short_context_keeps_every_token():
    model, tokenizer = tiny_pair(chat=True)
    ids = torch.tensor([tokenizer("Kyoto has 12 parks. " * 3)["input_ids"]])
    with lavakv.method("lava-kvzip", budget=1000, window=8).attach(model) as session:
        ctx = session.compress_context(ids, tokenizer=tokenizer)
        for kept in session.stats(ctx.cache).kept_tokens:
            assert kept.tolist() == [[ids.shape[1]] * kept.shape[1]]
