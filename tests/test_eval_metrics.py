"""Scoring rules: LongBench's official metrics, RULER's string_match_all, ROUGE-1 recall."""

from __future__ import annotations

import pytest

from lavakv.eval import metrics

# values computed with the `rouge` package (pltrdy, 1.0.1): Rouge().get_scores([p], [r], avg=True)["rouge-l"]["f"]
ROUGE_CASES = [
    ("bird cat ran . high the far high and hills a .", "far mat on ran over", 0.285714281122449),
    ("mat far on sat away high over on and bird away a over high flew . ran cat over the sat the",
     "the high away dog away sat a hills dog dog mat over flew sat sat away . high on far over far on",
     0.5384615334911242),
    ("away over a over hills far flew sat the away hills dog far . a . cat",
     "ran high sat sat mat mat cat sat over the . ran . dog a hills bird hills ran flew", 0.5454545404958678),
]


@pytest.mark.parametrize(("prediction", "reference", "expected"), ROUGE_CASES)
def test_rouge_l_matches_the_rouge_package(prediction, reference, expected):
    assert metrics.rouge_l(prediction, reference) == pytest.approx(expected, abs=1e-12)


def test_rouge_l_edge_cases():
    assert metrics.rouge_l("", "a summary") == 0.0
    assert metrics.rouge_l("the same words", "the same words") == pytest.approx(1.0, abs=1e-6)


def test_qa_f1_uses_squad_normalisation():
    assert metrics.qa_f1("The Eiffel Tower!", "eiffel tower") == 1.0
    assert metrics.qa_f1("Paris, France", "Paris") == pytest.approx(2 / 3)
    assert metrics.qa_f1("London", "Paris") == 0.0
    assert metrics.best_of(metrics.qa_f1, "Paris", ["London", "paris"]) == 1.0


def test_classification_follows_the_official_rule():
    classes = ["Location", "Abbreviation", "Entity", "Human being"]
    assert metrics.classification("Location", "Location", all_classes=classes) == 1.0
    assert metrics.classification("Location or Entity", "Location", all_classes=classes) == 0.5
    assert metrics.classification("a person", "Human being", all_classes=classes) == 0.0
    # a named class contained in the true class is dropped: "Entity" is inside "Entity type"
    assert metrics.classification("Entity type", "Entity type", all_classes=["Entity", "Entity type"]) == 1.0


def test_retrieval_and_count_share_of_numbers():
    assert metrics.retrieval("Paragraph 12", "Paragraph 12") == 1.0
    assert metrics.retrieval("Paragraph 3 or Paragraph 12", "Paragraph 12") == 0.5
    assert metrics.retrieval("no idea", "Paragraph 12") == 0.0
    assert metrics.count("There are 7 unique paragraphs", "7") == 1.0
    assert metrics.count("7 or 8", "7") == 0.5
    with pytest.raises(ValueError, match="Paragraph N"):
        metrics.retrieval("1", "12")


def test_code_sim_takes_the_first_line_without_comment_or_fence():
    assert metrics.first_code_line("```python\n# note\nreturn x + 1\nmore") == "return x + 1"
    assert metrics.code_sim("```\nreturn x + 1\n", "return x + 1") == 1.0
    assert 0.5 < metrics.code_sim("return x + 2", "return x + 1") < 1.0
    assert metrics.code_sim("# only comments", "return x") == 0.0


def test_code_sim_is_a_whole_percent_as_longbench_scores_it():
    """LongBench's fuzzywuzzy ratio is an integer percent: 2 * matches / total characters, rounded."""
    assert metrics.code_sim("abc", "abd") == 0.67  # 2 * 2 / 6 = 66.7 %
    assert metrics.code_sim("return x + 2", "return x + 1") == round(100 * 2 * 11 / 24) / 100  # 91.7 -> 0.92


def test_string_match_all_is_the_fraction_of_references_found():
    assert metrics.string_match_all("VAR ABCDE, var fghij", ["ABCDE", "FGHIJ", "KLMNO"]) == pytest.approx(2 / 3)
    assert metrics.ruler_postprocess("  1234\x00567 ") == "1234\n567"
    with pytest.raises(ValueError):
        metrics.string_match_all("x", [])


def test_rouge1_recall_counts_digits_one_by_one():
    assert metrics.rouge1_recall("The number is 1234567.", "1234567") == 1.0
    assert metrics.rouge1_recall("1234568", "1234567") == pytest.approx(6 / 7)
    assert metrics.rouge1_recall("nothing", "1234567") == 0.0
