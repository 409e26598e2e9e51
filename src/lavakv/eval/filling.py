"""Filling one compressed cache per method from one prompt: a shared exact prefill where methods can share it."""

from __future__ import annotations

import time
from typing import Any

import torch

from lavakv.methods import Method


def alone(method: Method) -> str | None:
    """Why ``method`` cannot share an exact prefill: ``"chunked"``, ``"reconstruction"``, or None (it can)."""
    components = method.resolve()
    if components is None:
        return None
    if components.scorer.reconstruction:
        return "reconstruction"
    return "chunked" if components.chunk_size is not None else None


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
        kind = alone(method)
        if kind is None:
            continue
        start = time.perf_counter()
        if kind == "chunked":
            (cache,), logits = session.prefill(x, torch.ones_like(x), [method])
        else:
            if x.shape[1] < 2:
                raise ValueError(f"{method.name}: a one-token prompt has no context to reconstruct")
            cache = session.compress_context(x[:, :-1], tokenizer=tokenizer, method=method).cache
            logits = session.extend(cache, x[:, -1:]).logits[:, -1]
        out[i] = (cache, logits, time.perf_counter() - start)
    return out
