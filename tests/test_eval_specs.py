"""``lavakv eval --methods`` entries with per-method options: splitting, parsing, labels, directory names."""

from __future__ import annotations

import pytest

from lavakv.eval import EvalConfig, plan_runs
from lavakv.eval import specs as specs_module
from lavakv.eval.specs import label_slug, normalise_label, parse_method, split_methods

SWEEP = "full,lava,lava[alpha=0],lava[alpha=0.2,floor=lava-reference],ada-snapkv[alpha=0.1]"


def _plan(methods: str, budgets=(64, 128), ratios=()):
    return plan_runs(EvalConfig(task="fidelity", methods=split_methods(methods), budgets=list(budgets),
                                compression_ratios=list(ratios), window=8))


def test_split_respects_brackets_and_drops_spaces():
    assert split_methods(SWEEP) == ["full", "lava", "lava[alpha=0]", "lava[alpha=0.2,floor=lava-reference]",
                                    "ada-snapkv[alpha=0.1]"]
    assert split_methods(" lava [ alpha=0.2 , floor=exact ] , snapkv ") == ["lava [ alpha=0.2 , floor=exact ]",
                                                                              "snapkv"]
    assert split_methods("") == []


def test_entries_become_methods_with_typed_options_and_normalised_labels():
    spec = parse_method(" lava[ floor=lava-reference , alpha=.20 ] ")
    assert spec.name == "lava" and spec.params == {"alpha": 0.2, "floor": "lava-reference"}
    assert isinstance(spec.params["alpha"], float)
    assert spec.label == "lava[alpha=0.2,floor=lava-reference]"  # no spaces, options sorted, shortest number
    whole = parse_method("ada-snapkv[alpha=0]")  # a whole number for a float option: a float
    assert whole.params == {"alpha": 0.0} and isinstance(whole.params["alpha"], float)
    assert whole.label == "ada-snapkv[alpha=0]" == parse_method("ada-snapkv[alpha=0.0]").label
    assert parse_method("lava[kernel_size=5]").params == {"kernel_size": 5}
    assert parse_method("snapkv").label == "snapkv" and parse_method("snapkv").params == {}
    assert normalise_label(" lava[ alpha=0.20 ]") == "lava[alpha=0.2]" and normalise_label("snapkv") == "snapkv"


def test_a_bool_option_reads_true_or_false(monkeypatch):
    monkeypatch.setattr(specs_module, "describe", lambda name: {"params": {"flag": False, "alpha": 0.0}})
    assert parse_method("lava[flag=TRUE]").params == {"flag": True}
    assert parse_method("lava[flag=false]").label == "lava[flag=false]"
    with pytest.raises(ValueError, match="flag is true or false, got '1'"):
        parse_method("lava[flag=1]")


def test_each_entry_runs_at_every_budget_with_its_label():
    runs = _plan(SWEEP, ratios=(0.5,))
    labels = [r.label for r in runs]
    assert labels[:4] == ["full", "lava-b64", "lava-b128", "lava-r0.5"]
    assert "lava[alpha=0]-b64" in labels and "lava[alpha=0.2,floor=lava-reference]-r0.5" in labels
    by_label = {r.label: r for r in runs}
    method = by_label["lava[alpha=0.2,floor=lava-reference]-b128"].method
    assert method.name == "lava" and method.budget == 128 and method.window == 8
    assert method.params["alpha"] == 0.2 and method.params["floor"] == "lava-reference"
    assert by_label["ada-snapkv[alpha=0.1]-b64"].method.params["alpha"] == 0.1
    assert by_label["ada-snapkv[alpha=0.1]-b64"].name == "ada-snapkv[alpha=0.1]"
    assert by_label["lava-b64"].name == "lava" and by_label["full"].name == "full"


def test_directory_names_are_filesystem_safe_and_plain_presets_unchanged():
    assert label_slug("lava-b128") == "lava-b128" and label_slug("full") == "full"
    assert label_slug("lava[alpha=0.2]-b128") == "lava+alpha=0.2-b128"
    assert label_slug("lava[alpha=0.2,floor=lava-reference]-r0.5") == "lava+alpha=0.2+floor=lava-reference-r0.5"
    assert label_slug("lava[alpha=0,value_norm_range=prefix]") == "lava+alpha=0+value_norm_range=prefix"
    for label in (r.label for r in _plan(SWEEP)):
        name = label_slug(label)
        assert all(c.isalnum() or c in "._=+-" for c in name) and "__" not in name


@pytest.mark.parametrize(("methods", "message"), [
    ("lava[alpha=0.2", r"a '\[' is not closed"),
    ("lava]", r"'\]' without '\['"),
    ("lava[[alpha=0.2]]", r"nested '\['"),
    ("lava,,snapkv", "an empty entry"),
    ("lava,", "an empty entry"),
    ("lava[alpha=0.2]x", r"'x' after '\]'"),
    ("lava[]", "empty brackets"),
    ("[alpha=0.2]", r"no method name before '\['"),
    ("lava[alpha]", "'alpha' is not key=value"),
    ("lava[alpha=]", "'alpha=' is not key=value"),
    ("lava[alpha=0.1,alpha=0.2]", "alpha is given twice"),
    ("lava[alpha=0.2;x]", "may hold only letters"),
    ("lava[1a=2]", "is not an option name"),
    ("lavaa[alpha=0.2]", "unknown method 'lavaa'"),
    ("lava[foo=1]", r"'lava\[foo=1\]': unknown parameter\(s\) foo .*valid: alpha"),
    ("lava[alpha=high]", "alpha is a number, got 'high'"),
    ("lava[alpha=nan]", "alpha is a number, got 'nan'"),
    ("lava[kernel_size=7.5]", "kernel_size is a whole number, got '7.5'"),
    ("lava[alpha=2]", r"'lava\[alpha=2\]': .*alpha"),
    ("lava[floor=nope]", r"'lava\[floor=nope\]': floor must be one of"),
    ("full[alpha=0.2]", "full does not compress and takes no options"),
    ("lava[window=16]", "window is set for every method by --window"),
    ("lava[budget=64]", "budget is set for every method by --budgets"),
    ("lava[layers=uniform]", "layers is a component of the preset"),
    ("lava[alpha=0.2],lava[alpha=.2]", "duplicate runs"),
    ("lava[alpha=-0.0],lava[alpha=0]", "duplicate runs"),  # -0.0 is 0.0
])
def test_bad_entries_are_refused_with_the_reason(methods, message):
    with pytest.raises(ValueError, match=message):
        _plan(methods)


def test_an_entry_that_only_restates_a_default_is_the_same_method():
    from lavakv.methods import describe

    kernel = describe("lava")["params"]["kernel_size"]
    with pytest.raises(ValueError, match=rf"'lava' and 'lava\[kernel_size={kernel}\]' are the same method"):
        _plan(f"lava,lava[kernel_size={kernel}]")
    assert len(_plan(f"lava,lava[kernel_size={kernel + 2}]")) == 4


def test_against_label_must_be_well_formed():
    with pytest.raises(ValueError, match=r"a '\[' is not closed|is not closed"):
        normalise_label("lava[alpha=0.2")
