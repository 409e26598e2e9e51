"""The compressed KV cache: a transformers ``Cache`` whose layers can hold ragged per-head storage.

Each attention layer is a :class:`CompressedLayer`. After prefill it holds either

* one :class:`~lavakv.cache.storage.DenseKV` with the (possibly compressed) prompt entries followed by decoded
  tokens, when every KV head kept the same number of entries, or
* a ragged :class:`~lavakv.cache.storage.RaggedKV` prefix with the kept prompt entries of each head plus a dense
  ``DenseKV`` tail with the decoded tokens (every head receives every new token).

Decode-time eviction compacts everything held (prompt and decoded entries) into a new dense or ragged prefix that
stands for every logical column so far (``prompt_columns``); later tokens form a new tail.

Positions stay logical: ``get_seq_length`` and ``get_mask_sizes`` report the original prompt length plus the
appended tokens, so new tokens get their true position ids and transformers builds the mask over logical
columns; the attention function maps the columns after the compacted prefix onto the stored tail
(docs/methods.md).

Sliding-window layers (Mistral's default config, Qwen2 with ``use_sliding_window``, Gemma 3's local layers): while
the whole sequence fits in the window, sliding attention is full attention, so such a layer is compressed like any
other. A prompt longer than the window makes the layer a real sliding layer: it then delegates to transformers'
own ``DynamicSlidingWindowLayer`` and is never compressed. A compressed sliding layer refuses to grow past its
window (it would need the window's eviction too).

The cache belongs to one live session (its ``owner``): used after that session ended, it raises instead of
silently attending with the wrong attention function.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicSlidingWindowLayer

from lavakv.cache.storage import DenseKV, RaggedKV, compact
from lavakv.compat import dynamic_layer, layer_types_and_kwargs

# The attention function transformers calls receives the key tensor that ``CompressedLayer.update`` returned, but
# not the cache or the layer. The layer is therefore found by the identity of that tensor: ``id(keys)`` -> layer,
# checked with ``is`` (an id can be reused once its tensor is freed). This routes by cache, whatever the session,
# module or thread that runs the forward. Weak values: the table never keeps a cache alive.
_LAYER_BY_KEYS: weakref.WeakValueDictionary[int, CompressedLayer] = weakref.WeakValueDictionary()


def layer_for_keys(keys: torch.Tensor) -> CompressedLayer | None:
    """The :class:`CompressedLayer` whose ``update`` returned ``keys`` (and still holds it), else None."""
    layer = _LAYER_BY_KEYS.get(id(keys))
    return layer if layer is not None and layer.keys is keys else None


@dataclass
class PrefillObservation:
    """What the attention function saw during a layer's exact prefill, for the compressor to score from.

    Attributes:
        queries: ``[batch, q_heads, tokens, head_dim]`` post-RoPE queries as the layer computed them.
        valid: ``[batch, tokens]`` bool, False on (left) padding.
        scaling: the layer's softmax scale.
    """

    queries: torch.Tensor
    valid: torch.Tensor
    scaling: float


class CompressedLayer(CacheLayerMixin):
    """One attention layer of a :class:`CompressedCache`.

    Attributes:
        dense: dense storage (uncompressed, or compressed with equal head lengths), else None.
        prefix: ragged kept prompt entries, else None.
        tail: decoded tokens appended after a ragged prefix, ``[batch, kv_heads, new, head_dim]``.
        prompt_columns: logical columns the stored prompt entries stand for (0 until compressed).
        compressed: whether any prompt entry was evicted from this layer.
        sliding_window: the layer's sliding window in tokens, or None for full attention.
        sliding: the transformers sliding-window layer this layer delegates to when the prompt exceeds the window.
        kept_prompt: ``[batch, kv_heads]`` prompt entries kept per head once compressed, else None.
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, owner, sliding_window: int | None = None) -> None:
        super().__init__()
        self._owner = weakref.ref(owner)
        self.sliding_window = sliding_window
        self.sliding: DynamicSlidingWindowLayer | None = None
        self.dense: DenseKV | None = None
        self.prefix: RaggedKV | None = None
        self.tail: DenseKV | None = None
        self.prompt_columns = 0
        self.dense_prompt_entries = 0
        self.logical_length = 0
        self.compressed = False
        self.kept_prompt: torch.Tensor | None = None
        self._observation: PrefillObservation | None = None
        self._pending = False
        self._recent: torch.Tensor | None = None
        self._recent_count = self._recent_next = 0

    @property
    def is_sliding(self) -> bool:  # read by transformers through Cache.is_sliding
        return self.sliding is not None

    def fits(self, tokens: int) -> bool:
        """Whether a sequence of ``tokens`` is full attention for this layer (always, without a sliding window)."""
        return self.sliding_window is None or tokens <= self.sliding_window

    @property
    def compressible(self) -> bool:
        """Whether the compressor may compress this layer (initialised and not delegating to a sliding layer)."""
        return self.is_initialized and self.sliding is None

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
        owner = self._owner()
        if owner is not None:
            owner.check_usable()
        new = key_states.shape[2]
        first = not self.is_initialized
        if not first and (key_states.dtype, key_states.device) != (self.dtype, self.device):
            raise RuntimeError(
                f"lavakv: this cache holds {self.dtype} K/V on {self.device} and the model now gives "
                f"{key_states.dtype} on {key_states.device}: a cache continues in the dtype and device it was filled "
                "in (the model was cast or moved, or a saved context was loaded into another dtype); prefill a new "
                "cache"
            )
        if first:
            self.lazy_initialization(key_states, value_states)
            if not self.fits(new):
                self.sliding = DynamicSlidingWindowLayer(sliding_window=self.sliding_window)
            else:
                self.dense = DenseKV(key_states, value_states)
                self.dense_prompt_entries = new
                self._pending = True
        elif self.sliding is None and self.compressed and not self.fits(self.logical_length + new):
            raise RuntimeError(
                f"lavakv: this layer has a sliding window of {self.sliding_window} tokens and was compressed as a "
                f"full-attention layer; the sequence would grow to {self.logical_length + new} tokens, past the "
                "window. Generate at most window - prompt tokens, or use a model config without a sliding window"
            )
        self.logical_length += new
        if self.sliding is not None:
            keys, values = self.sliding.update(key_states, value_states)
            self.keys, self.values = self.sliding.keys, self.sliding.values
            return keys, values
        if self.prefix is not None:
            if self.tail is None:
                self.tail = DenseKV(key_states, value_states)
            else:
                self.tail.append(key_states, value_states)
        elif not first:
            self.dense.append(key_states, value_states)
        store = self.tail if self.prefix is not None else self.dense
        self._register(store.keys, store.values)
        return self.keys, self.values

    def _register(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        old = getattr(self, "keys", None)
        if old is not None and _LAYER_BY_KEYS.get(id(old)) is self:
            del _LAYER_BY_KEYS[id(old)]
        self.keys, self.values = keys, values
        _LAYER_BY_KEYS[id(keys)] = self

    # -- prefill observation (the attention function records, the compressor consumes) ---------------------------
    @property
    def prefill_pending(self) -> bool:
        """True between the layer's prefill update and its compression step."""
        return self._pending

    def observe_prefill(self, queries: torch.Tensor, valid: torch.Tensor, scaling: float) -> None:
        """Record the prefill queries ``[batch, q_heads, tokens, head_dim]`` the attention function computed."""
        if self._pending:
            self._observation = PrefillObservation(queries, valid, scaling)

    def take_prefill(self) -> tuple[PrefillObservation, torch.Tensor, torch.Tensor] | None:
        """The pending prefill's observation and its full K/V ``[batch, kv_heads, tokens, head_dim]``, once."""
        if not self._pending or self._observation is None:
            return None
        observation = self._observation
        self.end_prefill()
        return observation, self.dense.keys, self.dense.values

    def end_prefill(self) -> None:
        """Mark the prefill as handled (the compressor has compressed this layer, or decided not to)."""
        self._observation, self._pending = None, False

    # -- compaction -------------------------------------------------------------------------------------------------
    def replace_held(self, storage: DenseKV | RaggedKV, kept: torch.Tensor) -> None:
        """Swap every entry the layer holds (prompt and any decoded tokens) for a compacted selection of them.

        The selection stands for all logical columns so far (``prompt_columns`` becomes the logical length); tokens
        appended later form the tail. Called after the prefill (prompt eviction) and during decoding (decode-time
        eviction).

        Args:
            storage: the kept entries, each head's in position order.
            kept: ``[batch, kv_heads]`` entries kept per head.
        """
        if self.sliding is not None:
            raise RuntimeError("lavakv: a sliding layer past its window is never compressed")
        old = getattr(self, "keys", None)
        if old is not None and _LAYER_BY_KEYS.get(id(old)) is self:
            del _LAYER_BY_KEYS[id(old)]
        if isinstance(storage, DenseKV):
            self.dense, self.prefix, self.tail = storage, None, None
            self.dense_prompt_entries = storage.length
            self._register(storage.keys, storage.values)
        else:
            self.dense, self.prefix, self.tail = None, storage, None
            self.keys = self.values = None
        self.prompt_columns = self.logical_length
        self.kept_prompt = kept
        self.compressed = True

    def held_entries(self, column_valid: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything the layer holds, laid out for scoring: K, V ``[batch, kv_heads, n, head_dim]`` and validity.

        Each head's entries are in position order and end at the last column (the most recent token), so the
        last ``window`` columns are the observation window in every head. Validity is ``[batch, n]`` when every
        head holds the same positions (dense storage) and ``[batch, kv_heads, n]`` for ragged storage (invalid
        columns on the left). ``column_valid [batch, columns]`` marks the left padding among the logical columns
        (the prompt's, chunk by chunk); columns past it are real (generated tokens); None: no padding. A compacted
        part holds real entries only. A ragged layer makes padded copies (transient); a dense one returns views.
        """
        if not self.compressible:
            raise ValueError("this layer holds no entries lavakv compresses (not filled, or sliding past its window)")

        def columns_valid(start: int, count: int, device) -> torch.Tensor:
            valid = torch.ones(self.batch, count, dtype=torch.bool, device=device)
            if column_valid is not None:
                known = column_valid[:, start : start + count]
                valid[:, : known.shape[1]] = known
            return valid

        if self.prefix is None:
            keys, values = self.dense.keys, self.dense.values
            kept = self.dense_prompt_entries if self.compressed else 0
            valid = torch.cat([torch.ones(self.batch, kept, dtype=torch.bool, device=keys.device),
                               columns_valid(self.prompt_columns, keys.shape[2] - kept, keys.device)], dim=1)
            return keys, values, valid
        keys, values, valid = self.prefix.right_aligned()
        if self.tail is not None:
            keys = torch.cat([keys, self.tail.keys], dim=2)
            values = torch.cat([values, self.tail.values], dim=2)
            tail = columns_valid(self.prompt_columns, self.tail.length, keys.device)
            valid = torch.cat([valid, tail[:, None, :].expand(-1, valid.shape[1], -1)], dim=2)
        return keys, values, valid

    # -- forks (one compressed context, many continuations) -------------------------------------------------------
    def fork(self, owner) -> CompressedLayer:
        """A layer holding the same entries for the cache ``owner``, sharing the stored K/V tensors.

        Nothing is copied now: the ragged prefix is immutable, and dense parts are wrapped at their exact length,
        so the first token appended to either layer reallocates that layer's dense part (copy on append) and the
        other never sees it. The ring of recent queries is copied (it is written in place).
        """
        layer = copy.copy(self)
        layer._owner = weakref.ref(owner)
        if self.sliding is not None:
            layer.sliding = copy.deepcopy(self.sliding)
            layer.keys, layer.values = layer.sliding.keys, layer.sliding.values
            return layer
        layer.dense = DenseKV(self.dense.keys, self.dense.values) if self.dense is not None else None
        layer.tail = DenseKV(self.tail.keys, self.tail.values) if self.tail is not None else None
        layer.keys = layer.values = None
        store = layer.tail if layer.prefix is not None else layer.dense
        if store is not None:
            layer._register(store.keys, store.values)  # new view objects: routing by identity stays per cache
        if self._recent is not None:
            layer._recent = self._recent.clone()
        layer._observation, layer._pending = None, False
        return layer

    def restore(self, storage, *, kept: torch.Tensor | None, prompt_columns: int, compressed: bool,
                logical_length: int, dense_prompt_entries: int, recent_queries: torch.Tensor | None,
                window: int) -> None:
        """Fill a fresh layer with saved entries (a loaded compressed context): ``storage`` is a ``DenseKV`` or a
        ``(RaggedKV prefix, DenseKV tail or None)`` pair; the other arguments are the saved layer's state."""
        if self.is_initialized:
            raise RuntimeError("lavakv: only a fresh layer can be restored")
        dense = storage if isinstance(storage, DenseKV) else None
        prefix, tail = (None, None) if dense is not None else storage
        sample = dense.keys if dense is not None else prefix.keys
        batch, kv_heads = (dense.keys.shape[:2] if dense is not None else prefix.lengths.shape)
        self.device, self.dtype = sample.device, sample.dtype
        self.batch, self.kv_heads = int(batch), int(kv_heads)
        self.entry_bytes = (sample.shape[-1] + (dense or prefix).values.shape[-1]) * sample.element_size()
        self.is_initialized = True
        self.dense, self.prefix, self.tail = dense, prefix, tail
        self.kept_prompt, self.prompt_columns, self.compressed = kept, prompt_columns, compressed
        self.logical_length, self.dense_prompt_entries = logical_length, dense_prompt_entries
        store = tail if prefix is not None else dense
        self.keys = self.values = None
        if store is not None:
            self._register(store.keys, store.values)
        if recent_queries is not None:
            self.track_queries(recent_queries, window)

    @classmethod
    def stacked(cls, owner, parts: list[tuple[CompressedLayer, torch.Tensor | None]]) -> CompressedLayer:
        """A layer for ``owner`` holding, row after row, every entry the layers of ``parts`` hold (``(layer,
        column_valid [batch, columns] or None)``, as :meth:`held_entries` takes) as one compacted prefix standing
        for all logical columns. The layers must have one logical length; each head keeps its entries in order."""
        keys, values, lengths = [], [], []
        for layer, column_valid in parts:
            k, v, valid = layer.held_entries(column_valid)
            valid = valid[:, None, :].expand(k.shape[:3]) if valid.dim() == 2 else valid
            keys.append(k[valid])
            values.append(v[valid])
            lengths.append(valid.sum(-1))
        first = parts[0][0]
        lengths_all = torch.cat(lengths)
        storage = compact(torch.cat(keys), torch.cat(values), lengths_all)
        layer = cls(owner, first.sliding_window)
        dense = isinstance(storage, DenseKV)
        layer.restore(storage if dense else (storage, None), kept=lengths_all, prompt_columns=first.logical_length,
                      compressed=True, logical_length=first.logical_length,
                      dense_prompt_entries=storage.length if dense else 0, recent_queries=None, window=0)
        return layer

    # -- recent queries (decode-time eviction scores with the last window of queries) ----------------------------
    def track_queries(self, queries: torch.Tensor, size: int) -> None:
        """Start keeping the last ``size`` queries this layer computes, from ``queries [batch, q_heads, q, head_dim]``
        (the prompt's last ones). A ring buffer: memory is bounded by ``size`` whatever the generation length."""
        b, hq, _, d = queries.shape
        self._recent = queries.new_empty(b, hq, size, d)
        self._recent_count = self._recent_next = 0
        self.observe_queries(queries)

    @property
    def tracks_queries(self) -> bool:
        return self._recent is not None

    def observe_queries(self, queries: torch.Tensor) -> None:
        """Record ``queries [batch, q_heads, q, head_dim]`` (post-RoPE) into the ring of recent queries."""
        size = self._recent.shape[2]
        queries = queries[:, :, -size:]
        for position in range(queries.shape[2]):  # at most ``size`` copies; one per decode step
            self._recent[:, :, self._recent_next] = queries[:, :, position]
            self._recent_next = (self._recent_next + 1) % size
        self._recent_count = min(size, self._recent_count + queries.shape[2])

    def recent_queries(self) -> torch.Tensor:
        """The recorded queries in order, ``[batch, q_heads, min(count, size), head_dim]`` (a copy)."""
        if self._recent is None:
            raise ValueError("this layer does not keep its recent queries")
        size = self._recent.shape[2]
        order = [(self._recent_next - self._recent_count + i) % size for i in range(self._recent_count)]
        return self._recent[:, :, order]

    def prompt_entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored prompt entries, flat ``[entries, head_dim]`` in (batch, head, token) order."""
        if not self.compressible:
            raise ValueError("this layer holds no prompt entries of its own (not filled, or a sliding layer past its "
                             "window)")
        if self.prefix is not None:
            return self.prefix.flat()
        keys = self.dense.keys[:, :, : self.dense_prompt_entries]  # decoded tokens after them are not prompt
        values = self.dense.values[:, :, : keys.shape[2]]
        return keys.reshape(-1, keys.shape[-1]), values.reshape(-1, values.shape[-1])

    # -- transformers' layer protocol ---------------------------------------------------------------------------------
    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if self.sliding is not None:
            return self.sliding.get_mask_sizes(query_length)
        return self.logical_length + query_length, 0

    def get_seq_length(self) -> int:
        return self.logical_length

    def get_max_length(self) -> int:
        return -1

    get_max_cache_shape = get_max_length  # the abstract method's name before transformers 5.13

    def reset(self) -> None:
        self.__init__(self._owner(), self.sliding_window)

    # -- memory ------------------------------------------------------------------------------------------------
    def nbytes(self) -> int:
        """Bytes of K/V entries held by this layer now (buffer slack excluded: see :meth:`slack_nbytes`)."""
        if self.sliding is not None:
            return self.sliding.keys.nbytes + self.sliding.values.nbytes if self.sliding.is_initialized else 0
        return sum(s.nbytes() for s in (self.dense, self.prefix, self.tail) if s is not None)

    def slack_nbytes(self) -> int:
        """Bytes allocated for future decoded tokens (growth headroom of dense buffers), not yet holding entries."""
        return sum(s.slack_nbytes() for s in (self.dense, self.tail) if s is not None)

    def uncompressed_nbytes(self) -> int:
        """Bytes the same layer would hold without compression: every logical column, every head."""
        if not self.is_initialized:
            return 0
        if self.sliding is not None:
            return self.nbytes()
        return self.batch * self.kv_heads * self.logical_length * self.entry_bytes

    def _unsupported(self, *args, **kwargs):
        raise NotImplementedError(
            "lavakv's compressed cache does not support beam search, contrastive or assisted decoding, or cropping; "
            "use greedy or sampling generation"
        )

    crop = reorder_cache = batch_repeat_interleave = batch_select_indices = _unsupported


class CompressedCache(Cache):
    """A ``Cache`` for one generation with lavakv. Create it with ``session.cache()``; pass it to the model.

    Every attention layer is a :class:`CompressedLayer` (full attention, or sliding attention compressed while the
    sequence fits in its window); other layer kinds (e.g. linear attention) use transformers' own classes.
    """

    def __init__(self, config, owner) -> None:
        text_config = config.get_text_config(decoder=True)
        layer_types, per_layer_kwargs = layer_types_and_kwargs(text_config)
        self._owner = owner
        layers = []
        for index, (layer_type, kwargs) in enumerate(zip(layer_types, per_layer_kwargs, strict=False)):
            if layer_type == "full_attention":
                layers.append(CompressedLayer(self))
            elif layer_type == "sliding_attention":
                layers.append(CompressedLayer(self, sliding_window=kwargs["sliding_window"]))
            else:
                layers.append(dynamic_layer(text_config, index, layer_type, kwargs))
        super().__init__(layers=layers)

    @property
    def owner(self):
        """The session that made this cache."""
        return self._owner

    def check_usable(self) -> None:
        """Raise unless the session that made this cache is still attached."""
        self._owner.check_cache_usable(self)

    def compressible_layers(self) -> list[int]:
        """Indices of the layers lavakv compresses for the current prompt (initialised, not sliding past the window).

        Before the prompt's prefill, every :class:`CompressedLayer`.
        """
        return [
            i for i, layer in enumerate(self.layers)
            if isinstance(layer, CompressedLayer) and (layer.compressible or not layer.is_initialized)
        ]

    def copy_layer_from(self, other: CompressedCache, index: int) -> None:
        """Make layer ``index`` a copy of ``other``'s (for layers one prefill filled in ``other`` only)."""
        layer = copy.deepcopy(other.layers[index])
        if isinstance(layer, CompressedLayer):
            layer._owner = weakref.ref(self)
        self.layers[index] = layer

    def fork(self, owner) -> CompressedCache:
        """A cache for ``owner`` (a session) holding the same entries, sharing their storage (see
        :meth:`CompressedLayer.fork`); other layer kinds are deep-copied."""
        other = copy.copy(self)
        Cache.__init__(other, layers=[
            layer.fork(other) if isinstance(layer, CompressedLayer) else copy.deepcopy(layer) for layer in self.layers
        ])
        other._owner = owner
        return other

    def layers_fitting(self, tokens: int) -> list[int]:
        """Indices of the :class:`CompressedLayer` s for which a ``tokens``-long prompt is full attention."""
        return [i for i, layer in enumerate(self.layers) if isinstance(layer, CompressedLayer) and layer.fits(tokens)]

    def _total_bytes(self, of_compressed: str) -> int:
        """Sum of ``layer.<of_compressed>()`` over lavakv layers plus the K/V bytes of other initialised layers."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, CompressedLayer):
                total += getattr(layer, of_compressed)()
            elif getattr(layer, "is_initialized", False) and layer.keys is not None:
                total += layer.keys.nbytes + layer.values.nbytes
        return total

    def resident_kv_bytes(self) -> int:
        """Bytes of K/V entries the cache holds now, measured from the tensors (growth slack excluded)."""
        return self._total_bytes("nbytes")

    def slack_kv_bytes(self) -> int:
        """Bytes allocated ahead for decoded tokens and not yet holding entries."""
        return sum(layer.slack_nbytes() for layer in self.layers if isinstance(layer, CompressedLayer))

    def uncompressed_kv_bytes(self) -> int:
        """Bytes the same cache would hold without compression."""
        return self._total_bytes("uncompressed_nbytes")

    def _unsupported(self, *args, **kwargs):
        CompressedLayer._unsupported(self)

    crop = reorder_cache = batch_repeat_interleave = batch_select_indices = _unsupported
