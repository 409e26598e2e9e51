"""The eval runner on tiny random models: shared prefill == separate runs, result layout, skip and resume."""

from __future__ import annotations

import json

import pytest
import torch
from test_eval_support import tiny_eval_pair

import lavakv
from lavakv.compat import cache_kwargs
from lavakv.eval import EvalConfig, TaskOptions, run_eval
from lavakv.eval import runner as runner_module
from lavakv.eval.runner import PREDICTIONS, plan_runs, read_predictions
from lavakv.eval.tasks.needle import NeedleTask
from lavakv.generation import decode_from_cache, decode_text, encode_prompt, stop_ids

METHODS = ["full", "lava", "snapkv", "ada-snapkv"]


def _config(tmp_path, task="needle", methods=METHODS, budgets=(40, 80), agnostic=False, **options):
    defaults = dict(lengths=[300], depths=[0.0, 1.0], samples=1, max_new_tokens=6, continuation=8)
    defaults.update(options)
    return EvalConfig(task=task, methods=list(methods), budgets=list(budgets), window=8, out=tmp_path / "out",
                      query_agnostic=agnostic, options=TaskOptions(**defaults))


def _feed(model, cache, ids: list[int], past: int) -> torch.Tensor:
    """Reference feed: ``ids`` after ``past`` tokens with explicit positions; the last logits ``[1, vocab]``."""
    block = torch.tensor([ids])
    positions = torch.arange(past, past + len(ids))[None]
    with torch.no_grad():
        out = model(block, attention_mask=torch.ones(1, past + len(ids), dtype=torch.long), position_ids=positions,
                    **cache_kwargs(cache), logits_to_keep=1)
    return out.logits[:, -1]


def _alone(model, tokenizer, method, ids, *, agnostic_split=None, max_new_tokens=6):
    """One method attached alone: its own cache, its own prefill, then a reference greedy loop written out here
    (independent of lavakv.generation's decoding and of Session.extend's positions)."""
    stops = stop_ids(model, tokenizer)
    with method.attach(model) as session:
        cache = session.cache()
        prefix = ids if agnostic_split is None else ids[:agnostic_split]
        x = torch.tensor([prefix])
        with torch.no_grad():
            logits = model(x, attention_mask=torch.ones_like(x), **cache_kwargs(cache), logits_to_keep=1).logits[:, -1]
        stats = session.stats(cache)  # right after the compressed prefill
        past = len(prefix)
        if agnostic_split is not None:
            with session.extending(cache):
                logits = _feed(model, cache, ids[agnostic_split:], past)
            past = len(ids)
        tokens: list[int] = []
        while True:
            tokens.append(int(logits[0].argmax()))
            if tokens[-1] in stops or len(tokens) == max_new_tokens:
                break
            logits = _feed(model, cache, tokens[-1:], past)
            past += 1
        return decode_text(tokenizer, tokens), tokens, stats


@pytest.mark.parametrize("agnostic", [False, True])
def test_shared_prefill_answers_equal_one_method_at_a_time(tmp_path, agnostic):
    model, tokenizer = tiny_eval_pair(chat=True)
    config = _config(tmp_path, agnostic=agnostic)
    results = run_eval(model, tokenizer, config, model_id="tiny", progress=False)
    task = NeedleTask(tokenizer, config.options)
    for result in results:
        run = next(r for r in plan_runs(config) if r.label == result.label)
        for record in read_predictions(result.directory / PREDICTIONS):
            sample = task.sample(record["index"])
            ids = encode_prompt(tokenizer, sample.context, sample.query, answer_prefix=sample.answer_prefix)
            if agnostic:
                text, _, stats = _alone(model, tokenizer, run.method, ids.context + ids.rest,
                                        agnostic_split=len(ids.context))
            else:
                text, _, stats = _alone(model, tokenizer, run.method, ids.whole)
            assert record["prediction"] == text
            assert record["kept_entries"] == stats.kept_entries
            assert record["resident_kv_bytes"] == stats.resident_kv_bytes
            assert record["shared_prefill_runs"] == len(plan_runs(config))


