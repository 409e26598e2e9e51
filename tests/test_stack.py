"""Session.stack and decode_batch: several caches of one length continued as one batch, each row as its own cache
(up to float rounding of the batched computation)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

import lavakv
from lavakv.generation import decode_batch, decode_from_cache

W = 6
NAMES = ["snapkv", "lava", "streamingllm", "h2o"]


def _filled(session, ids):
    methods = [lavakv.method("full")] + [lavakv.method(name, budget=20, window=W) for name in NAMES]
    caches, logits = session.prefill(ids, None, methods)
    return caches, logits


def _step(session, cache, tokens: torch.Tensor) -> torch.Tensor:
    """Feed ``tokens [rows, 1]`` at the cache's next position; logits ``[rows, vocab]``."""
    past = cache.get_seq_length()
    rows = tokens.shape[0]
    out = session.model(tokens, attention_mask=torch.ones(rows, past + 1, dtype=torch.long),
                        position_ids=torch.full((rows, 1), past), past_key_values=cache, logits_to_keep=1)
    return out.logits[:, -1]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_each_row_continues_as_its_own_cache(family):
    model = tiny_model(family, layers=3)
    ids = torch.randint(0, 97, (1, 60), generator=torch.Generator().manual_seed(1))
    forced = torch.randint(0, 97, (8,), generator=torch.Generator().manual_seed(2))
    with lavakv.method("full").attach(model) as session:
        caches, _ = _filled(session, ids)
        stacked = session.stack(caches)
        assert stacked.get_seq_length() == 60 and stacked.layers[0].batch == len(caches)
        assert session.stats(stacked).kept_entries == sum(session.stats(c).kept_entries for c in caches)
        for token in forced:  # teacher forcing: the same tokens through the stack and through each cache
            together = _step(session, stacked, token.reshape(1, 1).expand(len(caches), 1))
            alone = torch.cat([_step(session, cache, token.reshape(1, 1)) for cache in caches])
            torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(alone[0], alone[1])  # the rows do differ (full vs snapkv)


def test_forks_of_a_context_take_a_question_in_one_batch():
    model = tiny_model("llama", layers=2)
    generator = torch.Generator().manual_seed(3)
    context = torch.randint(0, 97, (1, 50), generator=generator)
    question = torch.randint(0, 97, (1, 7), generator=generator)
    methods = [lavakv.method(name, budget=18, window=W) for name in ("lava", "snapkv")]
    with lavakv.method("full").attach(model) as session:
        contexts = session.compress_contexts(context, methods, question_ids=[question, None])
        stacked = session.stack([ctx.cache for ctx in contexts])
        together = session.extend(stacked, question.expand(2, -1)).logits[:, -1]
        alone = torch.cat([session.extend(ctx.fork(), question).logits[:, -1] for ctx in contexts])
        torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
        assert contexts[0].cache.get_seq_length() == 50  # stacking copied: the contexts are untouched


def test_decode_batch_ends_each_row_on_its_own():
    model = tiny_model("llama", layers=2)
    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(4))
    with lavakv.method("full").attach(model) as session:
        caches, logits = _filled(session, ids)
        singles = [decode_from_cache(model, session.fork(c), logits, max_new_tokens=6, stops=set()) for c in caches]
        stop = singles[2].tokens[1]  # a token the third row makes second: that row stops there
        rows = decode_batch(model, session.stack(caches), logits.expand(len(caches), -1), max_new_tokens=6,
                            stops={stop})
        assert rows[2].stopped and rows[2].tokens == singles[2].tokens[:2]
        for row, single in zip(rows, singles, strict=True):
            end = single.tokens.index(stop) + 1 if stop in single.tokens else 6
            assert row.tokens == single.tokens[:end] and row.stopped == (stop in single.tokens)
        with pytest.raises(ValueError, match="max_new_tokens"):
            decode_batch(model, session.stack(caches), logits, max_new_tokens=0, stops=set())


def test_bad_stacks_are_refused():
    model = tiny_model("llama", layers=2)
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(5))
    m = lavakv.method("snapkv", budget=20, window=W)
    with m.attach(model) as session:
        with pytest.raises(ValueError, match="at least one cache"):
            session.stack([])
        with pytest.raises(ValueError, match="holds nothing yet"):
            session.stack([session.cache()])
        (short,), _ = session.prefill(ids[:1, :30], None, [m])
        (long,), _ = session.prefill(ids[:1], None, [m])
        with pytest.raises(ValueError, match="different lengths"):
            session.stack([short, long])
        mask = torch.ones_like(ids)
        mask[1, :4] = 0
        (padded,), _ = session.prefill(ids, mask, [m])
        with pytest.raises(ValueError, match="left-padded"):
            session.stack([padded])
        bounded = lavakv.method("snapkv", budget=20, window=W, decode_budget=36, decode_interval=4)
        (evicting,), _ = session.prefill(ids[:1], None, [bounded])
        with pytest.raises(ValueError, match="decode_budget"):
            session.stack([long, evicting])


def test_decode_batch_refuses_padding_and_a_row_mismatch():
    model = tiny_model("llama", layers=2)
    ids = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(6))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with lavakv.method("full").attach(model) as session:
        (padded,), logits = session.prefill(ids, mask, [lavakv.method("full")])
        with pytest.raises(ValueError, match="unpadded cache"):
            decode_batch(model, padded, logits, max_new_tokens=2, stops=set())
        (plain,), logits = session.prefill(ids, None, [lavakv.method("full")])
        with pytest.raises(ValueError, match="one row per logits row"):
            decode_batch(model, plain, logits[:1], max_new_tokens=2, stops=set())
