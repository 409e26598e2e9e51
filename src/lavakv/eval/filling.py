"""Filling one compressed cache per method from one prompt (a shared exact prefill where methods can share it), and
decoding them together."""

from __future__ import annotations

import time
from typing import Any

import torch

from lavakv.generation import Decoded, alone, decode_batch, decode_from_cache, fill_alone
from lavakv.methods import Method


def fill_caches(session, tokenizer, x: torch.Tensor, methods: list[Method], *, record_window_queries: bool = False
                ) -> list[tuple[Any, torch.Tensor, float]]:
    """``(cache, last logits [1, vocab], prefill seconds)`` per method (aligned with ``methods``) for the prompt
    ``x [1, n]``.

    One shared exact prefill (:meth:`~lavakv.Session.prefill`) fills every method that can share it; a chunked
    method (``chunk_size``) is prefilled alone (its chunks attend to what it compressed), and a reconstruction
    scorer's (kvzip) is compressed by :meth:`~lavakv.Session.compress_context` over all but the last token, which is
    then fed through the compressed cache to give the first logits (the last position is in every method's window,
    so nothing changes but where it is computed). ``record_window_queries`` applies to the shared prefill.
    """
    out: list[Any] = [None] * len(methods)
    shared = [i for i, m in enumerate(methods) if alone(m) is None]
    if shared:
        start = time.perf_counter()
        caches, logits = session.prefill(x, torch.ones_like(x), [methods[i] for i in shared],
                                         record_window_queries=record_window_queries)
        seconds = time.perf_counter() - start
        for i, cache in zip(shared, caches, strict=True):
            out[i] = (cache, logits, seconds)
    for i, method in enumerate(methods):
        if alone(method) is not None:
            start = time.perf_counter()
            cache, logits = fill_alone(session, method, tokenizer, x, x.shape[1])
            out[i] = (cache, logits, time.perf_counter() - start)
    return out


def decode_caches(model, session, caches: list, *, logits: list[torch.Tensor] | None = None,
                  question: torch.Tensor | None = None, max_new_tokens: int, stops: set[int]
                  ) -> tuple[list[Decoded], int]:
    """Greedy answers from ``caches`` (one row each, one logical length), and how many were decoded together.

    Decoding starts from ``logits[i]`` (``[1, vocab]`` of cache ``i``'s last fed position) or, with ``question``
    (``[1, q]`` ids) instead, after feeding that question through every cache. Every cache :meth:`~lavakv.Session.stack`
    takes is decoded in one batch (:func:`~lavakv.generation.decode_batch`: each row as its own cache up to float
    rounding; benchmarks/batched_decode.py measures the gain); the others (``decode_budget`` methods, sliding layers
    past their window) one by one, each from a fork. The caches themselves are left as they were.
    """
    if (logits is None) == (question is None):
        raise ValueError("decode_caches starts from logits= (one per cache) or question=, exactly one of them")
    together = [i for i, cache in enumerate(caches) if session.stack_refusal(cache) is None]
    together = together if len(together) > 1 else []
    out: list[Decoded | None] = [None] * len(caches)
    if together:
        stacked = session.stack([caches[i] for i in together])
        first = (torch.cat([logits[i] for i in together]) if question is None else
                 session.extend(stacked, question.expand(len(together), -1)).logits[:, -1])
        rows = decode_batch(model, stacked, first, max_new_tokens=max_new_tokens, stops=stops)
        for i, row in zip(together, rows, strict=True):
            out[i] = row
    for i, cache in enumerate(caches):
        if out[i] is None:
            fork = session.fork(cache)
            first = logits[i] if question is None else session.extend(fork, question).logits[:, -1]
            out[i] = decode_from_cache(model, fork, first, max_new_tokens=max_new_tokens, stops=stops)
    return out, len(together) or 1
