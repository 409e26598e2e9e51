"""lavakv.options: every option of every component has a meaning and a source, and the docs table names it."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from lavakv.allocation import HEAD_ALLOCATIONS, LAYER_ALLOCATIONS
from lavakv.methods import describe, list_methods, method
from lavakv.options import MEANINGS, component_options, describe_options
from lavakv.scorers import SCORERS, scorer_defaults

DOCS = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


def test_every_option_of_every_composition_is_explained():
    for scorer, layers, heads in itertools.product(SCORERS, LAYER_ALLOCATIONS, HEAD_ALLOCATIONS):
        options = describe_options(scorer, layers, heads, {})
        names = [o.name for o in options]
        expected = {**scorer_defaults(scorer)}
        assert set(expected) <= set(names)
        for option in options:
            assert option.meaning and option.source, (scorer, layers, heads, option.name)
            assert option.value == option.default


def test_described_values_and_defaults_are_the_methods():
    for name in list_methods():
        if name == "full":
            continue
        info = describe(name)
        options = describe_options(info["scorer"], info["layers"], info["heads"], info["params"])
        assert {o.name: o.value for o in options} == info["params"], name
    tuned = method("cake", budget=64, gamma=50.0, kernel_size=3)
    options = {o.name: o for o in describe_options(tuned.scorer, tuned.layers, tuned.heads, tuned.params)}
    assert (options["gamma"].value, options["gamma"].default) == (50.0, 200.0)
    assert (options["kernel_size"].value, options["kernel_size"].default) == (3, 5)
    assert options["kernel_size"].source == "CAKE code"
    assert options["kernel_size"].component == "scorer cake"


def test_docs_options_table_names_every_option():
    documented = set(re.findall(r"^\| `([a-z_0-9]+)`(?:, `([a-z_0-9]+)`)? \|", DOCS.read_text(), re.M))
    names = {n for pair in documented for n in pair if n}
    every = {option for scorer, layers, heads in itertools.product(SCORERS, LAYER_ALLOCATIONS, HEAD_ALLOCATIONS)
             for _, _, option, _ in component_options(scorer, layers, heads)}
    assert every <= names, sorted(every - names)
    assert {key.rpartition(':')[2] for key in MEANINGS} == every  # no note for an option that no longer exists


def test_python_describe_carries_the_notes():
    """lavakv.describe(name)["notes"]: one note per parameter, saying what it does and where its default is from."""
    for name in list_methods():
        info = describe(name)
        assert set(info["notes"]) == set(info["params"]), name
    notes = describe("lava")["notes"]
    assert "cap formula" in notes["floor"] and "default from lavakv" in notes["floor"]
    assert notes["value_norm_range"].endswith("(default from LAVa paper, Eq. 5)")


def test_a_component_specific_meaning_wins():
    """n_sink of expected attention also leaves the sinks out of the query statistics; StreamingLLM's only keeps."""
    ea = {o.name: o for o in describe_options("expected-attention", "uniform", "uniform", {})}
    streaming = {o.name: o for o in describe_options("streaming", "uniform", "uniform", {})}
    assert "query statistics" in ea["n_sink"].meaning and "query statistics" not in streaming["n_sink"].meaning
    assert ea["n_sink"].source != streaming["n_sink"].source
