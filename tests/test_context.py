"""Compressed contexts: compress once, answer many questions from forks, save and load."""

from __future__ import annotations

import pytest
import torch
from conftest import prompt, tiny_model
from test_generation import tiny_pair

import lavakv
from lavakv.cache.compressed import CompressedLayer


def _answer(model, session, cache, question, new=8):
    """Feed ``question [1, q]`` through ``cache`` and decode ``new`` greedy tokens; the logits of every step."""
    out = session.extend(cache, question)
    steps = [out.logits[0, -1]]
    with torch.no_grad():
        for _ in range(new):
            token = steps[-1].argmax().reshape(1, 1)
            steps.append(model(token, past_key_values=cache).logits[0, -1])
    return torch.stack(steps)


@pytest.mark.parametrize("name", ["lava", "snapkv", "streamingllm"])
def test_each_question_is_answered_as_if_it_were_the_only_one(name):
    """Forks of one compressed context answer q1 then q2 exactly as a fresh compression answering only q2, and
    the context itself is unchanged by its forks (they share storage, copy on append)."""
    model = tiny_model("llama", layers=3)
    ids, _ = prompt(batch=1, length=160)
    questions = [prompt(batch=1, length=n, seed=s)[0] for n, s in ((12, 7), (9, 8), (15, 9))]
    m = lavakv.method(name, budget=40, window=8)
    with m.attach(model) as session:
        ctx = session.compress_context(ids)
        before = [[t.clone() for t in layer.prompt_entries()] for layer in ctx.cache.layers]
        shared = [_answer(model, session, ctx.fork(), q) for q in questions]
        for q, answer in zip(questions, shared, strict=True):
            alone = _answer(model, session, session.compress_context(ids).fork(), q)
            assert torch.equal(alone, answer)
        after = [layer.prompt_entries() for layer in ctx.cache.layers]
        for x, y in zip(before, after, strict=True):
            assert all(torch.equal(a, b) for a, b in zip(x, y, strict=True))
        assert ctx.cache.get_seq_length() == 160
        # forks share the context's stored K/V until they append
        fork = ctx.fork()
        for mine, theirs in zip(fork.layers, ctx.cache.layers, strict=True):
            store, other = (mine.prefix or mine.dense), (theirs.prefix or theirs.dense)
            assert store.keys.data_ptr() == other.keys.data_ptr()


def test_generate_with_questions_equals_one_question_at_a_time():
    model, tokenizer = tiny_pair(chat=True)
    context = "Kyoto has 12 parks. Osaka has 7 bridges. " * 12
    questions = ["How many parks?", "How many bridges?"]
    m = lavakv.method("lava", budget=32, window=8)
    results = lavakv.generate(model, tokenizer, context, questions=questions, method=m, max_new_tokens=6)
    assert len(results) == 2
    for q, result in zip(questions, results, strict=True):
        alone = lavakv.generate(model, tokenizer, context, questions=[q], method=m, max_new_tokens=6)[0]
        assert result.text == alone.text
        assert torch.equal(result.first_token_logits, alone.first_token_logits)
        assert result.compressed_tokens < result.prompt_tokens


def test_bad_question_lists_are_refused():
    model, tokenizer = tiny_pair(chat=True)
    m = lavakv.method("lava", budget=32, window=8)
    for questions, match in (([], "non-empty list"), (["ok", " "], "question 1 is empty"), ("one", "non-empty list")):
        with pytest.raises(ValueError, match=match):
            lavakv.generate(model, tokenizer, "some context " * 10, questions=questions, method=m)
    with pytest.raises(ValueError, match="not both"):
        lavakv.generate(model, tokenizer, "some context " * 10, question="a", questions=["b"], method=m)


@pytest.mark.parametrize("name", ["lava", "snapkv"])
def test_save_load_round_trip_is_bit_exact(tmp_path, name):
    model = tiny_model("llama", layers=3)
    ids, _ = prompt(batch=1, length=150)
    question = prompt(batch=1, length=10, seed=4)[0]
    m = lavakv.method(name, budget=40, window=8, decode_budget=64, decode_interval=8)
    path = tmp_path / "ctx.safetensors"
    with m.attach(model) as session:
        ctx = session.compress_context(ids)
        ctx.save(path)
        expected = _answer(model, session, ctx.fork(), question, new=40)
    with m.attach(model) as session:  # a new session (as in another process) reading the file
        loaded = session.load_context(path)
        assert loaded.tokens == 150
        for a, b in zip(ctx.cache.layers, loaded.cache.layers, strict=True):
            assert isinstance(b, CompressedLayer)
            for x, y in zip(a.prompt_entries(), b.prompt_entries(), strict=True):
                assert torch.equal(x, y)
            assert torch.equal(a.recent_queries(), b.recent_queries())
        assert torch.equal(_answer(model, session, loaded.fork(), question, new=40), expected)


