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


def test_kvzip_is_refused_as_a_follower_of_a_shared_prefill():
    """Not only the first method of a shared prefill is checked: kvzip after snapkv is refused too (it used to be
    compressed from the prompt's own queries, with no reconstruction pass)."""
    model, tokenizer = tiny_pair(chat=True)
    ids = torch.tensor([tokenizer("Kyoto has 12 parks. " * 8)["input_ids"]])
    snap, kv = lavakv.method("snapkv", budget=24, window=8), lavakv.method("kvzip", budget=24, window=8)
    with snap.attach(model) as session:
        with pytest.raises(ValueError, match="reconstruction pass"):
            session.prefill(ids, None, [snap, kv])


def _by_hand(model, tokenizer, method, context_ids: list[int], rest_ids: list[int], split: int, new: int):
    """kvzip's answer built directly: compress ids[:split] by reconstruction, feed the rest, decode greedily."""
    ids = torch.tensor([context_ids + rest_ids])
    with torch.no_grad(), method.attach(model) as session:
        cache = session.compress_context(ids[:, :split], tokenizer=tokenizer).cache
        logits = session.extend(cache, ids[:, split:]).logits[:, -1]
        first = logits[0].float().clone()
        tokens = []
        for _ in range(new):
            token = logits.argmax(-1, keepdim=True)
            tokens.append(int(token))
            logits = session.extend(cache, token).logits[:, -1]
    return first, tokens


@pytest.mark.parametrize("query_agnostic", [False, True])
def test_generate_many_fills_kvzip_by_its_reconstruction_pass(query_agnostic):
    """generate_many / lavakv.generate with kvzip beside other methods: kvzip's answer is the one built by hand
    from compress_context (query-aware: the prompt but its last token; query-agnostic: the context), and the other
    methods' answers are those of a run without kvzip."""
    from lavakv.generation import generate_many, prompt_ids

    model, tokenizer = tiny_pair(chat=True)
    context, question = "Kyoto has 12 parks. Osaka has 7 bridges. " * 8, "How many parks?"
    snap, kv = lavakv.method("snapkv", budget=24, window=8), lavakv.method("kvzip", budget=24, window=8)
    results = generate_many(model, tokenizer, context, question=question, methods=[snap, kv, None], max_new_tokens=4,
                            query_agnostic=query_agnostic)
    alone = generate_many(model, tokenizer, context, question=question, methods=[snap, None], max_new_tokens=4,
                          query_agnostic=query_agnostic)
    assert [r.text for r in (results[0], results[2])] == [r.text for r in alone]
    torch.testing.assert_close(results[0].first_token_logits, alone[0].first_token_logits, rtol=0, atol=0)
    whole, context_ids, rest_ids = prompt_ids(tokenizer, context, question)
    assert context_ids + rest_ids == whole
    split = len(context_ids) if query_agnostic else len(whole) - 1
    first, tokens = _by_hand(model, tokenizer, kv, context_ids, rest_ids, split, 4)
    torch.testing.assert_close(results[1].first_token_logits, first, rtol=1e-5, atol=1e-6)
    assert tokenizer.decode(tokens[:results[1].new_tokens], skip_special_tokens=True).strip() == results[1].text.strip()
    assert results[1].kept_entries < results[2].kept_entries


@pytest.mark.parametrize("name", ["kvzip", "lava-kvzip"])
def test_left_padded_batch_is_compressed_as_each_row_alone(name):
    """A left-padded batch's reconstruction pass repeats each row's real tokens right after the prompt (its padding
    moved to the end, standing in for no query): each row keeps what it keeps alone and answers as alone."""
    model, tokenizer = tiny_pair(chat=True)
    rows = [tokenizer(t)["input_ids"] for t in ("Kyoto has 12 parks. " * 5, "Rome has 2 rivers and 7 hills. " * 5)]
    n = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (n - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows])
    question = torch.tensor([tokenizer(" How many?")["input_ids"]])
    m = lavakv.method(name, budget=24, window=8)
    with torch.no_grad(), m.attach(model) as session:
        batch = session.compress_context(ids, mask, tokenizer=tokenizer)
        fork = batch.fork()
        both = session.extend(fork, question.expand(2, -1),
                              torch.cat([mask, torch.ones(2, question.shape[1], dtype=mask.dtype)], 1)).logits[:, -1]
        batch_kept = session.stats(batch.cache).kept_tokens
        for i, row in enumerate(rows):
            alone = session.compress_context(torch.tensor([row]), tokenizer=tokenizer)
            for kept_batch, kept_alone in zip(batch_kept, session.stats(alone.cache).kept_tokens, strict=True):
                assert kept_batch[i].tolist() == kept_alone[0].tolist()
            expected = session.extend(alone.fork(), question).logits[0, -1]
            torch.testing.assert_close(both[i], expected, rtol=1e-4, atol=1e-5)
