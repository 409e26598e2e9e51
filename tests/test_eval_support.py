"""Shared pieces of the eval tests: a character-level tokenizer built in code and a tiny model sized to it."""

from __future__ import annotations

from conftest import char_tokenizer, tiny_model


def tiny_eval_pair(family: str = "llama", chat: bool = False, layers: int = 3):
    """``(model, tokenizer)``: a tiny random decoder whose vocabulary matches :func:`char_tokenizer`."""
    tokenizer = char_tokenizer(chat)
    return tiny_model(family, vocab=len(tokenizer), layers=layers), tokenizer


def test_char_tokenizer_round_trips_text():
    tokenizer = char_tokenizer()
    text = "VAR ABC = 12345\n  x = y # z"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
