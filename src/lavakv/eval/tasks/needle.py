"""Needle in a haystack over a grid of haystack lengths x needle depths, lengths counted by the model's tokenizer.

The haystack is the generated filler prose of :mod:`lavakv.haystack` (``build_haystack``), or sentences of a
user-supplied text file (``--haystack-file``) cycled from a seeded starting sentence. The needle is
:data:`lavakv.haystack.NEEDLE` with a seven-digit value; the prompt asks for it and starts the answer with
:data:`lavakv.haystack.ANSWER_PREFIX`. Scores: ``exact`` (the normalised number occurs in the answer) and
``rouge1_recall`` (share of the number's digits found, a softer score). Sample ``i`` is grid cell
``i // samples`` (lengths outer, depths inner), repetition ``i % samples``.
"""

from __future__ import annotations

import hashlib
import random
import re
from functools import cached_property
from pathlib import Path
from typing import Any

from lavakv.eval.metrics import rouge1_recall
from lavakv.eval.tasks.base import Sample, Task, TaskOptions, mean_scores, resolve
from lavakv.eval.words import adjectives, nouns
from lavakv.generation import count_tokens
from lavakv.haystack import ANSWER_PREFIX, NEEDLE, QUESTION, Haystack, answer_correct, build_haystack

DEFAULT_LENGTHS = [1024, 2048, 4096]
DEFAULT_DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


class NeedleTask(Task):
    """Needle in a haystack (EVALUATION.md); headline score ``exact`` (0-100)."""

    name = "needle"
    score_name = "exact"

    def __init__(self, tokenizer, options: TaskOptions) -> None:
        super().__init__(tokenizer, options)
        self.lengths = resolve(options.lengths, DEFAULT_LENGTHS)
        self.depths = resolve(options.depths, DEFAULT_DEPTHS)
        self.repeats = resolve(options.samples, 1)
        self.max_new_tokens = resolve(options.max_new_tokens, 16)
        for depth in self.depths:
            if not 0.0 <= depth <= 1.0:
                raise ValueError(f"needle depths must be fractions in [0, 1] (0 = start, 1 = end), got {depth}")
        if options.haystack_file is not None:
            path = Path(options.haystack_file)
            if not path.is_file():
                raise ValueError(f"--haystack-file {path}: no such file")
            if not self._file_sentences:
                raise ValueError(f"--haystack-file {path} has no text")

    def __len__(self) -> int:
        return len(self.lengths) * len(self.depths) * self.repeats

    def settings(self) -> dict[str, Any]:
        haystack: dict[str, Any] = {"kind": "generated filler (lavakv.haystack)"}
        if self.options.haystack_file is not None:
            data = Path(self.options.haystack_file).read_bytes()
            haystack = {"kind": "file", "path": str(self.options.haystack_file),
                        "sha256": hashlib.sha256(data).hexdigest()}
        return {"lengths": self.lengths, "depths": self.depths, "samples_per_cell": self.repeats,
                "seed": self.options.seed, "max_new_tokens": self.max_new_tokens, "chat": self.options.chat,
                "haystack": haystack}

    def sample_id(self, index: int) -> str:
        cell, repeat = divmod(index, self.repeats)
        length = self.lengths[cell // len(self.depths)]
        return f"L{length}-d{self.depths[cell % len(self.depths)]:g}-r{repeat}"

    def sample(self, index: int) -> Sample:
        cell, repeat = divmod(index, self.repeats)
        length = self.lengths[cell // len(self.depths)]
        depth = self.depths[cell % len(self.depths)]
        seed = self.sample_seed(cell, repeat)
        if self.options.haystack_file is None:
            hay = build_haystack(self.tokenizer, length, depth=depth, seed=seed)
        else:
            hay = self._file_haystack(length, depth, seed)
        return Sample(
            id=self.sample_id(index), context=hay.context, query=f"\n\n{hay.question}",
            answer_prefix=f"\n{hay.answer_prefix}", references=[hay.answer], max_new_tokens=self.max_new_tokens,
            chat=self.options.chat, meta={"length": length, "depth": depth, "haystack_tokens": hay.tokens},
        )

    def score(self, sample: Sample, prediction: str) -> dict[str, float]:
        answer = sample.references[0]
        return {"exact": float(answer_correct(prediction, answer)), "rouge1_recall": rouge1_recall(prediction, answer)}

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        out = mean_scores(records)
        grid: dict[str, dict[str, list[float]]] = {}
        for r in records:
            grid.setdefault(str(r["meta"]["length"]), {}).setdefault(f"{r['meta']['depth']:g}", []).append(
                r["scores"]["exact"])
        out["grid"] = {length: {depth: 100.0 * sum(v) / len(v) for depth, v in row.items()}
                       for length, row in grid.items()}
        return out

    # -- haystack from a file ------------------------------------------------------------------------------
    @cached_property
    def _file_sentences(self) -> list[str]:
        text = Path(self.options.haystack_file).read_text(encoding="utf-8", errors="replace")
        return [s for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s]

    def _file_haystack(self, target: int, depth: float, seed: int) -> Haystack:
        """Like :func:`lavakv.haystack.build_haystack`, with the file's sentences (cycled) as filler."""
        rng = random.Random(seed)
        key = f"{rng.choice(adjectives())}-{rng.choice(nouns())}"
        value = str(rng.randint(1_000_000, 9_999_999))
        needle = NEEDLE.format(key=key, value=value)
        needle_tokens = count_tokens(self.tokenizer, needle)
        if target < 2 * needle_tokens:
            raise ValueError(f"haystack length {target} is too small for the needle ({needle_tokens} tokens)")
        source = self._file_sentences
        start = rng.randrange(len(source))
        filler: list[str] = []
        estimate = needle_tokens
        while estimate < target:
            filler.append(source[(start + len(filler)) % len(source)])
            estimate += count_tokens(self.tokenizer, " " + filler[-1])

        def assemble(sentences: list[str]) -> str:
            at = round(depth * len(sentences))
            return " ".join(sentences[:at] + [needle] + sentences[at:])

        lo, hi = 0, len(filler)  # largest prefix of the filler that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count_tokens(self.tokenizer, assemble(filler[:mid])) <= target:
                lo = mid
            else:
                hi = mid - 1
        context = assemble(filler[:lo])
        return Haystack(context=context, question=QUESTION.format(key=key), answer=value,
                        answer_prefix=ANSWER_PREFIX.format(key=key), key=key, depth=depth,
                        tokens=count_tokens(self.tokenizer, context))