@pytest.mark.parametrize(("name", "options", "length"), [
    ("full", {}, 60),  # full keeps the context whole: no budget to save
    ("snapkv", {"budget": 128, "window": 8}, 60),  # budget >= context: no layer evicted anything
    ("lava", {"compression_ratio": 0.5, "window": 8}, 6),  # a context no longer than the window
])
def test_save_load_round_trip_of_an_uncompressed_context(tmp_path, name, options, length):
    """Contexts that compress nothing save and load bit-exact (they used to fail: no budget, or the model's own
    non-contiguous K/V view)."""
    model = tiny_model("llama", layers=2)
    ids, _ = prompt(batch=1, length=length)
    question = prompt(batch=1, length=5, seed=4)[0]
    m = lavakv.method(name, **options)
    path = tmp_path / "ctx.safetensors"
    with m.attach(model) as session:
        ctx = session.compress_context(ids)
        ctx.save(path)
        expected = _answer(model, session, ctx.fork(), question, new=6)
    with m.attach(model) as session:
        loaded = session.load_context(path)
        assert loaded.tokens == length
        assert torch.equal(_answer(model, session, loaded.fork(), question, new=6), expected)


def test_loading_into_another_model_method_or_tokenizer_is_refused(tmp_path):
    model, tokenizer = tiny_pair(chat=True)
    ids = torch.tensor([tokenizer("Kyoto has 12 parks. " * 6)["input_ids"]])
    m = lavakv.method("lava", budget=24, window=8)
    path = tmp_path / "ctx.safetensors"
    with m.attach(model) as session:
        session.compress_context(ids, tokenizer=tokenizer).save(path)
    with lavakv.method("snapkv", budget=24, window=8).attach(model) as session:
        with pytest.raises(ValueError, match="method differs in .*name .saved .lava., given .snapkv."):
            session.load_context(path)
    other = tiny_model("llama", layers=2, seed=3)
    with m.attach(other) as session:
        with pytest.raises(ValueError, match="model differs in"):
            session.load_context(path)
    changed = tiny_pair(chat=True)[1]
    changed.add_tokens(["<extra>"])
    with m.attach(model) as session:
        with pytest.raises(ValueError, match="tokenizer differs in"):
            session.load_context(path, tokenizer=changed)
        assert session.load_context(path, tokenizer=tokenizer).tokens == ids.shape[1]
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with m.attach(model) as session:
        with pytest.raises(ValueError, match="not a saved lavakv context"):
            session.load_context(tmp_path / "junk.safetensors")
        with pytest.raises(FileNotFoundError, match="no saved context"):
            session.load_context(tmp_path / "missing.safetensors")


def test_loading_into_a_fine_tuned_model_or_another_dtype_is_refused(tmp_path):
    """The weight hash read only the embeddings and the first key projection (a merged adapter on q_proj / v_proj
    loaded silently), and a context saved in bfloat16 loaded into the float32 model and failed inside attention."""
    model = tiny_model("llama", layers=2)
    ids, _ = prompt(batch=1, length=60)
    m = lavakv.method("lava", budget=24, window=8)
    path, half = tmp_path / "ctx.safetensors", tmp_path / "bf16.safetensors"
    with m.attach(model) as session:
        session.compress_context(ids).save(path)
    tuned = tiny_model("llama", layers=2)
    with torch.no_grad():
        tuned.model.layers[1].self_attn.v_proj.weight.add_(1e-3)  # as a merged low-rank update would
    with m.attach(tuned) as session, pytest.raises(ValueError, match="model differs in weights_sha256"):
        session.load_context(path)
    model.to(torch.bfloat16)
    with m.attach(model) as session:
        session.compress_context(ids).save(half)
    model.float()  # bfloat16 weights are exact in float32: the weight hash alone cannot tell them apart
    with m.attach(model) as session:
        with pytest.raises(ValueError, match="holds torch.bfloat16 K/V and the model runs in torch.float32"):
            session.load_context(half)
    model.to(torch.bfloat16)
    with m.attach(model) as session:
        assert session.load_context(half).tokens == ids.shape[1]  # in its own dtype it loads


def test_a_cache_continues_in_the_dtype_it_was_filled_in():
    model = tiny_model("llama", layers=2)
    ids, mask = prompt(batch=1, length=60)
    m = lavakv.method("snapkv", budget=24, window=8)
    with m.attach(model) as session, torch.no_grad():
        first = session.compress_context(ids)
        model.to(torch.bfloat16)
        second = session.compress_context(ids)
        with pytest.raises(RuntimeError, match="this cache holds torch.float32 K/V on cpu and the model now gives "
                                               "torch.bfloat16"):
            session.extend(first.fork(), ids[:, :3])
        with pytest.raises(ValueError, match="stack: the caches hold layer 0's K/V in different dtypes"):
            session.stack([first.fork(), second.fork()])


def test_the_fingerprint_reads_what_is_here_of_an_offloaded_model():
    """accelerate leaves offloaded parameters on the meta device: the hash names them (and their shapes) only."""
    from lavakv.runtime.context import model_fingerprint

    model = tiny_model("llama", layers=2)
    before = model_fingerprint(model)["weights_sha256"]
    layer = model.model.layers[1].mlp
    layer.down_proj.weight = torch.nn.Parameter(torch.empty_like(layer.down_proj.weight, device="meta"))
    offloaded = model_fingerprint(model)["weights_sha256"]
    assert offloaded != before and offloaded == model_fingerprint(model)["weights_sha256"]
