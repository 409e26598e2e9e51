"""Misuse is refused with a clear error or handled exactly, never silently wrong or a silent no-op."""

from __future__ import annotations

import logging
import threading

import pytest
import torch
from conftest import prompt, tiny_model
from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

import lavakv
from lavakv.cache import CompressedLayer


def _mistral(sliding_window: int | None, layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=8192,
                           sliding_window=sliding_window)
    model = MistralForCausalLM(config)
    model.set_attn_implementation("sdpa")
    return model.eval()


def _greedy(model, ids, mask, cache=None, new=4):
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, past_key_values=cache, max_new_tokens=new,
                              min_new_tokens=new, do_sample=False, pad_token_id=0, output_scores=True,
                              return_dict_in_generate=True)


# -- 1. sliding-window configs ---
def test_mistral_default_sliding_window_compresses():
    """Mistral-7B-v0.1 ships sliding_window=4096: a shorter prompt is full attention and is compressed."""
    model = _mistral(4096)
    ids, mask = prompt(batch=2, length=90, pad=(0, 7))
    with lavakv.method("snapkv", budget=24, window=4).attach(model) as session:
        cache = session.cache()
        _greedy(model, ids, mask, cache)
        stats = session.stats(cache)
    assert stats.layers == [0, 1]
    assert all(k.sum(-1).tolist() == [2 * 24, 2 * 24] for k in stats.kept_tokens)
    assert stats.resident_kv_bytes < stats.uncompressed_kv_bytes


def test_sliding_layer_inside_window_decodes_like_uncompressed_at_full_budget():
    model = _mistral(200)
    ids, mask = prompt(batch=2, length=90, pad=(0, 7))
    reference = _greedy(model, ids, mask)
    with lavakv.method("lava", budget=90, window=4).attach(model) as session:
        out = _greedy(model, ids, mask, session.cache())
    assert torch.equal(out.sequences, reference.sequences)
    for x, y in zip(out.scores, reference.scores, strict=True):
        assert torch.equal(x, y)


def test_qwen2_use_sliding_window_layers_are_compressed_when_the_prompt_fits():
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         use_sliding_window=True, sliding_window=512, max_window_layers=2)
    model = Qwen2ForCausalLM(config).eval()
    model.set_attn_implementation("sdpa")
    ids, mask = prompt(batch=1, length=80)
    with lavakv.method("ada-snapkv", budget=20, window=4).attach(model) as session:
        cache = session.cache()
        _greedy(model, ids, mask, cache, new=2)
        stats = session.stats(cache)
    assert stats.layers == [0, 1, 2, 3]
    assert all(layer.compressed for layer in cache.layers)


def test_prompt_longer_than_every_sliding_window_says_it_compressed_nothing(caplog):
    model = _mistral(32)
    ids, mask = prompt(batch=1, length=60)
    reference = _greedy(model, ids, mask, new=3)
    with caplog.at_level(logging.WARNING, logger="lavakv"), lavakv.method("snapkv", budget=8, window=4).attach(
            model) as session:
        cache = session.cache()
        out = _greedy(model, ids, mask, cache, new=3)
        stats = session.stats(cache)
    assert "compressed nothing" in caplog.text
    assert stats.layers == [] and stats.kept_tokens == []
    assert torch.equal(out.sequences, reference.sequences)  # the sliding layers behave as transformers' own


def test_compressed_sliding_layer_refuses_to_grow_past_its_window():
    model = _mistral(64)
    ids, mask = prompt(batch=1, length=60)
    with lavakv.method("snapkv", budget=16, window=4).attach(model) as session:
        with pytest.raises(RuntimeError, match="sliding window of 64"):
            _greedy(model, ids, mask, session.cache(), new=10)


# -- 2. padding ---
def test_right_padded_batch_is_refused():
    model = tiny_model("llama")
    ids, mask = prompt(batch=2, length=50)
    mask[1, -5:] = 0
    with lavakv.method("snapkv", budget=16, window=4).attach(model) as session:
        with pytest.raises(ValueError, match="right padding"), torch.no_grad():
            model(ids, attention_mask=mask, past_key_values=session.cache())


@pytest.mark.parametrize("order", [("full", "snapkv"), ("snapkv", "full")])
def test_right_padding_is_refused_whichever_method_a_shared_prefill_starts_with(order):
    """A shared prefill checks every cache it fills: with ``full`` first, snapkv's window used to sit on padding."""
    model = tiny_model("llama")
    ids, mask = prompt(batch=2, length=50)
    mask[1, -5:] = 0
    methods = [lavakv.method(name, budget=16, window=4) if name != "full" else lavakv.method(name) for name in order]
    with methods[0].attach(model) as session:
        with pytest.raises(ValueError, match="right padding"):
            session.prefill(ids, mask, methods)
        with pytest.raises(ValueError, match="right padding"):
            session.compress_contexts(ids, methods, mask)


