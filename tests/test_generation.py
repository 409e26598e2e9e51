"""lavakv.generation and lavakv.haystack on tiny random models with a character-level tokenizer built in code."""

from __future__ import annotations

import string

import pytest
import torch
from conftest import char_tokenizer, tiny_model

import lavakv
from lavakv.compat import cache_kwargs
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


# -- the shared pieces: prompt encoding, stop ids, decoding from a filled cache, timing ----------------------------
@pytest.mark.parametrize("chat", [False, True])
def test_prompt_ids_is_generates_layout_on_the_one_encoder(chat):
    from lavakv.generation import PromptIds, encode_prompt

    tokenizer = tiny_tokenizer(chat)
    ids = prompt_ids(tokenizer, " " + CONTEXT, QUESTION, answer_prefix="A:", chat=True)
    context = CONTEXT.strip() if chat else " " + CONTEXT
    assert ids == encode_prompt(tokenizer, context, "\n\n" + QUESTION, answer_prefix="\n\nA:")
    assert isinstance(ids, PromptIds) and tuple(ids) == (ids.whole, ids.context, ids.rest)
    text = tokenizer.decode(ids.whole)
    assert text.endswith(f"{QUESTION}\n<assistant>A:" if chat else f"{QUESTION}\n\nA:")


def test_encode_prompt_keeps_the_text_exactly():
    from lavakv.generation import count_tokens, encode_prompt

    tokenizer = tiny_tokenizer(chat=False)
    ids = encode_prompt(tokenizer, " ctx ", "q\n", answer_prefix=" ans", chat=True)  # no template: plain text
    assert tokenizer.decode(ids.whole) == " ctx q\n ans" and ids.context + ids.rest == ids.whole
    assert len(ids.context) == count_tokens(tokenizer, " ctx ")
    chat = tiny_tokenizer(chat=True)
    ids = encode_prompt(chat, " ctx ", "q\n", answer_prefix="\n ans")
    assert tokenizer.decode(ids.rest).startswith("q\n") and chat.decode(ids.rest).endswith("<assistant>ans")


def test_stop_ids_prefer_the_generation_config():
    from lavakv.generation import stop_ids

    model, tokenizer = tiny_pair()
    model.generation_config.eos_token_id = [5, 7]
    assert stop_ids(model, tokenizer) == {5, 7}
    model.generation_config.eos_token_id = None
    assert stop_ids(model, tokenizer) == {tokenizer.eos_token_id} - {None}


def test_decode_from_cache_stops_and_checks_its_arguments():
    from lavakv.generation import decode_from_cache

    model, tokenizer = tiny_pair()
    ids = torch.randint(4, len(tokenizer), (1, 60), generator=torch.Generator().manual_seed(1))
    method = lavakv.method("snapkv", budget=24, window=4)
    with method.attach(model) as session:
        (cache,), logits = session.prefill(ids, None, [method])
        first = int(logits[0].argmax())
        assert decode_from_cache(model, cache, logits, max_new_tokens=5, stops={first}).tokens == [first]
        assert cache.get_seq_length() == 60  # stopped on the first token: nothing fed
        free = decode_from_cache(model, cache, logits, max_new_tokens=4, stops=set())
        assert len(free.tokens) == 4 and not free.stopped and cache.get_seq_length() == 63
        with pytest.raises(ValueError, match="max_new_tokens"):
            decode_from_cache(model, cache, logits, max_new_tokens=0, stops=set())
        with pytest.raises(ValueError, match="one sequence"):
            decode_from_cache(model, cache, logits.expand(2, -1), max_new_tokens=2, stops=set())


def test_interleaved_timing_alternates_variants_and_reports_spread():
    from lavakv.timing import decode_step_medians, interleaved_medians, spread

    calls: list[str] = []
    timing = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 5, warmup=2)
    assert calls == ["a", "b"] * 7
    assert set(timing) == {"a", "b"} and set(timing["a"]) == {"median_s", "p10_s", "p90_s"}
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "p10": 1.0, "p90": 3.0}
    with pytest.raises(ValueError, match="repeats"):
        interleaved_medians({"a": lambda: None}, 0)

    model, tokenizer = tiny_pair()
    ids = torch.randint(4, len(tokenizer), (1, 40), generator=torch.Generator().manual_seed(2))
    methods = [lavakv.method("full"), lavakv.method("snapkv", budget=16, window=4)]
    with methods[0].attach(model) as session:
        caches, _ = session.prefill(ids, None, methods)
        times = decode_step_medians(model, {"full": caches[0], "snapkv": caches[1]}, ids[:, -1:], 3, warmup=1)
        assert [c.get_seq_length() for c in caches] == [44, 44]  # 1 warm-up + 3 timed steps each
    assert set(times) == {"full", "snapkv"} and all(t["median_ms"] > 0 for t in times.values())


@pytest.mark.real_model
def test_real_model_generate_equals_transformers_greedy_generate():
    """On the packaged smollm2: generate (shared prefill, lavakv.generation's decoding) gives the tokens of
    ``model.generate`` on an uncompressed cache."""
    from lavakv.generation import stop_ids
    from lavakv.models import ModelNotInstalledError, load_model

    try:
        model, tokenizer = load_model("smollm2-135m")
    except ModelNotInstalledError:
        pytest.skip("smollm2-135m is not installed (make models)")
    context = "The capital of France is Paris. The capital of Japan is Tokyo. " * 8
    result = generate(model, tokenizer, context, question="What is the capital of Japan?", max_new_tokens=12)
    ids = torch.tensor([prompt_ids(tokenizer, context, "What is the capital of Japan?").whole])
    with lavakv.method("full").attach(model) as session:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **cache_kwargs(session.cache()),
                             max_new_tokens=12, do_sample=False, eos_token_id=sorted(stop_ids(model, tokenizer)),
                             pad_token_id=tokenizer.pad_token_id)
    expected = out[0, ids.shape[1]:].tolist()
    assert result.new_tokens == len(expected)
    assert result.text == tokenizer.decode(expected, skip_special_tokens=True).strip()
