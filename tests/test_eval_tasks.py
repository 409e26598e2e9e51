"""The task generators and loaders: lengths by the tokenizer, answers present, official LongBench prompts."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from test_eval_support import char_tokenizer

from lavakv.eval.tasks import TaskOptions, build_tasks, parse_task_spec
from lavakv.eval.tasks.code import CodeTask, string_lines
from lavakv.eval.tasks.longbench import LongBenchTask, summarize, truncate_middle
from lavakv.eval.tasks.needle import NeedleTask
from lavakv.eval.tasks.ruler import SUBTASKS, RulerTask
from lavakv.eval.tasks.sources import read_source, stdlib_root
from lavakv.generation import count_tokens, encode_prompt


def test_needle_grid_lengths_and_depths():
    tokenizer = char_tokenizer()
    task = NeedleTask(tokenizer, TaskOptions(lengths=[300, 600], depths=[0.0, 0.5, 1.0], samples=2))
    assert len(task) == 12
    seen = set()
    for i in range(len(task)):
        sample = task.sample(i)
        length, depth = sample.meta["length"], sample.meta["depth"]
        seen.add((length, depth))
        assert length - 80 < count_tokens(tokenizer, sample.context) <= length
        assert sample.references[0] in sample.context
        at = sample.context.index(sample.references[0]) / len(sample.context)
        assert abs(at - depth) < 0.35
        assert task.sample(i) == sample  # deterministic
    assert seen == {(L, d) for L in (300, 600) for d in (0.0, 0.5, 1.0)}
    assert task.score(sample, f"It is {sample.references[0]}.") == {"exact": 1.0, "rouge1_recall": 1.0}


def test_needle_haystack_from_a_file(tmp_path):
    path = tmp_path / "hay.txt"
    path.write_text("Rivers run to the sea. Mountains stand still! Do clouds drift? " * 20)
    tokenizer = char_tokenizer()
    task = NeedleTask(tokenizer, TaskOptions(lengths=[400], depths=[0.5], haystack_file=str(path)))
    sample = task.sample(0)
    assert "Mountains stand still!" in sample.context and sample.references[0] in sample.context
    assert count_tokens(tokenizer, sample.context) <= 400
    assert task.settings()["haystack"]["kind"] == "file"
    with pytest.raises(ValueError, match="no such file"):
        NeedleTask(tokenizer, TaskOptions(haystack_file=str(tmp_path / "missing.txt")))


@pytest.mark.parametrize("subtask", SUBTASKS)
def test_ruler_samples_fit_the_length_and_hold_their_answers(subtask):
    tokenizer = char_tokenizer()
    task = RulerTask(tokenizer, TaskOptions(lengths=[2500], samples=2), subtask)
    sample = task.sample(1)
    prompt = sample.context + sample.query + sample.answer_prefix
    assert count_tokens(tokenizer, prompt) + task.tokens_to_generate <= 2500
    assert count_tokens(tokenizer, prompt) > 1500  # the haystack was grown to the length
    assert task.sample(1) == sample and task.sample(0) != sample
    if subtask.startswith("niah"):
        value = sample.references[0]
        assert f"is: {value}." in sample.context
        key = re.search(r"for (\S+) mentioned", sample.query).group(1)
        assert f"for {key} is: {value}." in sample.context
        if subtask == "niah_single_1":
            assert "The grass is green. The sky is blue." in sample.context
        else:
            assert sample.context.count("One of the special magic") > 5
    elif subtask == "vt":
        names = sample.references
        value = re.search(r"value (\d+)", sample.query).group(1)
        assert f"VAR {names[0]} = {value}" in sample.context
        for a, b in zip(names, names[1:], strict=False):
            assert f"VAR {b} = VAR {a}" in sample.context
        assert sample.context.count("Answer: According to the chain(s)") == 1  # the solved example
    elif subtask == "cwe":
        listing = sample.context.split("Memorize the ones that appear most often.\n")[-1]
        counts = Counter(re.findall(r"\d+\. (\S+)", listing))
        top = {w for w, _ in counts.most_common(10)}
        assert top == set(sample.references)
    else:
        counts = Counter(sample.context.split("coded words. ")[1].split())
        assert [w for w, _ in counts.most_common(4)][1:] == sample.references
    assert task.score(sample, " ".join(sample.references)) == {"string_match_all": 1.0}


def test_code_samples_cut_real_stdlib_files():
    tokenizer = char_tokenizer()
    task = CodeTask(tokenizer, TaskOptions(lengths=[600], samples=8, seed=5))
    for i in range(8):
        sample = task.sample(i)
        source = read_source(stdlib_root() / sample.meta["file"])
        lines = source.split("\n")
        cut = sample.meta["line"] - 1
        assert sample.references == [lines[cut].strip()] and sample.references[0]
        assert "#" not in lines[cut] and cut not in string_lines(source)
        code = sample.context.removeprefix("Please complete the code given below. \n")
        assert code == "\n".join(lines[cut - sample.meta["context_lines"]:cut]) + "\n"
        assert count_tokens(tokenizer, sample.context) <= 600
        assert sample.query == "Next line of code:\n" and not sample.chat
    assert task.score(sample, "  " + sample.references[0] + "\nnext") == {"code_sim": 1.0}


def test_string_lines_marks_docstrings_and_multiline_strings_only():
    source = ('def f(x):\n    """Doc line one.\n\n    More prose here.\n    """\n    y = """a\nb"""\n'
              "    'one-liner'\n    z = 'not a docstring'\n    return x\n")
    assert string_lines(source) == {1, 2, 3, 4, 5, 6, 7}
    assert string_lines("x = (\n") == set()  # does not tokenize: no lines marked


def _longbench_dir(tmp_path):
    records = {
        "hotpotqa": [{"input": "Which city hosts the tower?", "context": "Passage 1: The tower is in Paris. " * 30,
                      "answers": ["Paris"], "length": 200, "dataset": "hotpotqa", "language": "en",
                      "all_classes": None, "_id": "h1"}],
        "trec": [{"input": "Question: Who wrote Hamlet?\nType:", "context": "Question: Where is Rome?\nType: Location",
                  "answers": ["Human being"], "length": 20, "dataset": "trec", "language": "en",
                  "all_classes": ["Location", "Human being", "Entity"], "_id": "t1"}],
        "passage_retrieval_en": [{"input": "An abstract.", "context": "Paragraph 1: x\n\nParagraph 2: y",
                                  "answers": ["Paragraph 2"], "length": 10, "dataset": "passage_retrieval_en",
                                  "language": "en", "all_classes": None, "_id": "p1"}],
    }
    for name, rows in records.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_longbench_official_prompt_truncation_and_chat_rules(tmp_path):
    data = _longbench_dir(tmp_path)
    tokenizer = char_tokenizer(chat=True)
    hotpot = LongBenchTask(tokenizer, TaskOptions(data_dir=str(data), lengths=[400]), "hotpotqa")
    sample = hotpot.sample(0)
    assert sample.chat and sample.max_new_tokens == 32 and sample.meta["truncated"]
    assert sample.context.startswith("Answer the question based on the given passages.")
    assert sample.query == ("\n\nAnswer the question based on the given passages. Only give me the answer and do not "
                            "output any other words.\n\nQuestion: Which city hosts the tower?\nAnswer:")
    assert count_tokens(tokenizer, sample.context + sample.query) <= 400
    assert hotpot.score(sample, "paris") == {"score": 1.0}
    ids = encode_prompt(tokenizer, sample.context, sample.query, chat=sample.chat)
    assert tokenizer.decode(ids.whole).startswith("<user>Answer the question")

    trec = LongBenchTask(tokenizer, TaskOptions(data_dir=str(data)), "trec")
    sample = trec.sample(0)
    assert not sample.chat and not sample.meta["truncated"]
    assert sample.context + sample.query == ("Please determine the type of the question below. Here are some "
                                             "examples of questions.\n\nQuestion: Where is Rome?\nType: Location\n"
                                             "Question: Who wrote Hamlet?\nType:")
    assert trec.score(sample, "Human being\nQuestion: next") == {"score": 1.0}  # first line only
    retrieval = LongBenchTask(tokenizer, TaskOptions(data_dir=str(data)), "passage_retrieval_en")
    assert retrieval.score(retrieval.sample(0), "Paragraph 2") == {"score": 1.0}


def test_longbench_loader_errors_and_summary(tmp_path):
    tokenizer = char_tokenizer()
    with pytest.raises(ValueError, match="not found"):
        LongBenchTask(tokenizer, TaskOptions(data_dir=str(tmp_path)), "qasper")
    (tmp_path / "qasper.jsonl").write_text('{"input": "q"}\n')
    with pytest.raises(ValueError, match="lacks field"):
        LongBenchTask(tokenizer, TaskOptions(data_dir=str(tmp_path)), "qasper")
    text, truncated = truncate_middle(tokenizer, "abcdefghij", 4)
    assert (text, truncated) == ("abij", True)
    scores = {"hotpotqa": 40.0, "lcc": 60.0, "trec": 50.0}
    summary = summarize(scores)
    assert summary["mean16"] is None and summary["datasets"] == 3
    assert summary["extraction"] == 45.0 and summary["generation"] == 60.0
    assert summary["categories"]["code"] == 60.0
    full = summarize({name: 10.0 for name in
                      ["narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique", "gov_report",
                       "qmsum", "multi_news", "trec", "triviaqa", "samsum", "passage_count", "passage_retrieval_en",
                       "lcc", "repobench-p"]})
    assert full["mean16"] == 10.0


def test_task_specs(tmp_path):
    assert parse_task_spec("needle,ruler:vt,cwe+longbench:lcc") == [
        ("needle", None), ("ruler", ["vt", "cwe"]), ("longbench", ["lcc"])]
    for bad, message in (("needles", "unknown task"), ("ruler:abc", "unknown ruler task"),
                         ("code:x", "no subtasks"), ("", "empty")):
        with pytest.raises(ValueError, match=message):
            parse_task_spec(bad)
    tasks = build_tasks("ruler", char_tokenizer(), TaskOptions(lengths=[2000]))
    assert [t.name for t in tasks] == [f"ruler/{s}" for s in SUBTASKS]
    data = _longbench_dir(tmp_path)
    names = [t.name for t in build_tasks("longbench", char_tokenizer(), TaskOptions(data_dir=str(data)))]
    assert names == ["longbench/hotpotqa", "longbench/trec", "longbench/passage_retrieval_en"]


def test_longbench_without_a_directory_reads_the_datasets_cache_offline(monkeypatch):
    import os
    import sys
    import types

    calls = []
    record = {"input": "Which city hosts the tower?", "context": "Passage 1:\nThe tower is in Paris.",
              "answers": ["Paris"], "_id": "abc"}
    config = types.SimpleNamespace(HF_DATASETS_OFFLINE=False)

    def load_dataset(path, name, split):
        calls.append((path, name, split, os.environ.get("HF_DATASETS_OFFLINE"), config.HF_DATASETS_OFFLINE))
        if name == "qasper":
            raise ConnectionError("offline and not cached")
        return [record] if name == "hotpotqa" else [record, record] if name == "lcc" else [{"input": "q"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset, config=config))
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    task = LongBenchTask(char_tokenizer(), TaskOptions(lengths=[400]), "hotpotqa")
    assert calls == [("THUDM/LongBench", "hotpotqa", "test", "1", True)]  # never reaches for the network
    assert "HF_DATASETS_OFFLINE" not in os.environ and config.HF_DATASETS_OFFLINE is False  # restored
    assert task.sample(0).id == "L400-abc" and task.sample(0).references == ["Paris"]
    with pytest.raises(ValueError, match=r"qasper is not in the `datasets` cache \(ConnectionError\).*--data-dir"):
        LongBenchTask(char_tokenizer(), TaskOptions(), "qasper")
    with pytest.raises(ValueError, match="record 0 lacks field"):
        LongBenchTask(char_tokenizer(), TaskOptions(), "trec")
    with pytest.raises(ValueError, match="records share the _id abc"):
        LongBenchTask(char_tokenizer(), TaskOptions(), "lcc")
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(ValueError, match="`datasets` library is not installed"):
        LongBenchTask(char_tokenizer(), TaskOptions(), "hotpotqa")


def test_a_ruler_length_shorter_than_the_tasks_fixed_text_is_refused():
    """niah_single_1 at 400 tokens needs more than 400 (its fixed text plus 128 to generate): refused, not a
    sample labelled 400 that is longer."""
    task = RulerTask(char_tokenizer(), TaskOptions(lengths=[400], samples=1), "niah_single_1")
    with pytest.raises(ValueError, match="length 400 is too short for this task's fixed text"):
        task.sample(0)