def test_shared_prefill_caches_are_identical_and_decoding_matches_generate():
    """decode_from_cache (what eval and lavakv.generation decode with) on caches of one shared prefill gives the
    tokens of transformers' own ``model.generate`` on a cache each method filled alone."""
    model, tokenizer = tiny_eval_pair()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, len(tokenizer), (1, 120), generator=g)
    methods = [lavakv.method("full")] + [lavakv.method(n, budget=40, window=8) for n in ("lava", "snapkv", "cake")]
    stops = stop_ids(model, tokenizer)
    with methods[0].attach(model) as session:
        caches, logits = session.prefill(ids, torch.ones_like(ids), methods)
        shared = [session.stats(c) for c in caches]
        tokens = [decode_from_cache(model, c, logits, max_new_tokens=7, stops=stops).tokens for c in caches]
    for method, stat, decoded in zip(methods, shared, tokens, strict=True):
        with method.attach(model) as session:
            cache = session.cache()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **cache_kwargs(cache), max_new_tokens=7,
                                 do_sample=False, pad_token_id=0, eos_token_id=sorted(stops))
            alone = session.stats(cache)
        assert out[0, 120:].tolist() == decoded
        for a, b in zip(stat.kept_tokens, alone.kept_tokens, strict=True):
            assert torch.equal(a, b)


def test_question_fed_through_extend_decodes_like_the_reference_loop():
    """Query-agnostic: Session.extend then decode_from_cache == explicit-position feeding and stepping."""
    model, tokenizer = tiny_eval_pair()
    ids = torch.randint(4, len(tokenizer), (1, 130), generator=torch.Generator().manual_seed(5))[0].tolist()
    stops = stop_ids(model, tokenizer)
    for method in (lavakv.method("full"), lavakv.method("snapkv", budget=40, window=8)):
        _, expected, _ = _alone(model, tokenizer, method, ids, agnostic_split=110, max_new_tokens=7)
        with method.attach(model) as session:
            (cache,), _ = session.prefill(torch.tensor([ids[:110]]), None, [method])
            last = session.extend(cache, torch.tensor([ids[110:]])).logits[:, -1]
            decoded = decode_from_cache(model, cache, last, max_new_tokens=7, stops=stops)
        assert decoded.tokens == expected
        assert decoded.stopped == (expected[-1] in stops)


def test_results_directory_layout_and_provenance(tmp_path):
    model, tokenizer = tiny_eval_pair(chat=True)
    results = run_eval(model, tokenizer, _config(tmp_path, methods=["full", "lava"], budgets=[40]),
                       model_id="tiny", progress=False)
    assert {r.label for r in results} == {"full", "lava-b40"}
    for result in results:
        names = {p.name for p in result.directory.iterdir()}
        assert names == {"config.json", "provenance.json", "predictions.jsonl", "metrics.json"}
        assert result.directory.name.startswith(f"needle__tiny__{result.label}__query-aware__")
        provenance = json.loads((result.directory / "provenance.json").read_text())
        for key in ("lavakv_version", "git", "torch", "transformers", "model", "model_sha256", "dtype",
                    "attn_implementation", "seed", "wall_seconds", "started_at", "finished_at"):
            assert key in provenance
        assert provenance["attn_implementation"] == "sdpa" and provenance["dtype"] == "float32"
        assert provenance["wall_seconds"] > 0
        metrics = json.loads((result.directory / "metrics.json").read_text())
        assert metrics["samples"] == 2 and metrics["score_name"] == "exact"
        assert set(metrics["grid"]) == {"300"} and set(metrics["grid"]["300"]) == {"0", "1"}
        config = json.loads((result.directory / "config.json").read_text())
        assert config["query_mode"] == "query-aware" and config["method"]["name"] == result.label.split("-b")[0]
    full, lava = sorted(results, key=lambda r: r.label)
    assert lava.metrics["resident_kv_bytes"] < full.metrics["resident_kv_bytes"]


