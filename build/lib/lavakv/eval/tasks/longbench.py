"""LongBench (v1) on the official data, loaded at run time from the user's copy; never bundled.

Records come from ``<data_dir>/<dataset>.jsonl`` (the official files: ``input``, ``context``, ``answers``,
``length``, ``dataset``, ``language``, ``all_classes``, ``_id``) or, without a directory, from the ``datasets``
library's cache of ``THUDM/LongBench`` (offline). The protocol is the official ``pred.py`` / ``eval.py``
(THUDM/LongBench, MIT): the per-dataset prompt template and generation length, middle truncation of the
tokenized prompt to ``max_length`` (first half + last half, decoded without special tokens), the chat template
skipped for trec, triviaqa, samsum, lsht, lcc and repobench-p, generation stopped at a newline for samsum, the
first line of the prediction kept for trec, triviaqa, samsum and lsht, and the best score over the answers.
Query-agnostic runs compress the prompt up to the end of the context and feed the rest (question and
instructions) afterwards; when middle truncation cut into that rest the sample runs query-aware
(``meta.split_fallback``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from lavakv.eval.metrics import METRICS, best_of
from lavakv.eval.tasks.base import Sample, Task, TaskOptions, resolve

PROMPTS = {
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer the "
    "question as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: "
    "{context}\n\nNow, answer the question based on the story as concisely as you can, using a single phrase if "
    "possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "qasper": "You are given a scientific article and a question. Answer the question as concisely as you can, using "
    "a single phrase or sentence if possible. If the question cannot be answered based on the information in the "
    "article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or "
    "\"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the "
    "above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be "
    "answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, "
    "answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "multifieldqa_en": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following "
    "question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: "
    "{input}\nAnswer:",
    "multifieldqa_zh": "阅读以下文字并用中文简短回答：\n\n{context}\n\n"
    "现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n\n问题：{input}\n回答：",
    "hotpotqa": "Answer the question based on the given passages. Only give me the answer and do not output any other "
    "words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only "
    "give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "2wikimqa": "Answer the question based on the given passages. Only give me the answer and do not output any other "
    "words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only "
    "give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "musique": "Answer the question based on the given passages. Only give me the answer and do not output any other "
    "words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only "
    "give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "dureader": "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n"
    "请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n"
    "{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the query in "
    "one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript "
    "in one or more sentences.\n\nQuery: {input}\nAnswer:",
    "multi_news": "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\n"
    "Now, write a one-page summary of all the news.\n\nSummary:",
    "vcsum": "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：",
    "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n"
    "{input}",
    "triviaqa": "Answer the question based on the given passage. Only give me the answer and do not output any other "
    "words. The following are some examples.\n\n{context}\n\n{input}",
    "samsum": "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n"
    "{input}",
    "lsht": "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}",
    "passage_count": "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please "
    "carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. "
    "In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final "
    "count of unique paragraphs after removing duplicates. The output format should only contain the number, such "
    "as 1, 2, 3, and so on.\n\nThe final answer is: ",
    "passage_retrieval_en": "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which "
    "paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the "
    "number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph "
    "2\", etc.\n\nThe answer is: ",
    "passage_retrieval_zh": "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n"
    "{context}\n\n下面是一个摘要\n\n{input}\n\n请输入摘要所属段落的编号。答案格式必须是\"段落1\"，\"段落2\"等格式\n\n答案是：",
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}
MAX_NEW_TOKENS = {
    "narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "multifieldqa_zh": 64, "hotpotqa": 32, "2wikimqa": 32,
    "musique": 32, "dureader": 128, "gov_report": 512, "qmsum": 512, "multi_news": 512, "vcsum": 512, "trec": 64,
    "triviaqa": 32, "samsum": 128, "lsht": 64, "passage_count": 32, "passage_retrieval_en": 32,
    "passage_retrieval_zh": 32, "lcc": 64, "repobench-p": 64,
}
METRIC_OF = {
    "narrativeqa": "qa_f1", "qasper": "qa_f1", "multifieldqa_en": "qa_f1", "multifieldqa_zh": "qa_f1_zh",
    "hotpotqa": "qa_f1", "2wikimqa": "qa_f1", "musique": "qa_f1", "dureader": "rouge_zh", "gov_report": "rouge_l",
    "qmsum": "rouge_l", "multi_news": "rouge_l", "vcsum": "rouge_zh", "trec": "classification", "triviaqa": "qa_f1",
    "samsum": "rouge_l", "lsht": "classification", "passage_count": "count", "passage_retrieval_en": "retrieval",
    "passage_retrieval_zh": "retrieval_zh", "lcc": "code_sim", "repobench-p": "code_sim",
}
NO_CHAT = {"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"}
FIRST_LINE = {"trec", "triviaqa", "samsum", "lsht"}
CATEGORIES = {
    "single-doc QA": ["narrativeqa", "qasper", "multifieldqa_en"],
    "multi-doc QA": ["hotpotqa", "2wikimqa", "musique"],
    "summarization": ["gov_report", "qmsum", "multi_news"],
    "few-shot": ["trec", "triviaqa", "samsum"],
    "synthetic": ["passage_count", "passage_retrieval_en"],
    "code": ["lcc", "repobench-p"],
}
ENGLISH_16 = [name for names in CATEGORIES.values() for name in names]
GENERATION = {"gov_report", "qmsum", "multi_news", "samsum", "lcc", "repobench-p"}
DEFAULT_MAX_LENGTH = 3500  # LongBench's setting for 4K-context models
FIELDS = ("input", "context", "answers")


def load_records(dataset: str, data_dir: str | None) -> list[dict[str, Any]]:
    """The official records of ``dataset``: ``<data_dir>/<dataset>.jsonl``, or the ``datasets`` cache (offline).

    Raises:
        ValueError: unknown dataset, missing file, malformed record, or no local copy anywhere.
    """
    if dataset not in PROMPTS:
        raise ValueError(f"unknown LongBench dataset {dataset!r}; choose from: {', '.join(PROMPTS)}")
    if data_dir is not None:
        path = Path(data_dir) / f"{dataset}.jsonl"
        if not path.is_file():
            raise ValueError(f"LongBench: {path} not found; --data-dir must hold the official <dataset>.jsonl files")
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"LongBench: {path} line {number} is not JSON: {error}") from None
            records.append(_checked(record, f"{path} line {number}"))
        return records
    return _from_datasets_cache(dataset)


def _checked(record: dict[str, Any], where: str) -> dict[str, Any]:
    missing = [f for f in FIELDS if f not in record]
    if missing:
        raise ValueError(f"LongBench: {where} lacks field(s) {', '.join(missing)}")
    return record


def _from_datasets_cache(dataset: str) -> list[dict[str, Any]]:
    previous = os.environ.get("HF_DATASETS_OFFLINE")
    os.environ["HF_DATASETS_OFFLINE"] = "1"  # read when datasets is first imported
    try:
        return _load_offline(dataset)
    finally:
        if previous is None:
            os.environ.pop("HF_DATASETS_OFFLINE", None)
        else:
            os.environ["HF_DATASETS_OFFLINE"] = previous


def _load_offline(dataset: str) -> list[dict[str, Any]]:
    hint = "pass --data-dir with the official LongBench JSONL files (data.zip of THUDM/LongBench, unpacked)"
    try:
        import datasets
    except ImportError:
        raise ValueError(f"LongBench data: no --data-dir and the `datasets` library is not installed; {hint}") from None
    config = getattr(datasets, "config", None)
    was = getattr(config, "HF_DATASETS_OFFLINE", None)  # datasets imported earlier read the variable then
    if was is not None:
        config.HF_DATASETS_OFFLINE = True
    try:
        data = datasets.load_dataset("THUDM/LongBench", dataset, split="test")
    except Exception as error:  # noqa: BLE001 - any failure means: not in the cache
        raise ValueError(f"LongBench {dataset} is not in the `datasets` cache ({type(error).__name__}); {hint}"
                         ) from None
    finally:
        if was is not None:
            config.HF_DATASETS_OFFLINE = was
    return [_checked(dict(record), f"datasets cache {dataset} record {i}") for i, record in enumerate(data)]


def truncate_middle(tokenizer, prompt: str, max_length: int) -> tuple[str, bool]:
    """LongBench's middle truncation: over ``max_length`` tokens keep the first and last ``max_length // 2``."""
    ids = tokenizer(prompt, truncation=False)["input_ids"]
    if len(ids) <= max_length:
        return prompt, False
    half = int(max_length / 2)
    return (tokenizer.decode(ids[:half], skip_special_tokens=True)
            + tokenizer.decode(ids[-half:], skip_special_tokens=True)), True


