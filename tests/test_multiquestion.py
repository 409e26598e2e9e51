"""The multiquestion task: documents, per-question scoring, and compress-once answers equal to separate runs."""

from __future__ import annotations

import json

import pytest
import torch
from test_generation import tiny_pair

import lavakv
from lavakv.eval.runner import EvalConfig, run_eval
from lavakv.eval.tasks import TaskOptions, build_tasks, parse_task_spec
from lavakv.eval.tasks.multiquestion import MultiQuestionTask
from lavakv.generation import count_tokens, decode_from_cache, decode_text, encode_prompt, stop_ids


def test_documents_hold_every_key_once_spread_over_the_context():
    _, tokenizer = tiny_pair(chat=True)
    task = MultiQuestionTask(tokenizer, TaskOptions(lengths=[6000], samples=6))
    counts = set()
    for i in range(len(task)):
        sample = task.sample(i)
        keys = len(sample.payload)
        counts.add(keys)
        assert 4 <= keys <= 8 and sample.meta["keys"] == keys
        for _question, _prefix, value in sample.payload:
            assert sample.context.count(value) == 1
        units = sample.meta["units"]
        positions = sorted(round(d * units) for d in sample.meta["depths"])
        assert units > 3 * keys
        assert all(units * j // keys <= p <= units * (j + 1) // keys for j, p in enumerate(positions))  # one a slice
        longest = max(count_tokens(tokenizer, sample.context + q + p) for q, p, _ in sample.payload)
        assert 6000 - 150 < longest + sample.max_new_tokens <= 6000  # no chat markers, as RULER
        assert sample.context == task.sample(i).context  # deterministic
    assert len(counts) > 1


def test_task_spec_accepts_subtasks_and_refuses_unknown_ones():
    assert parse_task_spec("multiquestion:keys,niah_multiquery") == [("multiquestion", ["keys", "niah_multiquery"])]
    with pytest.raises(ValueError, match="unknown multiquestion task"):
        parse_task_spec("multiquestion:vt")
    _, tokenizer = tiny_pair(chat=True)
    with pytest.raises(ValueError, match="too short for"):
        MultiQuestionTask(tokenizer, TaskOptions(lengths=[300])).sample(0)


@pytest.mark.parametrize("agnostic", [False, True])
def test_each_answer_equals_a_separate_run_from_the_same_compression(agnostic):
    """A record's answers equal compressing the context (for the first question, query-aware) and answering that
    one question alone; query-aware lava is compressed for the first question, expected-attention alone."""
    model, tokenizer = tiny_pair(chat=True)
    task = MultiQuestionTask(tokenizer, TaskOptions(lengths=[1500], samples=1, max_new_tokens=4))
    sample = task.sample(0)
    methods = [lavakv.method("lava", budget=48, window=8), lavakv.method("expected-attention", budget=48, window=8)]
    with lavakv.method("full").attach(model) as session:
        records = task.evaluate(model, session, sample, methods, agnostic)
    prompts = [encode_prompt(tokenizer, sample.context, q, answer_prefix=p) for q, p, _ in sample.payload]
    for method, record in zip(methods, records, strict=True):
        guided = method.name == "lava" and not agnostic
        assert record["compression"] == ("for the first question" if guided else "context alone")
        for k, prompt in enumerate(prompts):
            with method.attach(model) as session:
                ctx = session.compress_context(torch.tensor([prompt.context]), tokenizer=tokenizer,
                                               question_ids=torch.tensor([prompts[0].rest]) if guided else None)
                cache = ctx.fork()
                logits = session.extend(cache, torch.tensor([prompt.rest])).logits[:, -1].float()
                alone = decode_from_cache(model, cache, logits, max_new_tokens=4, stops=stop_ids(model, tokenizer))
            assert record["answers"][k]["prediction"] == decode_text(tokenizer, alone.tokens)
        scores = [a["score"] for a in record["answers"]]
        assert record["scores"]["all"] == pytest.approx(sum(scores) / len(scores))
        assert record["scores"]["first"] == scores[0]


def test_runs_through_the_eval_runner(tmp_path):
    model, tokenizer = tiny_pair(chat=True)
    config = EvalConfig(task="multiquestion", methods=["full", "snapkv"], budgets=[48], out=str(tmp_path),
                        options=TaskOptions(lengths=[1500], samples=2, max_new_tokens=3), window=8)
    results = run_eval(model, tokenizer, config, model_id="tiny", progress=False)
    assert {r.status for r in results} == {"finished"}
    for result in results:
        metrics = json.loads((result.directory / "metrics.json").read_text())
        assert {"all", "first", "later"} <= set(metrics)
    assert build_tasks("multiquestion", tokenizer, TaskOptions(lengths=[1500]))[0].name == "multiquestion/keys"
