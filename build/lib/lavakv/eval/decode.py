"""Greedy decoding from caches filled by one shared prefill (``Session.prefill``), one cache at a time.

``session.prefill(ids, mask, methods)`` returns one compressed cache per method and the last prompt position's
logits (the same for all of them: prefill attention is exact). From there each cache is decoded on its own: the
argmax token is fed with the cache, its position id being the number of real tokens so far (batch of one, no
padding), until an end-of-sequence id or ``max_new_tokens``. For query-agnostic runs the context alone is
prefilled; the question block is then fed through each cache with one multi-token forward (:func:`feed`).

``lavakv.generation.generate`` decodes with ``model.generate`` on a cache it fills itself; it cannot start from
a cache that is already filled, hence this loop. The eval tests check that both give the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def stop_ids(model, tokenizer) -> set[int]:
    """End-of-sequence ids: the model's generation config, else the tokenizer's EOS."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


def feed(model, cache, ids: list[int] | torch.Tensor, past: int) -> torch.Tensor:
    """Run ``ids`` (one block, batch of one) through ``cache`` after ``past`` tokens; return the last logits
    ``[1, vocab]``.

    The cache reports its logical length (evicted entries included), so positions continue from ``past``.
    """
    device = next(model.parameters()).device
    block = torch.as_tensor(ids, device=device).reshape(1, -1)  # [1, q]
    q = block.shape[1]
    positions = torch.arange(past, past + q, device=device)[None]  # [1, q]
    mask = torch.ones(1, past + q, dtype=torch.long, device=device)
    with torch.no_grad():
        out = model(block, attention_mask=mask, position_ids=positions, cache=cache, logits_to_keep=1)
    return out.logits[:, -1]


@dataclass
class Decoded:
    """Tokens generated from one cache (the stop token included when one was produced)."""

    tokens: list[int]
    stopped: bool


def greedy_decode(model, cache, logits: torch.Tensor, *, past: int, max_new_tokens: int, stops: set[int]) -> Decoded:
    """Greedy tokens from ``cache`` given the logits ``[1, vocab]`` of the last fed position.

    Args:
        past: tokens the cache holds logically (prompt length, plus the question when fed separately).
        max_new_tokens: at most this many tokens are produced (>= 1).
        stops: end-of-sequence ids; decoding ends after producing one.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    tokens: list[int] = []
    while True:
        token = int(logits[0].argmax())
        tokens.append(token)
        if token in stops:
            return Decoded(tokens, True)
        if len(tokens) >= max_new_tokens:
            return Decoded(tokens, False)
        logits = feed(model, cache, [token], past)
        past += 1


def decode_text(tokenizer, tokens: list[int]) -> str:
    """Text of generated ``tokens`` with special tokens dropped, outer whitespace stripped."""
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()
