"""lavakv.generation and lavakv.haystack on tiny random models with a character-level tokenizer built in code."""

from __future__ import annotations

import string

import pytest
import torch
from conftest import char_tokenizer, tiny_model

import lavakv
from lavakv.generation import generate, prompt_ids
from lavakv.haystack import answer_correct, build_haystack, normalize

CONTEXT = "The weather in Oslo was mild on Monday. Kyoto has 12 parks. " * 6
QUESTION = "How many parks has Kyoto?"


tiny_tokenizer = char_tokenizer  # shared, see conftest.py


def tiny_pair(family: str = "llama", chat: bool = False):
    """``(model, tokenizer)``: a tiny random decoder whose vocabulary matches :func:`tiny_tokenizer`."""
    tokenizer = tiny_tokenizer(chat)
    return tiny_model(family, vocab=len(tokenizer)), tokenizer


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("chat", [False, True])
def test_small_budget_keeps_fewer_entries_in_both_modes(agnostic, chat):
    model, tokenizer = tiny_pair(chat=chat)
    result = generate(model, tokenizer, CONTEXT, question=QUESTION, method=lavakv.method("lava", budget=24, window=8),
                      max_new_tokens=6, query_agnostic=agnostic)
    full = generate(model, tokenizer, CONTEXT, question=QUESTION, max_new_tokens=6, query_agnostic=agnostic)
    layers = model.config.num_hidden_layers
    kv_heads = model.config.num_key_value_heads
    assert full.kept_entries == full.compressed_tokens * layers * kv_heads
    assert result.kept_entries <= 24 * layers * kv_heads < full.kept_entries
    assert result.resident_kv_bytes < result.uncompressed_kv_bytes
    assert result.prompt_tokens == full.prompt_tokens > 0
    assert 1 <= result.new_tokens <= 6 and isinstance(result.text, str)
    assert result.prefill_seconds > 0 and result.decode_seconds >= 0
    if agnostic:
        assert result.compressed_tokens < result.prompt_tokens
    else:
        assert result.compressed_tokens == result.prompt_tokens


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_budget_above_prompt_gives_the_same_text_as_full(family):
    model, tokenizer = tiny_pair(family)
    full = generate(model, tokenizer, CONTEXT, question=QUESTION, method="full", max_new_tokens=8)
    big = generate(model, tokenizer, CONTEXT, question=QUESTION, method=lavakv.method("lava", budget=4096),
                   max_new_tokens=8)
    assert big.text == full.text and big.new_tokens == full.new_tokens
    assert torch.equal(big.first_token_logits, full.first_token_logits)
    assert big.kept_entries == full.kept_entries


def test_query_agnostic_large_budget_matches_uncompressed_agnostic_run():
    model, tokenizer = tiny_pair(chat=True)
    kwargs = dict(question=QUESTION, max_new_tokens=8, query_agnostic=True, answer_prefix="Kyoto has")
    full = generate(model, tokenizer, CONTEXT, method=None, **kwargs)
    big = generate(model, tokenizer, CONTEXT, method=lavakv.method("snapkv", budget=4096, window=8), **kwargs)
    assert big.text == full.text
    assert torch.equal(big.first_token_logits, full.first_token_logits)


def test_query_aware_first_token_logits_are_exact_under_compression():
    model, tokenizer = tiny_pair()
    full = generate(model, tokenizer, CONTEXT, question=QUESTION, max_new_tokens=1)
    small = generate(model, tokenizer, CONTEXT, question=QUESTION, method=lavakv.method("ada-snapkv", budget=16,
                     window=4), max_new_tokens=1)
    assert torch.equal(small.first_token_logits, full.first_token_logits)
    assert small.new_tokens == 1 and small.decode_ms_per_token is None


def test_continuation_without_question():
    model, tokenizer = tiny_pair()
    result = generate(model, tokenizer, CONTEXT, method=lavakv.method("snapkv", budget=16, window=4), max_new_tokens=3)
    assert result.prompt_tokens == len(CONTEXT)  # char-level, no special tokens added