# -- 3. torch.compile ---
def test_compiled_model_is_refused():
    model = tiny_model("llama")
    compiled = torch.compile(model)
    with pytest.raises(TypeError, match="torch.compile"):
        lavakv.method("snapkv", budget=16, window=4).attach(compiled)
    model.compile()
    with pytest.raises(TypeError, match="torch.compile"):
        lavakv.method("snapkv", budget=16, window=4).attach(model)


# -- 4. session lifecycle ---
def test_cache_used_after_its_session_exited_raises():
    model = tiny_model("llama")
    ids, mask = prompt(batch=1, length=50)
    with lavakv.method("snapkv", budget=16, window=4).attach(model) as session:
        cache = session.cache()
        with torch.no_grad():
            out = model(ids, attention_mask=mask, past_key_values=cache)
    token = out.logits[:, -1:].argmax(-1)
    with pytest.raises(RuntimeError, match="not attached"), torch.no_grad():
        model(token, attention_mask=torch.ones(1, 51, dtype=torch.long), past_key_values=cache)


def test_second_attach_on_an_attached_model_is_refused_and_the_first_still_works():
    model = tiny_model("llama")
    ids, mask = prompt(batch=1, length=50)
    reference = _greedy(model, ids, mask)
    first = lavakv.method("snapkv", budget=50, window=4).attach(model)
    with first:
        with pytest.raises(RuntimeError, match="already has a lavakv session"):
            lavakv.method("lava", budget=16, window=4).attach(model).__enter__()
        out = _greedy(model, ids, mask, first.cache())
    assert torch.equal(out.sequences, reference.sequences)
    assert model.config._attn_implementation == "sdpa"  # restored on exit
    with lavakv.method("lava", budget=16, window=4).attach(model):  # attachable again afterwards
        pass


def test_two_threads_sharing_one_attached_model_get_their_own_results():
    model = tiny_model("llama", layers=2)
    inputs = [prompt(batch=1, length=70, seed=s) for s in (1, 2)]
    m = lavakv.method("lava", budget=20, window=4)
    with m.attach(model) as session:
        alone = [_greedy(model, ids, mask, session.cache(), new=6).sequences for ids, mask in inputs]
        results: dict[int, torch.Tensor] = {}

        def work(i: int) -> None:
            ids, mask = inputs[i]
            results[i] = _greedy(model, ids, mask, session.cache(), new=6).sequences

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert all(torch.equal(results[i], alone[i]) for i in range(2))


# -- 5. chunked prefill and reused caches ---
def test_prefill_chunk_size_needs_a_chunked_method():
    model = tiny_model("llama")
    ids, mask = prompt(batch=1, length=64)
    with lavakv.method("snapkv", budget=16, window=4).attach(model) as session:
        with pytest.raises(RuntimeError, match="chunked prefill"), torch.no_grad():
            model.generate(ids, attention_mask=mask, past_key_values=session.cache(), max_new_tokens=2,
                           do_sample=False, pad_token_id=0, prefill_chunk_size=16)


def test_cache_reused_for_a_second_prompt_is_refused():
    model = tiny_model("llama")
    ids, mask = prompt(batch=1, length=64)
    with lavakv.method("snapkv", budget=16, window=4).attach(model) as session:
        cache = session.cache()
        _greedy(model, ids, mask, cache, new=2)
        with pytest.raises(RuntimeError, match="one prompt"):
            _greedy(model, ids, mask, cache, new=2)