def test_finished_runs_are_skipped(tmp_path, monkeypatch):
    model, tokenizer = tiny_eval_pair()
    config = _config(tmp_path, methods=["full", "lava"], budgets=[40])
    first = run_eval(model, tokenizer, config, model_id="tiny", progress=False)
    assert {r.status for r in first} == {"finished"}

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was evaluated again")

    monkeypatch.setattr(runner_module, "evaluate_sample", fail)
    again = run_eval(model, tokenizer, config, model_id="tiny", progress=False)
    assert {r.status for r in again} == {"skipped"}
    assert [r.metrics for r in again] == [r.metrics for r in first]


def test_interrupted_run_resumes_without_losing_finished_samples(tmp_path, monkeypatch):
    model, tokenizer = tiny_eval_pair()
    config = _config(tmp_path, methods=["full", "lava"], budgets=[40], depths=[0.0, 0.5, 1.0])
    real = runner_module.evaluate_sample
    calls: list[int] = []

    def crash_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_module, "evaluate_sample", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_eval(model, tokenizer, config, model_id="tiny", progress=False)
    directories = sorted((tmp_path / "out").iterdir())
    assert len(directories) == 2
    for directory in directories:
        assert len(read_predictions(directory / PREDICTIONS)) == 2
        assert not (directory / "metrics.json").exists()
    with open(directories[0] / PREDICTIONS, "a") as handle:  # a write torn by the interruption
        handle.write('{"id": "L300-d1')

    resumed_samples: list[int] = []

    def count(model, tokenizer, session, task, sample, methods, agnostic):
        resumed_samples.append(1)
        return real(model, tokenizer, session, task, sample, methods, agnostic)

    monkeypatch.setattr(runner_module, "evaluate_sample", count)
    results = run_eval(model, tokenizer, config, model_id="tiny", progress=False)
    assert len(resumed_samples) == 1  # only the third sample was left
    assert {r.status for r in results} == {"finished"}
    monkeypatch.setattr(runner_module, "evaluate_sample", real)
    fresh = run_eval(model, tokenizer, _config(tmp_path / "fresh", methods=["full", "lava"], budgets=[40],
                                                depths=[0.0, 0.5, 1.0]), model_id="tiny", progress=False)
    for a, b in zip(sorted(results, key=lambda r: r.label), sorted(fresh, key=lambda r: r.label), strict=True):
        ra = read_predictions(a.directory / PREDICTIONS)
        rb = read_predictions(b.directory / PREDICTIONS)
        assert [r["prediction"] for r in ra] == [r["prediction"] for r in rb]
        assert a.metrics["score"] == b.metrics["score"]


def test_more_samples_extend_a_finished_run_and_fewer_reuse_it(tmp_path, monkeypatch):
    model, tokenizer = tiny_eval_pair()
    grid = dict(methods=["full", "lava"], budgets=[40], lengths=[200, 300], depths=[0.0, 1.0])
    first = run_eval(model, tokenizer, _config(tmp_path, samples=1, **grid), model_id="tiny", progress=False)
    real = runner_module.evaluate_sample
    evaluated: list[str] = []

    def count(model, tokenizer, session, task, sample, methods, agnostic):
        evaluated.append(sample.id)
        return real(model, tokenizer, session, task, sample, methods, agnostic)

    monkeypatch.setattr(runner_module, "evaluate_sample", count)
    more = run_eval(model, tokenizer, _config(tmp_path, samples=2, **grid), model_id="tiny", progress=False)
    # same directories; only the second repeat of each of the 4 length x depth cells was computed
    assert {r.directory for r in more} == {r.directory for r in first}
    assert sorted(evaluated) == sorted(f"L{n}-d{d}-r1" for n in (200, 300) for d in (0, 1))
    fresh = run_eval(model, tokenizer, _config(tmp_path / "fresh", samples=2, **grid), model_id="tiny",
                     progress=False)
    for a, b in zip(sorted(more, key=lambda r: r.label), sorted(fresh, key=lambda r: r.label), strict=True):
        assert a.metrics["sample_ids"] == b.metrics["sample_ids"] and a.metrics["samples"] == 8
        predictions = {r["id"]: r["prediction"] for r in read_predictions(a.directory / PREDICTIONS)}
        assert predictions == {r["id"]: r["prediction"] for r in read_predictions(b.directory / PREDICTIONS)}
        assert a.metrics["score"] == b.metrics["score"]
    evaluated.clear()
    fewer = run_eval(model, tokenizer, _config(tmp_path, samples=1, **grid), model_id="tiny", progress=False)
    assert evaluated == []  # every sample asked for has a record: metrics over those alone
    for a, b in zip(sorted(fewer, key=lambda r: r.label), sorted(first, key=lambda r: r.label), strict=True):
        assert a.status == "skipped" and {k: v for k, v in a.metrics.items() if k != "sample_ids_on_disk"} == b.metrics
        on_disk = json.loads((a.directory / "metrics.json").read_text())
        assert on_disk["samples"] == 8  # the larger run's metrics stay
    provenance = json.loads((more[0].directory / "provenance.json").read_text())
    assert len(provenance["later_sessions"]) == 1  # the extending session is recorded


