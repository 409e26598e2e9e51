"""Session.compress_contexts: one context compressed by several methods from one prefill equals a separate
compress_context per method, bit for bit (held entries and the answers of forks)."""

from __future__ import annotations

import pytest
import torch
from test_generation import tiny_pair

import lavakv

W, BUDGET = 6, 24


def _held(session, ctx) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    compressor = session.compressor(ctx.cache)
    return [ctx.cache.layers[i].held_entries(compressor.valid) for i in compressor.layers]


def _entries(tensor: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The valid entries of ``tensor [batch, kv_heads, n, d]`` (``valid [batch, n]`` or ``[batch, kv_heads, n]``)."""
    return tensor[valid[:, None, :].expand(tensor.shape[:3]) if valid.dim() == 2 else valid]


def _assert_same(session, a, b) -> None:
    assert session.stats(a.cache).kept_entries == session.stats(b.cache).kept_entries
    for (ka, va, ma), (kb, vb, mb) in zip(_held(session, a), _held(session, b), strict=True):
        assert torch.equal(_entries(ka, ma), _entries(kb, mb)) and torch.equal(_entries(va, ma), _entries(vb, mb))


def test_one_prefill_equals_one_compression_per_method():
    model, tokenizer = tiny_pair(chat=True)
    ids = torch.tensor([tokenizer("Kyoto has 12 parks. Osaka has 7 bridges. Nara has 3 deer. " * 4)["input_ids"]])
    first, second = (torch.tensor([tokenizer(q)["input_ids"]]) for q in ("How many parks?", "Bridges in Osaka?"))
    methods = [lavakv.method(name, budget=BUDGET, window=W) for name in
               ("snapkv", "lava", "lava", "expected-attention", "kvzip", "lava-kvzip", "h2o")]
    methods += [lavakv.method("full"), lavakv.method("lava", budget=BUDGET, window=W, chunk_size=40),
                lavakv.method("snapkv", budget=BUDGET, window=4)]
    questions = [first, first, second, None, None, None, None, first, None, first]
    with lavakv.method("full").attach(model) as session:
        together = session.compress_contexts(ids, methods, tokenizer=tokenizer, question_ids=questions)
        for method, question, ctx in zip(methods, questions, together, strict=True):
            alone = session.compress_context(ids, tokenizer=tokenizer, question_ids=question, method=method)
            assert ctx.method == alone.method and ctx.tokens == alone.tokens == ids.shape[1]
            assert ctx.cache.get_seq_length() == ids.shape[1]  # no question, no reconstruction pass kept
            _assert_same(session, ctx, alone)
            assert torch.equal(session.extend(ctx.fork(), second).logits, session.extend(alone.fork(), second).logits)
        # the first and the second question select different entries (the passes are not mixed up)
        assert session.stats(together[1].cache).kept_entries > 0
        a, b = _held(session, together[1]), _held(session, together[2])
        assert any(not torch.equal(_entries(x[0], x[2]), _entries(y[0], y[2])) for x, y in zip(a, b, strict=True))


def test_one_question_for_every_method():
    model, tokenizer = tiny_pair(chat=True)
    ids = torch.tensor([tokenizer("Lima has 9 hills. " * 8)["input_ids"]])
    question = torch.tensor([tokenizer("Hills?")["input_ids"]])
    methods = [lavakv.method(name, budget=BUDGET, window=W) for name in ("snapkv", "lava")]
    with lavakv.method("full").attach(model) as session:
        together = session.compress_contexts(ids, methods, question_ids=question)
        for method, ctx in zip(methods, together, strict=True):
            _assert_same(session, ctx, session.compress_context(ids, question_ids=question, method=method))


def test_a_guided_context_is_not_evicted_before_its_question():
    """A method with decode_budget below the context keeps the context whole until the question scores it: the
    result equals the same method without decode_budget."""
    model, tokenizer = tiny_pair(chat=True)
    ids = torch.tensor([tokenizer("Quito has 4 lakes. " * 8)["input_ids"]])
    question = torch.tensor([tokenizer("Lakes?")["input_ids"]])
    plain = lavakv.method("lava", budget=BUDGET, window=W)
    bounded = lavakv.method("lava", budget=BUDGET, window=W, decode_budget=BUDGET + 8, decode_interval=4)
    assert ids.shape[1] > BUDGET + 8
    with lavakv.method("full").attach(model) as session:
        a, b = session.compress_contexts(ids, [plain, bounded], question_ids=question)
        _assert_same(session, a, b)
        assert session.compressor(b.cache).decode_evictions == 0


def test_bad_arguments_are_refused():
    model, tokenizer = tiny_pair(chat=True)
    ids = torch.tensor([tokenizer("Rome has 2 rivers. " * 4)["input_ids"]])
    m = lavakv.method("snapkv", budget=BUDGET, window=W)
    with lavakv.method("full").attach(model) as session:
        with pytest.raises(ValueError, match="at least one method"):
            session.compress_contexts(ids, [])
        with pytest.raises(ValueError, match="2 entries for 1 methods"):
            session.compress_contexts(ids, [m], question_ids=[None, None])
        with pytest.raises(ValueError, match="question_ids needs snapkv"):
            session.compress_contexts(ids, [m, lavakv.method("h2o", budget=BUDGET, window=W)],
                                      question_ids=[ids[:, :3], ids[:, :3]])
        with pytest.raises(ValueError, match="needs the tokenizer"):
            session.compress_contexts(ids, [lavakv.method("kvzip", budget=BUDGET, window=W)])
