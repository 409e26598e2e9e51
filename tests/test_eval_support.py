"""Shared pieces of the eval tests: a character-level tokenizer built in code and a tiny model sized to it."""

from __future__ import annotations

import string

from conftest import tiny_model

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = string.ascii_letters + string.digits + string.punctuation + " \n\t"
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>"
    "{% endif %}"
)


def char_tokenizer(chat: bool = False):
    """A character-level fast tokenizer (4 specials + printable ASCII), built without downloads."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + list(CHARS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


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
