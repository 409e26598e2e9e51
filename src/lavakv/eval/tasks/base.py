"""What every evaluation task provides: numbered samples, a per-item score, and the task-level aggregate."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from lavakv.generation import PromptIds, encode_prompt

# Settings that only say how many samples are drawn. They are left out of a run's identity (its config hash), so a
# larger ``--samples`` extends a finished run with the samples it lacks instead of starting a new one: sample
# content depends only on the seed, its grid cell and its repeat number (:meth:`Task.sample_seed`).
SAMPLE_COUNT_SETTINGS = frozenset({"samples", "samples_per_length", "samples_per_cell", "records", "record_ids"})


@dataclass
class TaskOptions:
    """Settings shared by the tasks; each task reads the ones it uses and reports them in :meth:`Task.settings`.

    Attributes:
        lengths: prompt lengths in tokens (needle: haystack tokens; ruler: prompt + generation; code: context cap;
            fidelity: compressed prompt; longbench: middle-truncation ``max_length``). None: the task's default.
        depths: needle depths, fractions in [0, 1].
        samples: samples per length (per grid cell for needle); None: the task's default.
        seed: base seed; each sample's seed is derived from it, the sample's grid cell and its repeat number.
        max_new_tokens: overrides each task's own generation length.
        chat: wrap prompts in the tokenizer's chat template where the task's protocol does.
        haystack_file: a UTF-8 text file used as needle haystack instead of generated filler.
        data_dir: directory of the official LongBench JSONL files.
        continuation: teacher-forced tokens after the prompt (fidelity).
    """

    lengths: list[int] | None = None
    depths: list[float] | None = None
    samples: int | None = None
    seed: int = 0
    max_new_tokens: int | None = None
    chat: bool = True
    haystack_file: str | None = None
    data_dir: str | None = None
    continuation: int = 64


@dataclass
class Sample:
    """One prompt of a task.

    Attributes:
        id: stable identifier (same settings -> same id and content).
        context: the text compressed in query-agnostic runs (prompt instructions before it included).
        query: the text after the context (question and closing instructions), fed after compression when
            query-agnostic.
        answer_prefix: text the answer starts with (after the assistant header when a chat template is used).
        references: the reference answer(s).
        max_new_tokens: generation length.
        chat: whether the prompt goes through the tokenizer's chat template.
        meta: JSON-serialisable facts recorded with the prediction (length, depth, ...).
        extra_stops: strings whose last token also ends generation (LongBench samsum's newline).
        payload: task-private data not written out (e.g. the fidelity continuation ids).
    """

    id: str
    context: str
    query: str
    answer_prefix: str
    references: list[str]
    max_new_tokens: int
    chat: bool = True
    meta: dict[str, Any] = field(default_factory=dict)
    extra_stops: list[str] = field(default_factory=list)
    payload: Any = None

    def prompt_ids(self, tokenizer) -> PromptIds:
        """The sample's token ids (see :func:`lavakv.generation.encode_prompt`: exactly
        ``context + query``, the task's template writing every separator)."""
        return encode_prompt(tokenizer, self.context, self.query, answer_prefix=self.answer_prefix, chat=self.chat)


class Task:
    """Base class of a task: ``len(task)`` samples, ``task.sample(i)``, :meth:`score` and :meth:`aggregate`.

    Attributes:
        name: the task's name in result directories and reports (``"needle"``, ``"ruler/vt"``, ...).
        score_name: the key of the headline score in :meth:`aggregate`'s result.
        generates: False for tasks that run their own protocol (they implement ``evaluate``).
        has_question: whether samples end with a question that ``--query-agnostic`` can feed after compression.
    """

    name = "task"
    score_name = "score"
    generates = True
    has_question = True

    def __init__(self, tokenizer, options: TaskOptions) -> None:
        self.tokenizer = tokenizer
        self.options = options

    def __len__(self) -> int:
        raise NotImplementedError

    def sample(self, index: int) -> Sample:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """Generator settings, sample counts included (:meth:`identity`, without the counts, names the run)."""
        return {"seed": self.options.seed, "samples": len(self)}

    def sample_id(self, index: int) -> str:
        """The id of sample ``index`` without building it: ``L<length>-<repeat>`` (tasks with other grids override)."""
        cell, repeat = divmod(index, self.repeats)
        return f"L{self.lengths[cell]}-{repeat}"

    def identity(self) -> dict[str, Any]:
        """:meth:`settings` without the sample counts: what decides each sample's content."""
        return {k: v for k, v in self.settings().items() if k not in SAMPLE_COUNT_SETTINGS}

    def score(self, sample: Sample, prediction: str) -> dict[str, float]:
        """Per-item scores in [0, 1]."""
        raise NotImplementedError

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Task metrics from the prediction records: 100 x the mean of every per-item score, overall and by length."""
        return mean_scores(records)

    def sample_seed(self, cell: int, repeat: int) -> int:
        """The seed of repeat ``repeat`` of grid cell ``cell`` (a length, or a length x depth for needle).

        Distinct per sample, stable across runs, and independent of how many repeats are drawn per cell, so that a
        run extended with more samples keeps the ones it has.
        """
        return self.options.seed * 1_000_003 + cell * 10_007 + repeat


def mean_scores(records: list[dict[str, Any]], scale: float = 100.0) -> dict[str, Any]:
    """``scale`` x mean of each key of ``record["scores"]``, plus the same per ``meta["length"]``."""
    out: dict[str, Any] = {}
    if not records:
        return out
    names = list(records[0]["scores"])
    for name in names:
        out[name] = scale * statistics.fmean(r["scores"][name] for r in records)
    lengths = sorted({r["meta"].get("length") for r in records if r["meta"].get("length") is not None})
    if len(lengths) > 1:
        out["by_length"] = {}
        for length in lengths:
            subset = [r for r in records if r["meta"].get("length") == length]
            out["by_length"][str(length)] = {n: scale * statistics.fmean(r["scores"][n] for r in subset) for n in names}
    return out


def resolve(value, default):
    """``value`` unless it is None."""
    return default if value is None else value