# -- 6. parameters validated when the method is built ---
@pytest.mark.parametrize("name,kwargs,error,match", [
    ("snapkv", {"kernel_size": 4}, ValueError, "odd"),
    ("snapkv", {"kernel_size": 7.0}, TypeError, "kernel_size"),
    ("snapkv", {"pooling": "median"}, ValueError, "pooling"),
    ("snapkv", {"gqa": "sum"}, ValueError, "gqa"),
    ("streamingllm", {"n_sink": -1}, ValueError, "n_sink"),
    ("streamingllm", {"n_sink": 2.5}, TypeError, "n_sink"),
    ("cake", {"gamma": -1.0}, ValueError, "gamma"),
    ("cake", {"gamma": "high"}, TypeError, "gamma"),
    ("cake", {"tau1_inv": -0.5}, ValueError, "tau1_inv"),
    ("random", {"seed": "x"}, TypeError, "seed"),
    ("h2o", {"query_block": 0}, ValueError, "query_block"),
    ("lava", {"alpha": "0.2"}, TypeError, "alpha"),
    ("lava", {"alpha": True}, TypeError, "alpha"),
    ("lava", {"alpha": 1.0}, ValueError, "alpha"),
    ("lava", {"floor": "paper"}, ValueError, "floor"),
    ("lava", {"value_norm_range": "some"}, ValueError, "value_norm_range"),
    ("pyramidkv", {"beta": 0.5}, ValueError, "beta"),
])
def test_bad_component_parameters_are_refused_at_method(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        lavakv.method(name, budget=64, **kwargs)


@pytest.mark.parametrize("scorer", ["knorm", "streaming", "random"])
def test_entropy_cascade_over_a_non_attention_scorer_is_refused(scorer):
    with pytest.raises(ValueError, match="entropy"):
        lavakv.method(scorer=scorer, layers="lava", budget=64)
    lavakv.method(scorer=scorer, layers="pyramid", budget=64)  # static allocations are fine


def test_window_on_full_is_refused():
    with pytest.raises(ValueError, match="no observation window"):
        lavakv.method("full", window=8)


# -- 8. bytes and attention weights ---
def test_resident_bytes_never_exceed_uncompressed_after_long_decodes():
    model = tiny_model("qwen2", layers=2)
    ids, mask = prompt(batch=1, length=40)
    with lavakv.method("snapkv", budget=40, window=4).attach(model) as session:  # nothing evicted
        cache = session.cache()
        _greedy(model, ids, mask, cache, new=150)
        stats = session.stats(cache)
    assert stats.resident_kv_bytes == stats.uncompressed_kv_bytes
    assert stats.slack_kv_bytes > 0  # the decode buffers' headroom is reported apart


def test_output_attentions_is_refused():
    model = tiny_model("llama")
    ids, mask = prompt(batch=1, length=40)
    with lavakv.method("snapkv", budget=16, window=4).attach(model) as session:
        with pytest.raises(ValueError, match="output_attentions"), torch.no_grad():
            model(ids, attention_mask=mask, past_key_values=session.cache(), output_attentions=True)


def test_compressed_layers_are_compressed_layer_objects():
    model = tiny_model("gemma3", layers=4)
    ids, mask = prompt(batch=1, length=60)
    with lavakv.method("snapkv", budget=16, window=4).attach(model) as session:
        cache = session.cache()
        _greedy(model, ids, mask, cache, new=2)
        stats = session.stats(cache)
    assert all(isinstance(layer, CompressedLayer) for layer in cache.layers)
    assert stats.layers == [1, 3]  # the sliding layers (window 8 < 60 tokens) are transformers' own past the window


def test_extend_without_a_mask_on_a_padded_cache_is_refused():
    model = tiny_model("llama")
    ids, mask = prompt(batch=2, length=50, pad=(0, 6))
    with lavakv.method("snapkv", budget=16, window=4).attach(model) as session:
        cache = session.cache()
        with torch.no_grad():
            model(ids, attention_mask=mask, past_key_values=cache)
        with pytest.raises(ValueError, match="left-padded"):
            session.extend(cache, torch.ones(2, 3, dtype=torch.long))
        for wrong in (mask, torch.ones(2, 3, dtype=mask.dtype)):  # the held part only, the new part only
            with pytest.raises(ValueError, match=r"extend needs \[batch, held \+ new\] = \[2, 53\]"):
                session.extend(cache, torch.ones(2, 3, dtype=torch.long), wrong)
        full_mask = torch.cat([mask, torch.ones(2, 3, dtype=mask.dtype)], dim=1)
        assert session.extend(cache, torch.ones(2, 3, dtype=torch.long), full_mask).logits.shape[0] == 2


def test_kept_entries_of_an_uncompressed_layer_exclude_decoded_tokens():
    model = tiny_model("llama", layers=2)
    ids, mask = prompt(batch=1, length=40)
    with lavakv.method("snapkv", budget=64, window=4).attach(model) as session:  # budget above the prompt
        cache = session.cache()
        _greedy(model, ids, mask, cache, new=5)
        keys, values, lengths = session.kept_entries(cache, 0)
    assert lengths.tolist() == [[40, 40]] and keys.shape[0] == values.shape[0] == 80


def test_attention_mask_of_another_shape_is_refused():
    """A mask shorter than the ids was read by transformers as trailing padding: the last real tokens (the window)
    were evicted and the stats disagreed with what the layers held."""
    model = tiny_model("llama")
    ids, _ = prompt(batch=1, length=20)
    m = lavakv.method("lava", budget=12, window=8)
    with m.attach(model) as session:
        for wrong in (torch.ones(1, 19, dtype=torch.long), torch.ones(1, 10, dtype=torch.long),
                      torch.ones(2, 20, dtype=torch.long)):
            with pytest.raises(ValueError, match=r"it must be \[batch, held \+ new\]"):
                session.prefill(ids, wrong, [m])


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_a_row_that_is_all_padding_is_an_empty_prompt(chunk_size):
    model = tiny_model("llama")
    ids, mask = prompt(batch=2, length=30)
    mask[1] = 0
    m = lavakv.method("snapkv", budget=12, window=4, chunk_size=chunk_size)
    with m.attach(model) as session, torch.no_grad():
        with pytest.raises(ValueError, match="a row of the attention mask is all padding"):
            session.prefill(ids, mask, [m])
        with pytest.raises(ValueError, match="a row of the attention mask is all padding"):
            model.generate(ids, attention_mask=mask, past_key_values=session.cache(), max_new_tokens=2,
                           do_sample=False, pad_token_id=0, **({"prefill_chunk_size": 16} if chunk_size else {}))


def test_a_model_without_a_language_model_head_is_refused():
    """LlamaModel returns no logits and LlamaForSequenceClassification's "logits" are class scores."""
    from transformers import LlamaForSequenceClassification, LlamaModel

    config = tiny_model("llama").config
    for cls in (LlamaModel, LlamaForSequenceClassification):
        with pytest.raises(TypeError, match="not one. Load the model with AutoModelForCausalLM"):
            lavakv.method("snapkv", budget=16, window=4).attach(cls(config))

    class Mine(type(tiny_model("llama"))):  # a subclass of a causal LM is one
        pass

    with lavakv.method("snapkv", budget=16, window=4).attach(Mine(config)):
        pass


def test_input_ids_of_the_wrong_rank_or_no_rows_are_refused_by_name():
    """A 1-D prompt or a batch of 0 rows failed inside the model's attention with a reshape error."""
    model = tiny_model("llama")
    ids, mask = prompt(batch=1, length=30)
    m = lavakv.method("snapkv", budget=12, window=4)
    with m.attach(model) as session, torch.no_grad():
        with pytest.raises(ValueError, match=r"input_ids has shape \[30\]: it must be \[batch, tokens\]"):
            model(ids[0], past_key_values=session.cache())
        with pytest.raises(ValueError, match="empty batch: input_ids has 0 rows"):
            session.prefill(ids[:0], mask[:0], [m])
        with pytest.raises(ValueError, match=r"inputs_embeds has shape \[30, 64\]"):
            model(inputs_embeds=model.get_input_embeddings()(ids)[0], past_key_values=session.cache())


def test_a_component_given_as_a_list_is_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown layers \['lava'\]; choose one of \(a name, as a string\)"):
        lavakv.method("lava", budget=16, window=4, layers=["lava"])
    import dataclasses

    with pytest.raises(ValueError, match=r"unknown heads \('adaptive',\)"):
        dataclasses.replace(lavakv.method("lava", budget=16, window=4), heads=("adaptive",))


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 2**70])
def test_a_random_seed_torch_cannot_take_is_refused_by_name(seed):
    with pytest.raises(ValueError, match=r"seed=.* is outside the range a torch generator takes"):
        lavakv.method("random", budget=16, window=4, seed=seed)
    lavakv.method("random", budget=16, window=4, seed=2**64 - 1)  # the edges torch takes are accepted
    lavakv.method("random", budget=16, window=4, seed=-(2**63))