def test_repeated_sample_ids_are_refused(tmp_path):
    model, tokenizer = tiny_eval_pair()
    with pytest.raises(ValueError, match="occur more than once; remove repeated --lengths"):
        run_eval(model, tokenizer, _config(tmp_path, methods=["full"], lengths=[200, 200]), model_id="tiny",
                 progress=False)


def test_bad_method_or_budget_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'lavaa'"):
        plan_runs(_config(tmp_path, methods=["lavaa"]))
    with pytest.raises(ValueError, match="needs --budgets"):
        plan_runs(_config(tmp_path, methods=["lava"], budgets=[]))
    with pytest.raises(ValueError, match="unknown task"):
        run_eval(None, None, _config(tmp_path, task="needles"), model_id="x", progress=False)


def test_fidelity_is_exact_without_eviction_and_measures_error_with_it(tmp_path):
    model, tokenizer = tiny_eval_pair(layers=2)
    config = _config(tmp_path, task="fidelity", methods=["full", "snapkv", "lava"], budgets=[24, 4096],
                     lengths=[160], samples=1)
    results = {r.label: r.metrics for r in run_eval(model, tokenizer, config, model_id="tiny", progress=False)}
    for label in ("full", "snapkv-b4096", "lava-b4096"):
        assert results[label]["kl"] == pytest.approx(0.0, abs=1e-6)
        assert results[label]["top1_agreement"] == 1.0
        assert results[label]["ppl_ratio"] == pytest.approx(1.0, abs=1e-5)
        assert results[label]["attention_error"] == 0.0
    for label in ("snapkv-b24", "lava-b24"):
        assert results[label]["kl"] > 0
        errors = results[label]["attention_error_per_layer"]
        assert len(errors) == 2 and all(0 < e < 2 for e in errors)
    assert results["snapkv-b24"]["resident_kv_bytes"] < results["snapkv-b4096"]["resident_kv_bytes"]


def test_fidelity_has_no_question_so_query_agnostic_runs_it_query_aware(tmp_path, caplog):
    model, tokenizer = tiny_eval_pair(layers=2)
    kwargs = dict(task="fidelity", methods=["snapkv"], budgets=[24], lengths=[160], samples=1)
    aware = run_eval(model, tokenizer, _config(tmp_path / "a", **kwargs), model_id="tiny", progress=False)
    with caplog.at_level("WARNING", logger="lavakv"):
        agnostic = run_eval(model, tokenizer, _config(tmp_path / "b", agnostic=True, **kwargs), model_id="tiny",
                            progress=False)
    assert "no question" in caplog.text
    assert agnostic[0].metrics["query_mode"] == "query-aware" and "__query-aware__" in agnostic[0].directory.name
    assert agnostic[0].metrics["kl"] == aware[0].metrics["kl"]


