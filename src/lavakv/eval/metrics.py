"""Scoring rules of the evaluation tasks: LongBench's official metrics, RULER's ``string_match_all`` and
``string_match_part``, ROUGE-1 recall.

Every per-item score is a float in [0, 1]; a task score is 100 x the mean over items. The LongBench rules follow
the official ``metrics.py`` / ``eval.py`` of THUDM/LongBench (MIT) rule for rule, quirks included:

* ``qa_f1``: SQuAD normalisation (lower case, punctuation and articles dropped), token F1.
* ``rouge_l``: ROUGE-L F as the ``rouge`` package (pltrdy, 1.0.x) computes it: the texts are split into sentences
  at ``.``, sentences into words at spaces, and the summary-level union LCS is counted over *sets* of words
  (``exclusive=True``, that package's default). An empty text scores 0 (the official code catches the error).
* ``classification``: the classes named in the prediction (a class contained in the true class is dropped),
  1 / count if the true class is among them; the official fallback to the closest class never runs (its guard
  ``em_match_list != 0`` is always true), so neither does it here; the removal loop edits the list it iterates,
  as the official one does.
* ``retrieval`` / ``count``: the fraction of the numbers in the prediction that equal the answer's.
* ``code_sim``: the first line of the prediction without a backtick, ``#`` or ``//``; its fuzzy ratio to the
  reference (``rapidfuzz.fuzz.ratio``, MIT, in place of the GPL ``fuzzywuzzy``), rounded to a whole percent as
  ``fuzzywuzzy.fuzz.ratio`` returns it.
* Chinese tasks (``qa_f1_zh``, ``rouge_zh``) segment with ``jieba``, imported when first used.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

_CN_PUNCTUATION = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)


# -- QA F1 ------------------------------------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, punctuation removed, articles (a, an, the) removed, spaces collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """F1 of the token multisets."""
    common = Counter(prediction) & Counter(reference)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(prediction)
    recall = same / len(reference)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, reference: str, **_) -> float:
    """Token F1 after SQuAD normalisation (LongBench ``qa_f1_score``)."""
    return token_f1(normalize_answer(prediction).split(), normalize_answer(reference).split())


def _jieba_cut(text: str) -> list[str]:
    try:
        import jieba
    except ImportError as error:
        raise ImportError("the Chinese LongBench metrics need jieba: pip install jieba") from error
    return list(jieba.cut(text, cut_all=False))


def _normalize_zh(text: str) -> str:
    drop = set(string.punctuation + _CN_PUNCTUATION)
    return "".join("".join(ch for ch in text.lower() if ch not in drop).split())


def qa_f1_zh(prediction: str, reference: str, **_) -> float:
    """Token F1 over jieba words with Chinese normalisation (LongBench ``qa_f1_zh_score``)."""
    pred = [t for t in (_normalize_zh(w) for w in _jieba_cut(prediction)) if t]
    ref = [t for t in (_normalize_zh(w) for w in _jieba_cut(reference)) if t]
    return token_f1(pred, ref)


# -- ROUGE --------------------------------------------------------------------------------------------------------
def _lcs_words(x: list[str], y: list[str]) -> list[str]:
    """The LCS of ``x`` and ``y`` as the ``rouge`` package reconstructs it (same tie-breaking)."""
    n, m = len(x), len(y)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        xi, row, above = x[i - 1], table[i], table[i - 1]
        for j in range(1, m + 1):
            row[j] = above[j - 1] + 1 if xi == y[j - 1] else max(above[j], row[j - 1])
    out: list[str] = []
    i, j = n, m
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            out.append(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return out[::-1]


def _sentences(text: str) -> list[str]:
    return [" ".join(part.split()) for part in text.split(".") if len(part) > 0]


def rouge_l(prediction: str, reference: str, **_) -> float:
    """ROUGE-L F, summary level: ``rouge.Rouge().get_scores(p, r)[0]["rouge-l"]["f"]`` (LongBench ``rouge_score``)."""
    hyp, ref = _sentences(prediction), _sentences(reference)
    if not hyp or not ref:
        return 0.0
    m = len({w for s in ref for w in s.split(" ")})
    n = len({w for s in hyp for w in s.split(" ")})
    union: set[str] = set()
    llcs = 0
    for ref_sentence in ref:
        before = len(union)
        ref_words = ref_sentence.split(" ")
        for hyp_sentence in hyp:
            union |= set(_lcs_words(ref_words, hyp_sentence.split(" ")))
        llcs += len(union) - before
    r, p = llcs / m, llcs / n
    return 2.0 * (p * r) / (p + r + 1e-8)


def rouge_zh(prediction: str, reference: str, **_) -> float:
    """ROUGE-L F over jieba words (LongBench ``rouge_zh_score``)."""
    return rouge_l(" ".join(_jieba_cut(prediction)), " ".join(_jieba_cut(reference)))


def _unigrams(text: str) -> list[str]:
    """Lower-cased word tokens; every digit is a token of its own (a number with one wrong digit scores high)."""
    return re.findall(r"\d|[^\W\d_]+", text.lower())


def rouge1_recall(prediction: str, reference: str, **_) -> float:
    """ROUGE-1 recall: the fraction of the reference's unigrams (counted with multiplicity) found in the prediction."""
    ref = Counter(_unigrams(reference))
    if not ref:
        return 0.0
    overlap = ref & Counter(_unigrams(prediction))
    return sum(overlap.values()) / sum(ref.values())


