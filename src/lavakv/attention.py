"""Attention over compressed layers, and lavakv's entry in transformers' attention-function registry.

Two paths, both exact over the entries a layer holds:

* dense layers (every head the same length) go through transformers' SDPA function with a boolean mask built
  from the logical mask transformers made (prompt columns -> all kept entries visible, later columns -> tail);
* ragged layers use :func:`ragged_attention`, a pure-PyTorch reference that works on any device for any mix of
  head lengths, GQA group and batch, without repeating K/V across the query heads of a group; on CUDA with
  flash-attention installed, :func:`flash_varlen_attention` runs one varlen sequence per KV head instead.

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

from lavakv.storage import RaggedKV

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


def ragged_attention(
    query: torch.Tensor,
    prefix: RaggedKV,
    tail_keys: torch.Tensor,
    tail_values: torch.Tensor,
    tail_valid: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """Exact attention over a ragged prefix plus a dense tail; pure PyTorch reference.

    Args:
        query: ``[batch, q_heads, q_len, head_dim]``; query head h reads KV head ``h // G``.
        prefix: kept prompt entries, per-head lengths ``[batch, kv_heads]``.
        tail_keys, tail_values: ``[batch, kv_heads, tail, head_dim]`` entries appended after the prompt.
        tail_valid: ``[batch or 1, 1, q_len, tail]`` bool, or None when every tail entry is visible.
        scaling: softmax scale.

    Returns:
        ``[batch, q_len, q_heads, head_dim]`` (the layout transformers' attention functions return).

    Scores are computed per KV head for the G query heads of its group at once, so K/V are never repeated;
    the softmax runs in float32 over the concatenated prefix and tail scores.
    """
    b, hq, q_len, d = query.shape
    h = prefix.lengths.shape[1]
    g = hq // h
    keys, values, valid = prefix.padded()  # [b, h, m, d] transient copies
    qg = query.reshape(b, h, g * q_len, d)
    prefix_scores = torch.matmul(qg, keys.transpose(-1, -2)).float() * scaling  # [b, h, g*q, m]
    prefix_scores = prefix_scores.masked_fill(~valid[:, :, None, :], float("-inf"))
    tail_scores = torch.matmul(qg, tail_keys.transpose(-1, -2)).float() * scaling  # [b, h, g*q, t]
    if tail_valid is not None:
        t = tail_keys.shape[2]
        visible = tail_valid.expand(b, 1, q_len, t)[:, :, None].expand(b, 1, g, q_len, t).reshape(b, 1, g * q_len, t)
        tail_scores = tail_scores.masked_fill(~visible, float("-inf"))
    m = keys.shape[2]
    probs = torch.softmax(torch.cat([prefix_scores, tail_scores], dim=-1), dim=-1).to(values.dtype)
    out = torch.matmul(probs[..., :m], values) + torch.matmul(probs[..., m:], tail_values)  # [b, h, g*q, d]
    return out.view(b, hq, q_len, -1).transpose(1, 2).contiguous()


def flash_varlen_available(query: torch.Tensor) -> bool:
    """Whether the flash-attention varlen path can run for this query (CUDA, fp16/bf16, package installed)."""
    if not query.is_cuda or query.dtype not in (torch.float16, torch.bfloat16):
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def flash_varlen_attention(
    query: torch.Tensor,
    prefix: RaggedKV,
    tail_keys: torch.Tensor,
    tail_values: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """Ragged attention through flash-attention's varlen kernel: one sequence per (batch, KV head).

    Each sequence's queries are the G query heads of the group (as heads) over its own keys, so GQA needs no
    repeated K/V. The prefix and the tail are attended separately and merged with their log-sum-exps. Only for
    single-token decoding with every tail entry visible; returns ``[batch, 1, q_heads, head_dim]``.
    Not exercised by the CPU test-suite (no GPU here); the reference path is :func:`ragged_attention`.
    """
    from flash_attn import flash_attn_varlen_func

    b, hq, q_len, d = query.shape
    h = prefix.lengths.shape[1]
    g = hq // h
    seqs = b * h
    q = query.reshape(b, h, g, d).reshape(seqs, g, d)  # one query token per sequence, g heads
    cu_q = torch.arange(seqs + 1, device=query.device, dtype=torch.int32)
    lens = prefix.lengths.reshape(-1).to(torch.int32)
    cu_k = torch.nn.functional.pad(torch.cumsum(lens, 0, dtype=torch.int32), (1, 0))
    out_p, lse_p, _ = flash_attn_varlen_func(
        q, prefix.keys[:, None, :], prefix.values[:, None, :], cu_q, cu_k, 1, int(lens.max()),
        softmax_scale=scaling, causal=False, return_attn_probs=True,
    )  # out [seqs, g, d], lse [g, seqs] or [seqs, g]
    t = tail_keys.shape[2]
    tk = tail_keys.reshape(seqs, t, 1, d).reshape(seqs * t, 1, d)
    tv = tail_values.reshape(seqs, t, 1, -1).reshape(seqs * t, 1, tail_values.shape[-1])
    cu_t = torch.arange(0, (seqs + 1) * t, t, device=query.device, dtype=torch.int32)
    out_t, lse_t, _ = flash_attn_varlen_func(
        q, tk, tv, cu_q, cu_t, 1, t, softmax_scale=scaling, causal=False, return_attn_probs=True,
    )
    if lse_p.shape[0] != seqs:
        lse_p, lse_t = lse_p.transpose(0, 1), lse_t.transpose(0, 1)
    lse = torch.logaddexp(lse_p, lse_t)  # [seqs, g]
    out = out_p.float() * torch.exp(lse_p - lse)[..., None] + out_t.float() * torch.exp(lse_t - lse)[..., None]
    return out.to(query.dtype).view(b, h * g, 1, -1).transpose(1, 2).contiguous()
