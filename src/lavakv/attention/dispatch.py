"""lavakv's attention function, registered with transformers' attention-function registry as ``"lavakv"``.

It only attends; it never compresses. For a key tensor that a :class:`~lavakv.cache.CompressedLayer` returned
(found by identity, see :func:`lavakv.cache.compressed.layer_for_keys`):

* dense layers (every head the same length) go through transformers' SDPA function with the mask of the stored
  entries (:mod:`lavakv.attention.masks`); during the layer's prefill the queries are handed to the layer, for the
  compressor that runs after the attention module (the session's forward hook);
* ragged layers go through :func:`lavakv.attention.ragged.ragged_attention` (flat per-head storage read in place);
* with decode-time eviction, every later query is handed to the layer's ring of recent queries.

Any other key tensor (a plain cache, a sliding layer past its window, no cache) falls through to SDPA, so an
attached model with a plain cache behaves as with ``attn_implementation="sdpa"``.
"""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from lavakv.attention.masks import dense_mask, tail_mask, valid_tokens
from lavakv.attention.ragged import ragged_attention
from lavakv.cache.compressed import layer_for_keys

ATTENTION_NAME = "lavakv"


def lavakv_attention(module: torch.nn.Module, query, key, value, attention_mask, **kwargs):
    """Exact attention over whatever the layer holds: ``query [batch, q_heads, q_len, head_dim]``.

    Returns ``([batch, q_len, q_heads, head_dim], None)`` like transformers' attention functions.
    """
    layer = layer_for_keys(key)
    if layer is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if kwargs.get("output_attentions"):
        raise ValueError("lavakv does not return attention weights (output_attentions=True); drop that option")
    scaling = kwargs.get("scaling") or module.scaling
    q_len = query.shape[2]
    if layer.tracks_queries and not layer.prefill_pending:
        layer.observe_queries(query)  # decode-time eviction scores with the last window of queries
    if layer.prefix is not None:
        tail = layer.tail
        visible = tail_mask(attention_mask, layer.prompt_columns, q_len, tail.length, query.device)
        return ragged_attention(query, layer.prefix, tail.keys, tail.values, visible, scaling), None
    mask = dense_mask(
        attention_mask, layer.prompt_columns, layer.dense_prompt_entries, q_len, key.shape[2], key.shape[0],
        key.device,
    )
    out = sdpa_attention_forward(module, query, key, value, mask, **kwargs)
    if layer.prefill_pending:
        layer.observe_prefill(query, valid_tokens(attention_mask, key), float(scaling))
    return out


def register() -> None:
    """Register ``"lavakv"`` in transformers' attention and mask registries (idempotent)."""
    ALL_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, lavakv_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)