def test_a_forward_the_session_does_not_watch_cannot_store_into_its_cache():
    """Another model, or the decoder body model.model(...), skipped the input checks and decode-time eviction and
    left the cache uncompressed, silently."""
    model, other = tiny_model("llama"), tiny_model("llama")
    ids, mask = prompt(batch=1, length=40)
    m = lavakv.method("snapkv", budget=12, window=4, decode_budget=16)
    with m.attach(model) as session, torch.no_grad():
        for call in (lambda c: other(ids, attention_mask=mask, past_key_values=c),
                     lambda c: model.model(ids, attention_mask=mask, past_key_values=c, use_cache=True)):
            with pytest.raises(RuntimeError, match="a forward pass its session does not watch"):
                call(session.cache())
        with pytest.raises(ValueError, match="passed as a positional argument: pass it as past_key_values=cache"):
            model(ids, mask, None, session.cache())  # (input_ids, attention_mask, position_ids, past_key_values)
        cache = session.cache()
        model(ids, attention_mask=mask, past_key_values=cache)  # the model itself still works, after the refusals
        assert session.stats(cache).kept_tokens[0].sum().item() == 2 * 12


def test_kvzip_takes_a_float_mask_and_a_mask_of_other_values_is_refused():
    """kvzip gathered with the float mask's sum (an error inside torch), and a mask of 0s and 2s doubled the count
    of real tokens."""
    from test_generation import tiny_pair

    model, tokenizer = tiny_pair()
    ids, mask = prompt(batch=2, length=48, vocab=len(tokenizer), pad=(0, 13))
    m = lavakv.method("kvzip", budget=12, window=4)
    with m.attach(model) as session:
        reference = session.compress_context(ids, mask, tokenizer=tokenizer)
        for given in (mask.float(), mask.bool()):
            ctx = session.compress_context(ids, given, tokenizer=tokenizer)
            for layer in range(len(ctx.cache.layers)):
                for ours, theirs in zip(session.kept_entries(ctx.cache, layer),
                                        session.kept_entries(reference.cache, layer), strict=True):
                    assert torch.equal(ours, theirs)
        with pytest.raises(ValueError, match=r"attention_mask holds values other than 0 and 1 \(\[2.0\]\)"):
            session.compress_context(ids, mask * 2, tokenizer=tokenizer)
    snapkv = lavakv.method("snapkv", budget=12, window=4)
    with snapkv.attach(model) as session, torch.no_grad():
        with pytest.raises(ValueError, match="attention_mask holds values other than 0 and 1"):
            model.generate(ids, attention_mask=mask * 2, past_key_values=session.cache(), max_new_tokens=2,
                           do_sample=False, pad_token_id=0)


