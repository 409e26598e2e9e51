"""Session.compress_context(ids, question_ids=...): a context compressed for a question that is not kept.

The reference recomputes, with transformers' own modules only (no lavakv), each layer's keys of the context and the
queries of the question that follows it, and keeps the top entries of the snapkv scorer over them: the cache must
hold exactly those keys, and only the context's tokens."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import lavakv
from lavakv.scorers import ScoringInputs, snapkv_scores

W, BUDGET = 6, 20


def _projections(model, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, post-RoPE ``(queries [1, hq, n, d], keys [1, h_kv, n, d])`` of an uncompressed forward."""
    config = model.config
    d = config.hidden_size // config.num_attention_heads
    positions = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
        cos, sin = model.model.rotary_emb(hidden[0], positions)
        out = []
        for layer, h in zip(model.model.layers, hidden, strict=False):
            x = layer.input_layernorm(h)
            q = layer.self_attn.q_proj(x).view(1, -1, config.num_attention_heads, d).transpose(1, 2)
            k = layer.self_attn.k_proj(x).view(1, -1, config.num_key_value_heads, d).transpose(1, 2)
            out.append(apply_rotary_pos_emb(q, k, cos, sin))
    return out


def test_kept_entries_are_the_top_scores_of_the_question_queries():
    model = tiny_model("llama", layers=2)
    generator = torch.Generator().manual_seed(3)
    context = torch.randint(0, 97, (1, 50), generator=generator)
    question = torch.randint(0, 97, (1, 9), generator=generator)
    n = context.shape[1]
    m = lavakv.method("snapkv", budget=BUDGET, window=W)
    with m.attach(model) as session:
        ctx = session.compress_context(context, question_ids=question)
        assert ctx.cache.get_seq_length() == n  # the question is not kept
        held = [ctx.cache.layers[i].held_entries(torch.ones(1, n, dtype=torch.bool)) for i in range(2)]
    for layer_idx, (queries, keys) in enumerate(_projections(model, torch.cat([context, question], dim=1))):
        context_keys = keys[:, :, :n]
        inputs = ScoringInputs(queries[:, :, -W:], context_keys, context_keys, torch.ones(1, n, dtype=torch.bool),
                               model.config.head_dim ** -0.5 if hasattr(model.config, "head_dim") else 0.25, W,
                               queries_follow=True)
        scores = snapkv_scores(inputs)  # snapkv reads no values
        kept_keys, _, valid = held[layer_idx]
        for head in range(keys.shape[1]):
            got = kept_keys[0, head][valid[0, head] if valid.dim() == 3 else valid[0]]  # [BUDGET, d]
            distance = (got[:, None, :] - context_keys[0, head][None]).abs().amax(-1)  # [BUDGET, n]
            assert bool((distance.amin(-1) < 1e-5).all())  # every held key is a context key
            positions = distance.argmin(-1)
            assert positions.unique().numel() == BUDGET and bool((positions[1:] > positions[:-1]).all())
            # the held positions carry the BUDGET largest scores (max pooling makes ties: compare values, not indices)
            torch.testing.assert_close(scores[0, head, positions].sort().values,
                                       scores[0, head].topk(BUDGET).values.sort().values, rtol=1e-5, atol=1e-7)


def test_queries_that_follow_see_every_key():
    """With ``queries_follow`` the window attention is the float64 softmax over every valid key (no causal mask)."""
    generator = torch.Generator().manual_seed(0)
    b, hq, h, n, w, d = 2, 4, 2, 12, 3, 8
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[1, :5] = False
    q = torch.randn(b, hq, w, d, generator=generator)
    k = torch.randn(b, h, n, d, generator=generator)
    inputs = ScoringInputs(q, k, k, valid, d ** -0.5, w, queries_follow=True)
    logits = (q.double().view(b, h, 2 * w, d) @ k.double().transpose(-1, -2)).view(b, hq, w, n) * d ** -0.5
    expected = torch.softmax(logits.masked_fill(~valid[:, None, None, :], float("-inf")), dim=-1)
    torch.testing.assert_close(inputs.window_attention().double(), expected, rtol=1e-5, atol=1e-7)
    causal = ScoringInputs(q, k, k, valid, d ** -0.5, w).window_attention()
    assert causal[0, 0, 0, -1] == 0 and inputs.window_attention()[0, 0, 0, -1] > 0