def test_window_attention_reproduces_the_layers_own_output():
    """fidelity's window attention over a layer's kept entries (nothing evicted) == the layer's own attention output
    for the window queries, read before the output projection."""
    from lavakv.eval.tasks.fidelity import _kept, _window_attention

    model, _ = tiny_eval_pair(layers=2)
    ids = torch.randint(4, 90, (1, 70), generator=torch.Generator().manual_seed(0))
    method = lavakv.method("snapkv", budget=4096, window=8)
    outputs = {}
    hooks = [layer.self_attn.o_proj.register_forward_pre_hook(lambda _m, args, i=i: outputs.setdefault(i, args[0]))
             for i, layer in enumerate(model.model.layers)]
    try:
        with method.attach(model) as session:
            (cache,), _ = session.prefill(ids, torch.ones_like(ids), [method], record_window_queries=True)
            layers = session.stats(cache).layers
            assert layers
            for index in layers:
                keys, values, valid = _kept(session, cache, index)
                query, scaling = session.window_queries(cache, index)  # [b, q_heads, 8, d]
                positions = (torch.arange(70) - 62).expand(keys.shape[:3])
                y = _window_attention(query, keys, values, valid, positions, scaling)  # [b, h, g, w, d]
                b, h, g, w, d = y.shape
                expected = outputs[index][:, -8:].reshape(b, w, h * g, d)  # [b, w, q_heads, d]
                assert torch.allclose(y.reshape(b, h * g, w, d).transpose(1, 2), expected, atol=1e-5)
    finally:
        for hook in hooks:
            hook.remove()


def test_a_last_record_without_its_newline_is_kept_and_the_line_ended(tmp_path):
    path = tmp_path / PREDICTIONS
    path.write_text('{"id": "a"}\n{"id": "b"}')
    assert [r["id"] for r in read_predictions(path)] == ["a", "b"]
    runner_module.append_record(path, {"id": "c"})
    assert [r["id"] for r in read_predictions(path)] == ["a", "b", "c"]
    path.write_text('{"id": "a"}\n{"id": "b')  # torn: dropped, file repaired
    assert [r["id"] for r in read_predictions(path)] == ["a"] and path.read_text() == '{"id": "a"}\n'


def test_runs_with_options_resume_and_plain_presets_keep_their_directory_names(tmp_path, monkeypatch):
    import hashlib

    from lavakv.eval.runner import run_config, run_directory

    model, tokenizer = tiny_eval_pair()
    methods = ["full", "lava", "lava[alpha=0]", "ada-snapkv[alpha=0.5,floor=adakv-reference]"]
    config = _config(tmp_path, methods=methods, budgets=[40], depths=[0.0, 0.5, 1.0])
    real = runner_module.evaluate_sample
    calls: list[int] = []

    def crash_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_module, "evaluate_sample", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_eval(model, tokenizer, config, model_id="tiny", progress=False)
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(before) == 4 and any("__lava+alpha=0-b40__" in name for name in before)
    resumed: list[str] = []

    def count(model, tokenizer, session, task, sample, methods, agnostic):
        resumed.append(sample.id)
        return real(model, tokenizer, session, task, sample, methods, agnostic)

    monkeypatch.setattr(runner_module, "evaluate_sample", count)
    results = run_eval(model, tokenizer, config, model_id="tiny", progress=False)
    assert len(resumed) == 1 and {r.status for r in results} == {"finished"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before
    monkeypatch.setattr(runner_module, "evaluate_sample", real)
    fresh = run_eval(model, tokenizer, _config(tmp_path / "fresh", methods=methods, budgets=[40],
                                                depths=[0.0, 0.5, 1.0]), model_id="tiny", progress=False)
    by_label = {r.label: r for r in results}
    assert set(by_label) == {"full", "lava-b40", "lava[alpha=0]-b40",
                             "ada-snapkv[alpha=0.5,floor=adakv-reference]-b40"}
    for b in fresh:
        a = by_label[b.label]
        assert a.directory.name == b.directory.name
        assert [r["prediction"] for r in read_predictions(a.directory / PREDICTIONS)] == \
            [r["prediction"] for r in read_predictions(b.directory / PREDICTIONS)]
        assert a.metrics["score"] == b.metrics["score"] and a.metrics["method_label"] == b.label.split("-b40")[0]
    params = json.loads((by_label["ada-snapkv[alpha=0.5,floor=adakv-reference]-b40"].directory / "config.json")
                        .read_text())["method"]["params"]
    assert params["alpha"] == 0.5 and params["floor"] == "adakv-reference"

    # a plain preset's directory is named as before labels were recorded: label slug + hash without method_label
    # (and without method fields added later, while they are off)
    task = NeedleTask(tokenizer, config.options)
    for run in plan_runs(config):
        resolved = run_config(task, run, config, model, "tiny")
        assert resolved["method_label"] == run.name
        if "[" in run.label:
            continue
        old = {k: v for k, v in resolved.items() if k != "method_label"}
        old["method"] = {k: v for k, v in old["method"].items()
                         if k in ("name", "scorer", "layers", "heads", "budget", "compression_ratio", "window",
                                  "params") or v is not None}
        digest = hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:10]
        expected = f"needle__tiny__{runner_module.slug(run.label)}__query-aware__{digest}"
        assert run_directory(tmp_path, resolved).name == expected


