"""The compressed KV cache: a transformers ``Cache`` whose layers can hold ragged per-head storage.

Each full-attention layer is a :class:`CompressedLayer`. After prefill it holds either

* one :class:`~lavakv.storage.DenseKV` with the (possibly compressed) prompt entries followed by decoded
  tokens, when every KV head kept the same number of entries, or
* a ragged :class:`~lavakv.storage.RaggedKV` prefix with the kept prompt entries of each head plus a dense
  ``DenseKV`` tail with the decoded tokens (every head receives every new token).

Positions stay logical: ``get_seq_length`` and ``get_mask_sizes`` report the original prompt length plus the
appended tokens, so new tokens get their true position ids and transformers builds the mask over logical
columns; the attention function maps the columns after the prompt onto the stored tail (METHODS.md §5).
Sliding-window layers (Gemma 3) use transformers' own layer class and are never compressed.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import (
    DYNAMIC_LAYER_TYPE_MAPPING,
    Cache,
    CacheLayerMixin,
    get_layer_types_and_kwargs,
)

from lavakv.storage import DenseKV, RaggedKV


class CompressedLayer(CacheLayerMixin):
    """One full-attention layer of a :class:`CompressedCache`.

    Attributes:
        dense: dense storage (uncompressed, or compressed with equal head lengths), else None.
        prefix: ragged kept prompt entries, else None.
        tail: decoded tokens appended after a ragged prefix, ``[batch, kv_heads, new, head_dim]``.
        prompt_columns: logical columns the stored prompt entries stand for (0 until compressed).
        compressed: whether any prompt entry was evicted from this layer.
        prefill_pending: True between the layer's first update and the coordinator's compression step.
    """

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self) -> None:
        super().__init__()
        self.dense: DenseKV | None = None
        self.prefix: RaggedKV | None = None
        self.tail: DenseKV | None = None
        self.prompt_columns = 0
        self.dense_prompt_entries = 0
        self.logical_length = 0
        self.compressed = False
        self.prefill_pending = False
        self.kept_prompt: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.dtype = key_states.dtype
        self.batch, self.kv_heads = key_states.shape[:2]
        self.entry_bytes = (key_states.shape[-1] + value_states.shape[-1]) * key_states.element_size()
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new ``[batch, kv_heads, new, head_dim]`` K/V; return the dense part attention reads directly.

        Returns the whole dense storage, or for a ragged layer the tail (the prefix is read by the attention
        function from :attr:`prefix`).
        """
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.dense = DenseKV(key_states, value_states)
            self.prefill_pending = True
            self.kept_prompt = None
        elif self.prefix is not None:
            if self.tail is None:
                self.tail = DenseKV(key_states, value_states)
            else:
                self.tail.append(key_states, value_states)
        else:
            self.dense.append(key_states, value_states)
        self.logical_length += key_states.shape[2]
        store = self.tail if self.prefix is not None else self.dense
        self.keys, self.values = store.keys, store.values
        return self.keys, self.values

    def replace_prompt(self, storage: DenseKV | RaggedKV, kept: torch.Tensor, prompt_columns: int) -> None:
        """Swap the layer's prompt entries for a compacted selection (called before any decode token).

        Args:
            storage: the kept entries.
            kept: ``[batch, kv_heads]`` prompt entries kept per head.
            prompt_columns: logical prompt length those entries were selected from.
        """
        if isinstance(storage, DenseKV):
            self.dense, self.prefix, self.tail = storage, None, None
            self.dense_prompt_entries = storage.length
            self.keys, self.values = storage.keys, storage.values
        else:
            self.dense, self.prefix, self.tail = None, storage, None
            self.keys = self.values = None
        self.prompt_columns = prompt_columns
        self.kept_prompt = kept
        self.compressed = True

    def prompt_entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored prompt entries, flat ``[entries, head_dim]`` in (batch, head, token) order."""
        return (self.dense or self.prefix).flat()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.logical_length + query_length, 0

    def get_seq_length(self) -> int:
        return self.logical_length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.__init__()

    def nbytes(self) -> int:
        """Bytes of K/V tensors held by this layer now, slack included."""
        return sum(s.nbytes() for s in (self.dense, self.prefix, self.tail) if s is not None)

    def uncompressed_nbytes(self) -> int:
        """Bytes the same layer would hold without compression: every logical column, every head."""
        if not self.is_initialized:
            return 0
        return self.batch * self.kv_heads * self.logical_length * self.entry_bytes

    def _unsupported(self, *args, **kwargs):
        raise NotImplementedError(
            "lavakv's compressed cache does not support beam search, contrastive or assisted decoding, or cropping; "
            "use greedy or sampling generation"
        )

    crop = reorder_cache = batch_repeat_interleave = batch_select_indices = _unsupported


class CompressedCache(Cache):
    """A ``Cache`` for one generation with lavakv: compressed full-attention layers, sliding layers untouched.

    Create it with ``session.cache()``; pass it as ``past_key_values`` to ``model(...)`` or ``model.generate``.
    """

    def __init__(self, config) -> None:
        text_config = config.get_text_config(decoder=True)
        layer_types, per_layer_kwargs = get_layer_types_and_kwargs(text_config)
        layers = []
        for layer_type, kwargs in zip(layer_types, per_layer_kwargs, strict=False):
            if layer_type == "full_attention":
                layers.append(CompressedLayer())
            else:
                layers.append(DYNAMIC_LAYER_TYPE_MAPPING[layer_type](**kwargs))
        super().__init__(layers=layers)

    def compressible_layers(self) -> list[int]:
        """Indices of the layers lavakv may compress (full attention)."""
        return [i for i, layer in enumerate(self.layers) if isinstance(layer, CompressedLayer)]

    def resident_kv_bytes(self) -> int:
        """Bytes of K/V tensors the cache holds now, measured from the tensors (slack included)."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, CompressedLayer):
                total += layer.nbytes()
            elif getattr(layer, "is_initialized", False) and layer.keys is not None:
                total += layer.keys.nbytes + layer.values.nbytes
        return total

    def uncompressed_kv_bytes(self) -> int:
        """Bytes the same cache would hold without compression."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, CompressedLayer):
                total += layer.uncompressed_nbytes()
            elif getattr(layer, "is_initialized", False) and layer.keys is not None:
                total += layer.keys.nbytes + layer.values.nbytes
        return total

    def _unsupported(self, *args, **kwargs):
        CompressedLayer._unsupported(self)

    crop = reorder_cache = batch_repeat_interleave = batch_select_indices = _unsupported