def test_agnostic_prompt_splits_after_the_context():
    tokenizer = tiny_tokenizer(chat=True)
    whole, context_part, rest = prompt_ids(tokenizer, CONTEXT, QUESTION, answer_prefix="A:")
    assert context_part + rest == whole  # character tokens never merge across the seam
    assert tokenizer.decode(context_part).endswith(CONTEXT.strip())
    assert tokenizer.decode(rest).startswith("\n\n" + QUESTION) and tokenizer.decode(rest).endswith("<assistant>A:")


@pytest.mark.parametrize("kwargs,match", [
    (dict(context="   "), "context is empty"),
    (dict(context=CONTEXT, question=" "), "question is empty"),
    (dict(context=CONTEXT, query_agnostic=True), "needs a question"),
    (dict(context=CONTEXT, max_new_tokens=0), "max_new_tokens"),
    (dict(context=CONTEXT, method="lava"), "needs a budget"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    model, tokenizer = tiny_pair()
    with pytest.raises(ValueError, match=match):
        generate(model, tokenizer, **kwargs)


# -- haystack ------------------------------------------------------------------------------------------------------
def test_haystack_length_needle_depth_and_determinism():
    tokenizer = tiny_tokenizer()
    hay = build_haystack(tokenizer, 600, depth=0.0, seed=3)
    assert 450 <= hay.tokens <= 600
    assert len(tokenizer(hay.context, add_special_tokens=False)["input_ids"]) == hay.tokens
    needle = f"The special magic number for {hay.key} is: {hay.answer}."
    assert hay.context.startswith(needle) and hay.context.count("magic number") == 1
    assert hay.question == f"What is the special magic number for {hay.key}?"
    assert len(hay.answer) == 7 and hay.answer.isdigit()
    assert build_haystack(tokenizer, 600, depth=0.0, seed=3) == hay
    assert build_haystack(tokenizer, 600, depth=0.0, seed=4).context != hay.context
    deep = build_haystack(tokenizer, 600, depth=1.0, seed=3)
    assert deep.context.endswith(needle)
    middle = build_haystack(tokenizer, 600, depth=0.5, seed=3)
    assert 0.3 < middle.context.index(needle) / len(middle.context) < 0.7


@pytest.mark.parametrize("kwargs,match", [
    (dict(target_tokens=600, depth=1.5), "depth must be"),
    (dict(target_tokens=20, depth=0.5), "too small"),
])
def test_haystack_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_haystack(tiny_tokenizer(), **kwargs)


@pytest.mark.parametrize("prediction,answer,correct", [
    ("1234567.", "1234567", True),
    ("The number is 1,234,567!", "1234567", True),
    (" it is:  1234567\n", "1234567", True),
    ("1234", "1234567", False),
    ("", "1234567", False),
    ("anything", "", False),
    ("Paris, FRANCE", "paris france", True),
])
def test_answer_correct_is_a_normalised_substring_match(prediction, answer, correct):
    assert answer_correct(prediction, answer) is correct


def test_normalize():
    assert normalize("  A, b;  C-1,000 ") == "a b c 1000"


@pytest.mark.parametrize("agnostic", [False, True])
def test_generate_many_equals_separate_runs(agnostic):
    from lavakv.generation import generate_many

    model, tok = tiny_pair("llama")
    context = " ".join(string.ascii_lowercase[i % 26] for i in range(150))
    methods = [None, lavakv.method("lava", budget=16, window=4), lavakv.method("snapkv", budget=24, window=4),
               lavakv.method("ada-snapkv", compression_ratio=0.7, window=4)]
    together = generate_many(model, tok, context, question="q r s", methods=methods, max_new_tokens=6,
                             query_agnostic=agnostic)
    for m, shared in zip(methods, together, strict=True):
        alone = generate(model, tok, context, question="q r s", method=m, max_new_tokens=6, query_agnostic=agnostic)
        assert shared.text == alone.text
        assert shared.kept_entries == alone.kept_entries
        assert shared.resident_kv_bytes == alone.resident_kv_bytes
        assert torch.equal(shared.first_token_logits, alone.first_token_logits)