def test_method_fields_added_later_change_the_directory_only_when_used(tmp_path):
    from lavakv.eval.runner import run_directory

    before = {"task": "needle", "model": "tiny", "label": "lava-b64", "query_mode": "query-aware",
              "method": {"name": "lava", "budget": 64, "params": {"alpha": 0.0}}}
    now = {**before, "method_label": "lava",
           "method": {**before["method"], "decode_budget": None, "decode_interval": None, "chunk_size": None}}
    assert run_directory(tmp_path, now) == run_directory(tmp_path, before)
    used = {**now, "method": {**now["method"], "decode_budget": 128, "decode_interval": 16}}
    assert run_directory(tmp_path, used) != run_directory(tmp_path, before)
    other = {**now, "method": {**now["method"], "params": {"alpha": 0.2}}}
    assert run_directory(tmp_path, other) != run_directory(tmp_path, before)


def test_a_label_that_would_name_another_configuration_is_refused_before_any_work(tmp_path, monkeypatch):
    """A run made when a default was different (here: lava's alpha, rewritten in its config.json) keeps its label;
    a new run whose label is the same but whose method differs is refused, naming the setting, before any sample
    is computed; the same label with the same method resumes, and a pinned label writes its own runs."""
    model, tokenizer = tiny_eval_pair()
    run_eval(model, tokenizer, _config(tmp_path, methods=["lava"], budgets=[40]), model_id="tiny", progress=False)
    (old,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    config = json.loads((old / "config.json").read_text())
    config["method"]["params"]["alpha"] = 0.0  # as written before the default became 0.2
    (old / "config.json").write_text(json.dumps(config))
    old.rename(old.parent / (old.name.rsplit("__", 1)[0] + "__0123456789"))
    computed: list[str] = []
    monkeypatch.setattr(runner_module, "evaluate_sample", lambda *args, **kwargs: computed.append("x"))
    with pytest.raises(ValueError, match=r"label 'lava-b40' but another configuration of the method "
                                         r"\(params.alpha: 0.0 there, 0.2 now\).*'lava\[alpha=0\]'"):
        run_eval(model, tokenizer, _config(tmp_path, methods=["lava"], budgets=[40, 80]), model_id="tiny",
                 progress=False)
    assert computed == [] and len(list((tmp_path / "out").iterdir())) == 1  # nothing written, b80 included
    monkeypatch.undo()
    results = run_eval(model, tokenizer, _config(tmp_path, methods=["lava[alpha=0]"], budgets=[40]),
                       model_id="tiny", progress=False)
    assert [r.status for r in results] == ["finished"] and "lava+alpha=0-b40" in results[0].directory.name
    with pytest.raises(ValueError, match="another --window"):  # the window is part of the method too
        run_eval(model, tokenizer, EvalConfig(task="needle", methods=["lava[alpha=0]"], budgets=[40], window=4,
                                              out=tmp_path / "out", options=_config(tmp_path).options),
                 model_id="tiny", progress=False)


@pytest.mark.parametrize("agnostic", [False, True])
def test_chunked_and_reconstruction_methods_run_beside_the_shared_prefill(tmp_path, agnostic):
    """A chunked method is prefilled alone (its chunks attend to what it compressed) and a kvzip method is compressed
    by its reconstruction pass; both give what running them alone gives, and the shared methods are unchanged."""
    model, tokenizer = tiny_eval_pair(chat=True)
    methods = ["full", "snapkv", "snapkv[chunk_size=64]", "kvzip"]
    config = _config(tmp_path, methods=methods, budgets=[40], agnostic=agnostic)
    results = run_eval(model, tokenizer, config, model_id="tiny", progress=False)
    assert {r.status for r in results} == {"finished"}
    task = NeedleTask(tokenizer, config.options)
    stops = stop_ids(model, tokenizer)
    for result in results:
        run = next(r for r in plan_runs(config) if r.label == result.label)
        for record in read_predictions(result.directory / PREDICTIONS):
            sample = task.sample(record["index"])
            ids = encode_prompt(tokenizer, sample.context, sample.query, answer_prefix=sample.answer_prefix)
            prefix = ids.context if agnostic else ids.whole
            x = torch.tensor([prefix])
            with run.method.attach(model) as session:
                if run.method.name == "kvzip":
                    cache = session.compress_context(x[:, :-1], tokenizer=tokenizer).cache
                    logits = session.extend(cache, x[:, -1:]).logits[:, -1]
                else:
                    (cache,), logits = session.prefill(x, torch.ones_like(x), [run.method])
                stats = session.stats(cache)
                if agnostic:
                    logits = session.extend(cache, torch.tensor([ids.rest])).logits[:, -1]
                decoded = decode_from_cache(model, cache, logits, max_new_tokens=6, stops=stops)
            assert record["prediction"] == decode_text(tokenizer, decoded.tokens)
            assert record["kept_entries"] == stats.kept_entries
            if run.method.name != "full":
                layers, heads = model.config.num_hidden_layers, model.config.num_key_value_heads
                assert record["kept_entries"] <= 40 * layers * heads + layers * heads


def test_fidelity_runs_chunked_and_kvzip_methods(tmp_path):
    """Fidelity fills chunked and kvzip caches alone; a chunk as long as the prompt is the exact prefill (same KL),
    and attention error is not measured for them (NaN)."""
    model, tokenizer = tiny_eval_pair()
    config = _config(tmp_path, task="fidelity", methods=["full", "lava", "lava[chunk_size=512]", "lava[chunk_size=64]",
                                                         "kvzip"], budgets=[40], lengths=[200], samples=2)
    results = {r.label: r for r in run_eval(model, tokenizer, config, model_id="tiny", progress=False)}
    records = {label: read_predictions(r.directory / PREDICTIONS) for label, r in results.items()}
    exact, whole, chunked = (records[f"{name}-b40"] for name in ("lava", "lava[chunk_size=512]",
                                                                   "lava[chunk_size=64]"))
    for a, b, c in zip(exact, whole, chunked, strict=True):
        assert a["scores"]["kl"] == b["scores"]["kl"] and a["kept_entries"] == b["kept_entries"]
        assert c["scores"]["kl"] != a["scores"]["kl"]
        assert b["scores"]["attention_error"] != b["scores"]["attention_error"]  # NaN
        assert a["scores"]["attention_error"] >= 0
    assert all(r["scores"]["kl"] >= 0 for r in records["kvzip-b40"])


def test_a_resumed_session_records_its_threads_device_and_dtype(tmp_path):
    """Each later session of a run records how it ran (threads, device, dtype), not only the code it ran."""
    model, tokenizer = tiny_eval_pair()
    run_eval(model, tokenizer, _config(tmp_path, samples=1), model_id="tiny", progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        more = run_eval(model, tokenizer, _config(tmp_path, samples=2), model_id="tiny", progress=False)
    finally:
        torch.set_num_threads(threads)
    later = json.loads((more[0].directory / "provenance.json").read_text())["later_sessions"][0]
    assert later["threads"] == (1 if threads > 1 else 2)
    assert later["device"] == "cpu" and later["dtype"] == "float32"