def test_inputs_on_the_meta_device_are_refused():
    """ids on the meta device gave finite, wrong logits and a "compressed" cache."""
    model = tiny_model("llama")
    ids, mask = prompt(batch=1, length=40)
    m = lavakv.method("snapkv", budget=12, window=4)
    with m.attach(model) as session:
        with pytest.raises(ValueError, match="input_ids is on meta and the model on cpu"):
            session.prefill(ids.to("meta"), mask, [m])
        with pytest.raises(ValueError, match="attention_mask is on meta and the model on cpu"):
            session.prefill(ids, mask.to("meta"), [m])


def test_a_ratio_that_keeps_more_than_decode_time_eviction_compresses_back_to_is_refused():
    """With budget= this is refused when the method is made; with a ratio the prompt's budget is known only at
    prefill, and the first decode-time eviction squeezed the prompt to the window."""
    model = tiny_model("llama")
    ids, mask = prompt(batch=2, length=64, pad=(0, 20))
    m = lavakv.method("snapkv", compression_ratio=0.5, window=4, decode_budget=12)  # interval min(32, 12 - 4) = 8
    with m.attach(model) as session, torch.no_grad():
        with pytest.raises(ValueError, match=r"keeps 32 tokens per KV head .* = 12 - 8 = 4 .* decode_budget >= 40"):
            model.generate(ids, attention_mask=mask, past_key_values=session.cache(), max_new_tokens=2,
                           do_sample=False, pad_token_id=0)
    chunked = lavakv.method("snapkv", compression_ratio=0.5, window=4, decode_budget=20, decode_interval=4,
                            chunk_size=16)  # the budget grows chunk by chunk: 8, 16, 24 > 16 refused
    with chunked.attach(model) as session, pytest.raises(ValueError, match=r"keeps 24 tokens per KV head"):
        session.prefill(ids[:1], mask[:1], [chunked])
    whole = lavakv.method("snapkv", compression_ratio=0.01, window=4, decode_budget=20, decode_interval=4)
    with whole.attach(model) as session, pytest.raises(ValueError, match=r"keeps 44 tokens per KV head"):
        session.prefill(ids[1:], mask[1:], [whole])  # kept whole (the ratio rounds to nothing), still past 16
    fits = lavakv.method("snapkv", compression_ratio=0.5, window=4, decode_budget=64)  # interval 32: back to 32
    with fits.attach(model) as session, torch.no_grad():
        (cache,), _ = session.prefill(ids, mask, [fits])
        assert session.stats(cache).kept_tokens[0].sum(-1).tolist() == [2 * 32, 2 * 22]  # 2 KV heads
