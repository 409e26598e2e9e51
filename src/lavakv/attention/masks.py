"""Masks for attention over compressed layers, derived from the logical mask transformers builds.

transformers builds masks over *logical* columns (every prompt position, then every decoded token). A compressed
layer stores only its kept prompt entries followed by the decoded tail, so the mask of the stored entries is:
every kept prompt entry visible (they all precede the new queries), then the logical mask's columns after the
prompt for the tail.
"""

from __future__ import annotations

import torch


def _as_bool_mask(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask == 0


def tail_mask(
    attention_mask: torch.Tensor | None, prompt_columns: int, q_len: int, tail_len: int, device: torch.device
) -> torch.Tensor | None:
    """Mask of the entries stored after the prompt, ``[batch or 1, 1, q_len, tail_len]`` bool, or None.

    The logical mask transformers built covers ``prompt_columns + tail_len`` columns; the tail columns keep their
    meaning (causality and any padding among new tokens). With no mask, a single query sees everything and a
    block of queries is causal over its own positions at the end of the tail.
    """
    if attention_mask is not None:
        mask = _as_bool_mask(attention_mask)[..., prompt_columns:]
        if mask.shape[-1] != tail_len:
            raise RuntimeError(
                f"lavakv: mask covers {mask.shape[-1]} columns after the prompt but the layer holds {tail_len}; "
                "each prompt must be prefilled in a single forward call"
            )
        return mask
    if q_len == 1:
        return None
    q_pos = torch.arange(tail_len - q_len, tail_len, device=device)
    return (torch.arange(tail_len, device=device)[None, :] <= q_pos[:, None])[None, None]


def dense_mask(
    attention_mask: torch.Tensor | None, prompt_columns: int, prompt_entries: int, q_len: int, total: int, batch: int,
    device: torch.device,
) -> torch.Tensor | None:
    """Mask for a dense layer holding ``prompt_entries`` kept prompt entries, then the tail (``total`` entries).

    For an uncompressed layer (``prompt_columns == 0``) the logical mask is used unchanged.
    """
    if prompt_columns == 0:
        return attention_mask
    tail = tail_mask(attention_mask, prompt_columns, q_len, total - prompt_entries, device)
    if tail is None:
        return None
    prompt = torch.ones(tail.shape[0], 1, q_len, prompt_entries, dtype=torch.bool, device=device)
    return torch.cat([prompt, tail], dim=-1).expand(batch, 1, q_len, total)


def valid_tokens(attention_mask: torch.Tensor | None, key: torch.Tensor) -> torch.Tensor:
    """``[batch, tokens]`` bool real-token mask of a prefill, read from the last query row of its 4-D mask."""
    b, _, n, _ = key.shape
    if attention_mask is None:
        return torch.ones(b, n, dtype=torch.bool, device=key.device)
    last = _as_bool_mask(attention_mask[:, 0, -1, :])
    return last.expand(b, n)
