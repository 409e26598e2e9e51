"""Validity masks shared by scorers and allocations: per sequence, or per KV head once heads hold different entries.

Before any eviction every KV head of a layer holds the same positions, so validity is ``[batch, tokens]`` (False on
left padding). A layer that was already compressed and is compressed again (decode-time eviction) holds different
entries per head; its entries are laid out right-aligned (each head's entries in position order, ending at the last
column, invalid columns on the left), and validity is ``[batch, kv_heads, tokens]``.
"""

from __future__ import annotations

import torch


def per_head(valid: torch.Tensor, heads: int) -> torch.Tensor:
    """``valid`` as ``[batch, heads or 1, tokens]`` for tensors with ``heads`` heads.

    ``[batch, tokens]`` gives ``[batch, 1, tokens]`` (broadcasts over any head count). ``[batch, kv_heads, tokens]``
    is returned as is for ``heads == kv_heads``, and repeated over each KV head's group of query heads for
    ``heads = G * kv_heads`` (query head h reads KV head ``h // G``, transformers' ``repeat_kv``).
    """
    if valid.dim() == 2:
        return valid[:, None, :]
    if valid.shape[1] in (1, heads):
        return valid
    if heads % valid.shape[1] != 0:
        raise ValueError(f"cannot spread validity of {valid.shape[1]} KV heads over {heads} heads")
    return valid.repeat_interleave(heads // valid.shape[1], dim=1)


def any_head(valid: torch.Tensor) -> torch.Tensor:
    """``[batch, tokens]``: True where any head holds a valid entry (the positions themselves, for query masks)."""
    return valid if valid.dim() == 2 else valid.any(dim=1)
