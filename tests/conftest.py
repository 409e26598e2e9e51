"""Tiny random-config models of every supported family, built in code (no downloads)."""

from __future__ import annotations

import string

import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma3"]

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


def tiny_model(family: str = "llama", *, layers: int = 3, heads: int = 4, kv_heads: int = 2, head_dim: int = 16,
               vocab: int = 97, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised decoder of ``family`` small enough for unit tests, in float32 with SDPA."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab, hidden_size=heads * head_dim, intermediate_size=2 * heads * head_dim,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        max_position_embeddings=1024,
    )
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(**common, sliding_window=None))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**common))
    elif family == "gemma3":
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, sliding_window=8, layer_types=types))
    else:
        raise ValueError(family)
    model.set_attn_implementation("sdpa")
    return model.eval()


def prompt(batch: int = 1, length: int = 64, vocab: int = 97, pad: tuple[int, ...] = (), seed: int = 1):
    """Random ids ``[batch, length]`` and a left-padding mask (``pad[i]`` padded positions in row i)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for row, count in enumerate(pad):
        mask[row, :count] = 0
        ids[row, :count] = 0
    return ids, mask


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param
