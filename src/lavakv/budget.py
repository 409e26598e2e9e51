"""Budget arithmetic: the configured budget or compression ratio -> tokens kept per KV head, per sequence.

Units follow docs/methods.md: ``B`` is the budget per KV head per layer on average, window included; the
dynamic part shared by the layers is ``T = L * (B - w)``; a compression ratio ``r`` is the fraction of prompt
entries removed, so ``B = round((1 - r) * n)`` for a prompt of ``n`` real tokens.
"""

from __future__ import annotations

import math

import torch

#: the largest budget or window accepted (token counts are int64 tensors; no model holds more positions)
MAX_TOKENS = 2**31 - 1


def validate_budget(budget: int | None, compression_ratio: float | None, window: int) -> None:
    """Check a method's budget settings; raise ``ValueError`` / ``TypeError`` naming the problem and the fix."""
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an int number of tokens, got {window!r}")
    if window < 1:
        raise ValueError(f"window must be >= 1 token, got {window}; the observation window is always kept")
    if window > MAX_TOKENS:
        raise ValueError(f"window must be at most {MAX_TOKENS} tokens, got {window}")
    if budget is None and compression_ratio is None:
        raise ValueError(
            "give exactly one of budget= (tokens per KV head per layer, window included) or "
            "compression_ratio= (fraction of prompt entries removed, in [0, 1)); use method 'full' for no compression"
        )
    if budget is not None and compression_ratio is not None:
        raise ValueError(
            f"give exactly one of budget= or compression_ratio=, not both (got budget={budget}, "
            f"compression_ratio={compression_ratio})"
        )
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise TypeError(f"budget must be an int number of tokens per KV head, got {budget!r}")
        if budget <= 0:
            raise ValueError(
                f"budget must be >= 1 token per KV head, got {budget}; use method 'full' to disable compression"
            )
        if budget > MAX_TOKENS:
            raise ValueError(f"budget must be at most {MAX_TOKENS} tokens per KV head, got {budget}; use method "
                             "'full' to keep everything")
        if budget < window:
            raise ValueError(
                f"budget ({budget}) is smaller than the observation window ({window}), which is always kept; "
                f"use budget >= {window} or a smaller window="
            )
    if compression_ratio is not None:
        if isinstance(compression_ratio, bool) or not isinstance(compression_ratio, (int, float)):
            raise TypeError(f"compression_ratio must be a float in [0, 1), got {compression_ratio!r}")
        if not (0.0 <= float(compression_ratio) < 1.0) or math.isnan(float(compression_ratio)):
            raise ValueError(
                f"compression_ratio must be in [0, 1) (the fraction of prompt entries removed), got "
                f"{compression_ratio}; e.g. 0.75 keeps a quarter of the prompt"
            )


def budget_per_row(
    real_tokens: torch.Tensor, budget: int | None, compression_ratio: float | None, window: int
) -> torch.Tensor:
    """Budget B per KV head per layer (window included) for each sequence of the batch.

    Args:
        real_tokens: ``[batch]`` number of non-padding prompt tokens n_b.
    Returns:
        ``[batch]`` int64 B_b, at least ``min(window, n_b)`` (the window is always kept) and at most ``n_b``.
    """
    if budget is not None:
        b = torch.full_like(real_tokens, budget)
    else:
        b = torch.round((1.0 - float(compression_ratio)) * real_tokens.double()).long()
    b = torch.maximum(b, torch.clamp(real_tokens, max=window))
    return torch.minimum(b, real_tokens)


def rows_to_compress(real_tokens: torch.Tensor, budget: torch.Tensor, window: int) -> torch.Tensor:
    """``[batch]`` bool: sequences that have anything to evict (budget below the prompt, prompt longer than w)."""
    return (budget < real_tokens) & (real_tokens > window)


DEFAULT_DECODE_INTERVAL = 32


def validate_decode_budget(
    decode_budget: int | None, decode_interval: int | None, budget: int | None, window: int
) -> int | None:
    """Check decode-time eviction settings; return the interval to use (None without ``decode_budget``).

    ``decode_budget`` bounds the entries per KV head per layer on average (window included) while generating;
    every ``decode_interval`` tokens the cache is compressed back to ``decode_budget - decode_interval``, which must
    leave room for the prompt's budget (or, with a compression ratio, for the window: each prompt's own budget is
    checked against ``decode_budget - decode_interval`` when it is prefilled). The interval defaults to
    ``min(32, decode_budget - budget)``, or ``min(32, decode_budget - window)`` with a compression ratio.
    """
    if decode_budget is None:
        if decode_interval is not None:
            raise ValueError("decode_interval needs decode_budget= (the entries per KV head kept while generating)")
        return None
    for name, value in (("decode_budget", decode_budget), ("decode_interval", decode_interval)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an int number of tokens, got {value!r}")
    floor = budget if budget is not None else window
    what = f"budget ({budget})" if budget is not None else f"the observation window ({window})"
    if decode_budget <= floor:
        raise ValueError(
            f"decode_budget ({decode_budget}) must be larger than {what}: the prompt is compressed to that and the "
            f"cache then grows while generating; use decode_budget >= {floor + 1}"
        )
    if decode_interval is None:
        return min(DEFAULT_DECODE_INTERVAL, decode_budget - floor)
    if decode_interval < 1:
        raise ValueError(f"decode_interval must be >= 1 token, got {decode_interval}")
    if decode_interval > decode_budget - floor:
        raise ValueError(
            f"decode_interval ({decode_interval}) is larger than decode_budget - {'budget' if budget else 'window'} "
            f"({decode_budget - floor}): each eviction compresses to decode_budget - decode_interval, which would "
            f"fall below {what}; use decode_interval <= {decode_budget - floor} or a larger decode_budget"
        )
    return decode_interval


def validate_chunk_size(chunk_size: int | None, window: int) -> None:
    """Check the chunked-prefill chunk size: an int of at least ``window`` tokens (each chunk's last ``window``
    queries score the cache after it), or None for an exact one-call prefill."""
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int number of tokens, got {chunk_size!r}")
    if chunk_size < window:
        raise ValueError(
            f"chunk_size ({chunk_size}) is smaller than the observation window ({window}): each chunk's last "
            f"{window} queries score the cache after it; use chunk_size >= {window} or a smaller window="
        )
