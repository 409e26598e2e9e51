"""Attention over compressed layers, and lavakv's entry in transformers' attention-function registry.

Two paths, both exact over the entries a layer holds:

* dense layers (every head the same length) go through transformers' SDPA function with a boolean mask built
  from the logical mask transformers made (prompt columns -> all kept entries visible, later columns -> tail);
* ragged layers use :mod:`lavakv.ragged_attention` (pure PyTorch, any device, any mix of head lengths, GQA group
  and batch, reading the flat per-head storage in place; flash-attention varlen on CUDA when installed).

Modules that lavakv does not route (no session attached, or a cache that is not lavakv's) fall through to SDPA,
so an attached model with a plain cache behaves as with ``attn_implementation="sdpa"``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

ATTENTION_NAME = "lavakv"

# attention module -> handler installed by an attached session (weak: never keeps a model alive)
ROUTES: weakref.WeakKeyDictionary[torch.nn.Module, Callable] = weakref.WeakKeyDictionary()


def lavakv_attention(module: torch.nn.Module, query, key, value, attention_mask, **kwargs):
    """Attention function registered with transformers as ``"lavakv"``; dispatches to the attached session."""
    handler = ROUTES.get(module)
    if handler is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return handler(module, query, key, value, attention_mask, **kwargs)


def register() -> None:
    """Register ``"lavakv"`` in transformers' attention and mask registries (idempotent)."""
    ALL_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, lavakv_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)


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