# -- classification, retrieval, count -------------------------------------------------------------------------
def classification(prediction: str, reference: str, *, all_classes: Sequence[str] | None = None, **_) -> float:
    """LongBench ``classification_score`` (see the module docstring for its quirk)."""
    matches = [c for c in (all_classes or []) if c in prediction]
    for term in matches:  # noqa: B909 - the official loop removes while iterating (skipping the next item); kept
        if term in reference and term != reference:
            matches.remove(term)
    return 1.0 / len(matches) if reference in matches else 0.0


def _number_share(prediction: str, target: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    return 0.0 if not numbers else sum(n == target for n in numbers) / len(numbers)


def retrieval(prediction: str, reference: str, **_) -> float:
    """LongBench ``retrieval_score``: the answer names ``Paragraph N``; share of the prediction's numbers equal to N."""
    found = re.findall(r"Paragraph (\d+)", reference)
    if not found:
        raise ValueError(f"retrieval reference must name 'Paragraph N', got {reference!r}")
    return _number_share(prediction, found[0])


def retrieval_zh(prediction: str, reference: str, **_) -> float:
    """LongBench ``retrieval_zh_score``: as :func:`retrieval` with ``段落N``."""
    found = re.findall(r"段落(\d+)", reference)
    if not found:
        raise ValueError(f"retrieval reference must name '段落N', got {reference!r}")
    return _number_share(prediction, found[0])


def count(prediction: str, reference: str, **_) -> float:
    """LongBench ``count_score``: share of the numbers in the prediction equal to the answer."""
    return _number_share(prediction, str(reference))


# -- code ---------------------------------------------------------------------------------------------------------
def first_code_line(prediction: str) -> str:
    """The first line of ``prediction`` with no backtick, ``#`` or ``//`` (LongBench's rule), or ``""``."""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            return line
    return ""


def code_sim(prediction: str, reference: str, **_) -> float:
    """LongBench ``code_sim_score``: fuzzy ratio of :func:`first_code_line` to the reference, in [0, 1]."""
    try:
        from rapidfuzz import fuzz
    except ImportError as error:
        raise ImportError(
            "code_sim (the code task and LongBench lcc / repobench-p) needs rapidfuzz, part of lavakv's eval extra: "
            "pip install 'lavakv[eval]'"
        ) from error

    return round(fuzz.ratio(first_code_line(prediction), reference)) / 100.0  # fuzzywuzzy rounds to whole percent


# -- RULER --------------------------------------------------------------------------------------------------------
def ruler_postprocess(prediction: str) -> str:
    """RULER's prediction clean-up: control characters become newlines, outer whitespace stripped."""
    return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """RULER ``string_match_all`` of one item: the fraction of references found (case-insensitive) in the prediction."""
    if not references:
        raise ValueError("string_match_all needs at least one reference string")
    lower = prediction.lower()
    return sum(ref.lower() in lower for ref in references) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """RULER ``string_match_part`` of one item (its qa tasks): 1.0 if any reference is found (case-insensitive) in the
    prediction, else 0.0."""
    if not references:
        raise ValueError("string_match_part needs at least one reference string")
    lower = prediction.lower()
    return float(any(ref.lower() in lower for ref in references))


def best_of(metric: Callable[..., float], prediction: str, references: Sequence[str], **kwargs) -> float:
    """The best score of ``prediction`` over several references (LongBench's max over ``answers``)."""
    return max((metric(prediction, ref, **kwargs) for ref in references), default=0.0)


METRICS: dict[str, Callable[..., float]] = {
    "qa_f1": qa_f1,
    "qa_f1_zh": qa_f1_zh,
    "rouge_l": rouge_l,
    "rouge_zh": rouge_zh,
    "classification": classification,
    "retrieval": retrieval,
    "retrieval_zh": retrieval_zh,
    "count": count,
    "code_sim": code_sim,
}