class LongBenchTask(Task):
    """One LongBench dataset; headline score = its official metric (0-100)."""

    score_name = "score"

    def __init__(self, tokenizer, options: TaskOptions, dataset: str) -> None:
        super().__init__(tokenizer, options)
        self.dataset = dataset
        self.name = f"longbench/{dataset}"
        self.records = load_records(dataset, options.data_dir)
        # the data's content names the run (a changed file never mixes with records scored on the old one)
        self.data_sha256 = hashlib.sha256(json.dumps(self.records, sort_keys=True, default=str).encode()).hexdigest()
        ids = [str(r.get("_id", i)) for i, r in enumerate(self.records)]
        if len(set(ids)) != len(ids):
            repeated = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"LongBench {dataset}: records share the _id {', '.join(repeated[:5])}; ids must be "
                             "unique (they name the samples)")
        if options.samples is not None:
            self.records = self.records[: options.samples]
        if not self.records:
            raise ValueError(f"LongBench {dataset}: no records")
        self.lengths = resolve(options.lengths, [DEFAULT_MAX_LENGTH])
        self.max_new_tokens = resolve(options.max_new_tokens, MAX_NEW_TOKENS[dataset])
        self.metric = METRIC_OF[dataset]

    def __len__(self) -> int:
        return len(self.lengths) * len(self.records)

    def settings(self) -> dict[str, Any]:
        ids = [str(r.get("_id", i)) for i, r in enumerate(self.records)]
        return {"dataset": self.dataset, "max_lengths": self.lengths, "records": len(self.records),
                "record_ids": ids, "max_new_tokens": self.max_new_tokens, "metric": self.metric,
                "chat": self.options.chat and self.dataset not in NO_CHAT,
                "source": self.options.data_dir or "datasets cache (THUDM/LongBench)", "data_sha256": self.data_sha256}

    def sample_id(self, index: int) -> str:
        max_length = self.lengths[index // len(self.records)]
        number = index % len(self.records)
        return f"L{max_length}-{self.records[number].get('_id', number)}"

    def sample(self, index: int) -> Sample:
        max_length = self.lengths[index // len(self.records)]
        number = index % len(self.records)
        record = self.records[number]
        template = PROMPTS[self.dataset]
        prompt = template.format(context=record["context"], input=record["input"])
        prompt, truncated = truncate_middle(self.tokenizer, prompt, max_length)
        rest = template.split("{context}", 1)[1].format(input=record["input"])
        fallback = not prompt.endswith(rest)
        context, query = (prompt, "") if fallback else (prompt[: len(prompt) - len(rest)], rest)
        return Sample(
            id=self.sample_id(index), context=context, query=query, answer_prefix="",
            references=[str(a) for a in record["answers"]], max_new_tokens=self.max_new_tokens,
            chat=self.options.chat and self.dataset not in NO_CHAT,
            meta={"length": max_length, "record": number, "truncated": truncated, "split_fallback": fallback,
                  "all_classes": record.get("all_classes"), "original_length": record.get("length")},
            extra_stops=["\n"] if self.dataset == "samsum" else [],
        )

    def score(self, sample: Sample, prediction: str) -> dict[str, float]:
        if self.dataset in FIRST_LINE:
            prediction = prediction.lstrip("\n").split("\n")[0]
        value = best_of(METRICS[self.metric], prediction, sample.references,
                        all_classes=sample.meta.get("all_classes") or [])
        return {"score": float(value)}


def summarize(scores: dict[str, float]) -> dict[str, Any]:
    """LongBench summary from per-dataset scores (0-100): the 16-task English+code mean (when all 16 are present),
    category means, and the extraction / generation split, each over the datasets present."""

    def mean(names: list[str]) -> float | None:
        present = [scores[n] for n in names if n in scores]
        return sum(present) / len(present) if present else None

    out: dict[str, Any] = {
        "datasets": len([n for n in ENGLISH_16 if n in scores]),
        "mean16": mean(ENGLISH_16) if all(n in scores for n in ENGLISH_16) else None,
        "categories": {name: mean(names) for name, names in CATEGORIES.items()},
        "extraction": mean([n for n in ENGLISH_16 if n not in GENERATION]),
        "generation": mean([n for n in ENGLISH_16 if n in GENERATION]),
    }
    return out
