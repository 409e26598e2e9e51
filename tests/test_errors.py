"""Bad input raises a clear error that says what to do."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

import lavakv


@pytest.mark.parametrize("kwargs,error,match", [
    ({"budget": 0}, ValueError, "budget must be >= 1"),
    ({"budget": -5}, ValueError, "budget must be >= 1"),
    ({"budget": 16, "window": 32}, ValueError, "smaller than the observation window"),
    ({"compression_ratio": 1.0}, ValueError, r"in \[0, 1\)"),
    ({"compression_ratio": -0.1}, ValueError, r"in \[0, 1\)"),
    ({"compression_ratio": float("nan")}, ValueError, r"in \[0, 1\)"),
    ({"budget": 64, "compression_ratio": 0.5}, ValueError, "exactly one"),
    ({}, ValueError, "exactly one"),
    ({"budget": 64.0}, TypeError, "budget must be an int"),
    ({"budget": 64, "window": 0}, ValueError, "window must be >= 1"),
    ({"budget": 64, "nonsense": 3}, TypeError, "unknown parameter"),
])
def test_bad_budget_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        lavakv.method("snapkv", **kwargs)


def test_unknown_method_and_components():
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        lavakv.method("nope", budget=64)
    with pytest.raises(ValueError, match="unknown scorer"):
        lavakv.method(scorer="nope", budget=64)
    with pytest.raises(ValueError, match="does not compress"):
        lavakv.method("full", budget=64)


def test_unsupported_model_class_is_rejected_before_work():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50))
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        lavakv.method("snapkv", budget=64).attach(model)
    with pytest.raises(TypeError, match="not support"):
        lavakv.method("snapkv", budget=64).attach(torch.nn.Linear(2, 2))


def test_empty_prompt():
    model = tiny_model("llama")
    with lavakv.method("snapkv", budget=64).attach(model) as session:
        with pytest.raises(ValueError, match="empty prompt"):
            model(torch.zeros(1, 0, dtype=torch.long), past_key_values=session.cache())


def test_cache_outside_session():
    session = lavakv.method("snapkv", budget=64).attach(tiny_model("llama"))
    with pytest.raises(RuntimeError, match="inside"):
        session.cache()


def test_a_method_changed_with_dataclasses_replace_is_checked_as_built():
    """Method is a frozen dataclass: a copy with another budget / window / option is checked when it is made (it
    used to prefill with budget 0 or window 0 and keep nothing)."""
    import dataclasses

    base = lavakv.method("lava", budget=16, window=8)
    for change, message in ((dict(budget=0), "budget must be >= 1"), (dict(budget=3), "smaller than the observation"),
                            (dict(window=0), "window must be >= 1"), (dict(budget=None), "give exactly one of"),
                            (dict(budget=None, compression_ratio=1.5), "compression_ratio must be in"),
                            (dict(params={**base.params, "alpha": 5.0}), "alpha")):
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(base, **change)
    assert dataclasses.replace(base, budget=32).resolve().budget == 32
    with pytest.raises(ValueError, match="at most 2147483647"):
        lavakv.method("snapkv", budget=2**63, window=8)