def test_answers_from_a_guided_context_equal_separate_runs():
    """Each question is answered from a fork exactly as from its own guided compression."""
    model = tiny_model("llama", layers=2)
    generator = torch.Generator().manual_seed(4)
    context = torch.randint(0, 97, (1, 60), generator=generator)
    first, second = (torch.randint(0, 97, (1, 7), generator=generator) for _ in range(2))
    m = lavakv.method("lava", budget=BUDGET, window=W)
    with m.attach(model) as session:
        ctx = session.compress_context(context, question_ids=first)
        shared = [session.extend(ctx.fork(), q).logits for q in (first, second)]
    with m.attach(model) as session:
        alone = session.extend(session.compress_context(context, question_ids=first).fork(), second).logits
    assert torch.equal(shared[1], alone)
    assert not torch.equal(shared[0][:, -1], shared[1][:, -1])


@pytest.mark.parametrize("name", ["expected-attention", "h2o", "knorm", "streamingllm"])
def test_scorers_that_do_not_read_window_attention_refuse_a_question(name):
    model = tiny_model("llama", layers=2)
    ids = torch.randint(0, 97, (1, 40))
    with lavakv.method(name, budget=BUDGET, window=W).attach(model) as session:
        with pytest.raises(ValueError, match="question_ids needs snapkv, lava, tova or cake"):
            session.compress_context(ids, question_ids=ids[:, :5])


def test_bad_questions_are_refused():
    model = tiny_model("llama", layers=2)
    ids = torch.randint(0, 97, (2, 40))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with lavakv.method("snapkv", budget=BUDGET, window=W).attach(model) as session:
        with pytest.raises(ValueError, match="context's batch"):
            session.compress_context(ids, question_ids=ids[:1, :5])
        with pytest.raises(ValueError, match="tokens >= 1"):
            session.compress_context(ids, question_ids=ids[:, :0])
        with pytest.raises(ValueError, match="unpadded contexts only"):
            session.compress_context(ids, mask, question_ids=ids[:, :5])
    with lavakv.method("snapkv", budget=BUDGET, window=W, chunk_size=16).attach(model) as session:
        with pytest.raises(ValueError, match="drop chunk_size"):
            session.compress_context(ids, question_ids=ids[:, :5])


def test_full_ignores_nothing_and_keeps_everything():
    """``full`` with a question keeps the whole context (nothing to score)."""
    model = tiny_model("llama", layers=2)
    ids = torch.randint(0, 97, (1, 30))
    with lavakv.method("full").attach(model) as session:
        ctx = session.compress_context(ids, question_ids=ids[:, :4])
        assert ctx.cache.get_seq_length() == 30
        assert session.stats(ctx.cache).kept_entries == 30 * 2 * model.config.num_key_value_heads


def test_only_queries_that_follow_the_context_skip_the_causal_mask(monkeypatch):
    """The scorer sees ``queries_follow=True`` when a question scores a stored context, never in a prompt's own
    prefill (its window queries are the prompt's last positions)."""
    from lavakv.scorers import Scorer

    seen: list[bool] = []
    original = Scorer.__call__
    monkeypatch.setattr(Scorer, "__call__", lambda self, inputs: seen.append(inputs.queries_follow) or
                        original(self, inputs))
    model = tiny_model("llama", layers=2)
    ids = torch.randint(0, 97, (1, 40))
    with lavakv.method("snapkv", budget=BUDGET, window=W).attach(model) as session:
        session.prefill(ids, None, [session.method])
        assert seen and not any(seen)
        seen.clear()
        session.compress_context(ids, question_ids=ids[:, :5])
        assert seen and all(seen)


@pytest.mark.parametrize("question", [False, True])
def test_a_session_compresses_a_context_with_any_method(question):
    """``compress_context(..., method=m)`` in a session attached with ``full`` equals a session attached with m."""
    model = tiny_model("llama", layers=2)
    generator = torch.Generator().manual_seed(5)
    context = torch.randint(0, 97, (1, 45), generator=generator)
    asked = torch.randint(0, 97, (1, 8), generator=generator)
    m = lavakv.method("lava", budget=BUDGET, window=W)
    kwargs = {"question_ids": asked} if question else {}
    with lavakv.method("full").attach(model) as session:
        shared = session.extend(session.compress_context(context, method=m, **kwargs).fork(), asked).logits
    with m.attach(model) as session:
        own = session.extend(session.compress_context(context, **kwargs).fork(), asked).logits
    assert torch.equal(shared, own)
