"""The compressor: all compression state of one cache, and the one operation that evicts entries.

A :class:`Compressor` belongs to one :class:`~lavakv.cache.CompressedCache`. Its operation
:meth:`Compressor.compress` — compress these layers to these budgets, scoring with these window queries — is
usable at any moment a layer holds uncompressed entries. Callers:

1. the prefill path, :meth:`Compressor.prefill_layer`, right after a layer's exact prefill (the session's forward
   hook on the attention module calls it). Static layer allocations (uniform, pyramid) know the layer's budget
   at once. Cascades (LAVa, CAKE; docs/methods.md) learn one statistic per layer; after each layer they re-budget
   every layer seen so far and truncate earlier layers from the sorted scores of their kept candidates only
   (budgets only shrink, so no re-scoring);
2. decode-time eviction (:meth:`Compressor.after_forward`, a method with ``decode_budget``): after every forward
   call, once the cache would exceed ``decode_budget`` entries per KV head on average, every compressed layer is
   scored from its last ``window`` queries and its held entries (prompt and generated alike), the layer allocation
   re-budgets all layers at once from their current statistics (global and exact, not a cascade), and each layer
   is compacted to ``decode_budget - decode_interval``;
3. any caller of :meth:`Compressor.compress` (a layer in any state).

Nothing here sets attributes on the cache: storage changes go through ``CompressedLayer.replace_held``.
"""

from __future__ import annotations

import copy
import logging
import time
import weakref
from dataclasses import dataclass

import torch

from lavakv.cache.compressed import CompressedCache, CompressedLayer
from lavakv.cache.storage import compact
from lavakv.runtime.components import Components
from lavakv.scorers.base import ScoringInputs

logger = logging.getLogger(__name__)

TRUNCATE_SLACK = 0.8  # cascade: re-truncate an earlier layer once its budget drops below 80 % of its stored one


@dataclass
class _Candidates:
    """A cascade layer's state between re-budgets: which positions its slots hold, and their scores."""

    slots: torch.Tensor | None  # [b, h, n] bool, None while the layer holds every position
    scores: torch.Tensor  # flat scores of the slots (or the full [b, h, n] scores when slots is None)

    def full_scores(self) -> torch.Tensor:
        if self.slots is None:
            return self.scores
        out = torch.full(self.slots.shape, float("-inf"), device=self.scores.device)
        return out.masked_scatter(self.slots, self.scores)


class Compressor:
    """Compression state of one cache: budgets, cascade statistics and candidates, window queries, timing.

    Attributes:
        components: the method's components, or None for no compression (statistics are still kept).
        valid: ``[batch, tokens]`` bool, False on the prompt's (left) padding, once its prefill started.
        real_tokens: ``[batch]`` real (non-padding) prompt tokens.
        budget: ``[batch]`` B per sequence (window included); ``active``: ``[batch]`` rows that evict anything.
        layers: the layers compressed for this prompt (full attention, or sliding with the prompt inside the window).
        budgets: layer -> ``[batch]`` current prefix budget B_l (window excluded).
        statistics: layer -> ``[batch]`` cascade statistic (LAVa entropy, CAKE preference), in layer order.
        record_window_queries: whether to keep each layer's window queries (off by default: they cost about as much
            memory as a small compressed cache).
        window_queries: layer -> ``[batch, q_heads, w, head_dim]`` the last ``window`` prefill queries (a copy shared
            by the caches of one prefill), when recorded.
        scaling: layer -> the softmax scale the layer used.
        seconds: compression time, shared window attention charged in full to each cache that reads it.
        wall_seconds: compression time this cache actually spent.
        decode_evictions: how many decode-time evictions ran; ``decode_seconds``: their wall time.
    """

    def __init__(self, components: Components | None, cache: CompressedCache, *, record_window_queries: bool = False,
                 rope: dict[int, torch.Tensor] | None = None) -> None:
        self.components = components
        self.rope = rope or {}
        self.record_window_queries = record_window_queries
        self._cache = weakref.ref(cache)
        self.valid: torch.Tensor | None = None
        self.real_tokens: torch.Tensor | None = None
        self.budget: torch.Tensor | None = None
        self.active: torch.Tensor | None = None
        self.layers: list[int] = []
        self.budgets: dict[int, torch.Tensor] = {}
        self.statistics: dict[int, torch.Tensor] = {}
        self.window_queries: dict[int, torch.Tensor] = {}
        self.scaling: dict[int, float] = {}
        self.seconds = 0.0
        self.wall_seconds = 0.0
        self.decode_evictions = 0
        self.decode_seconds = 0.0
        self._held: tuple[list[float], int] | None = None  # entries per head per row, at this logical length
        self._overshoot_warned = False
        self._chunk_pending = False
        self.deferred = False  # prefill without compressing (a reconstruction pass scores afterwards)
        self.prefilling = True  # until the first single-token or extending forward call after the first chunk
        self._candidates: dict[int, _Candidates] = {}
        self._compacted_at: dict[int, torch.Tensor] = {}
        self._observed: list[int] = []

    def fork(self, cache: CompressedCache) -> Compressor:
        """This compressor's state for ``cache``, a fork of its own cache (:meth:`CompressedCache.fork`)."""
        if self._candidates:
            raise RuntimeError("a cache can be forked only after its prefill finished")
        other = copy.copy(self)
        other._cache = weakref.ref(cache)
        for name in ("budgets", "statistics", "window_queries", "scaling", "_compacted_at"):
            setattr(other, name, dict(getattr(self, name)))
        other.layers = list(self.layers)
        other._observed = list(self._observed)
        return other

    @property
    def cache(self) -> CompressedCache:
        cache = self._cache()
        if cache is None:
            raise RuntimeError("lavakv: the compressor's cache no longer exists")
        return cache

    @property
    def window(self) -> int:
        return self.components.window if self.components is not None else 0

    def start_prompt(self, valid: torch.Tensor) -> None:
        """Set the prompt's real tokens, budgets and compressed layers from ``valid [batch, tokens]`` bool."""
        self.valid = valid
        self.real_tokens = valid.sum(-1)
        self.layers = self.cache.layers_fitting(valid.shape[-1])
        if self.components is not None:
            self.budget, self.active = self.components.row_budgets(self.real_tokens)
            self._check_decode_room()

    def _check_decode_room(self) -> None:
        """With a compression ratio and ``decode_budget``, refuse a prompt whose budget exceeds what decode-time
        eviction compresses back to (with ``budget=`` that is refused when the method is made)."""
        c = self.components
        if c is None or c.decode_budget is None or c.compression_ratio is None:
            return
        floor = c.decode_budget - c.decode_interval  # what each decode-time eviction compresses back to
        over = self.budget > floor  # a row kept whole (inactive) counts too: eviction would cut it as well
        if bool(over.any()):
            largest = int(self.budget[over].max())
            raise ValueError(
                f"compression_ratio={c.compression_ratio} keeps {largest} tokens per KV head of this prompt, more "
                f"than decode_budget - decode_interval = {c.decode_budget} - {c.decode_interval} = {floor} that "
                "decode-time eviction compresses back to: the first eviction would cut the prompt below its ratio. "
                f"Use decode_budget >= {largest + c.decode_interval}, or budget= instead of a ratio"
            )

    # -- the prefill path -----------------------------------------------------------------------------------------
    def prefill_layer(self, layer_idx: int, inputs: ScoringInputs) -> None:
        """Compress layer ``layer_idx`` right after its exact prefill (and re-budget earlier layers of a cascade).

        ``inputs`` may be shared with other caches filled by the same prefill: its window attention is computed
        once, and charged in full to every cache that reads it (``seconds``).
        """
        if self.real_tokens is None:
            self.start_prompt(inputs.valid)
        self._observed.append(layer_idx)
        if self.components is not None:
            self.scaling[layer_idx] = inputs.scaling
            if self.record_window_queries:
                self.window_queries[layer_idx] = inputs.window_queries_copy()
            if self.components.tracks_queries:
                self.cache.layers[layer_idx].track_queries(inputs.window_queries(), self.window)
        if self.components is None or self.deferred or not bool(self.active.any()):
            return
        reads, spent = inputs.window_reads, inputs.window_seconds
        start = time.perf_counter()
        with torch.no_grad():
            self._prefill_layer(layer_idx, inputs)
        wall = time.perf_counter() - start
        self.wall_seconds += wall
        own = wall - (inputs.window_seconds - spent)
        self.seconds += own + (inputs.window_seconds if inputs.window_reads > reads else 0.0)

    def _prefill_layer(self, layer_idx: int, inputs: ScoringInputs) -> None:
        c = self.components
        scores = c.scorer(inputs)
        mean = (self.budget - c.window).clamp_min(0)  # [b] B - w
        if not c.layers.cascade:
            budget = c.layers.budgets(len(self.layers), mean, real_tokens=self.real_tokens, window=c.window)[
                self.layers.index(layer_idx)]
            self.budgets[layer_idx] = budget
            self._select(layer_idx, scores, budget, self._keeps_all(budget), keep_candidates=False)
            return
        valid_prefix = inputs.valid & ~inputs.window_mask()[None, :]
        source = scores if c.layers.reads == "scores" else inputs.window_attention()
        statistic = c.layers.statistic(source, valid_prefix, inputs.window)
        if statistic.min() < 0 or not bool(torch.isfinite(statistic).all()):
            raise ValueError(
                f"layer allocation of {c.name!r} needs a non-negative finite statistic; scorer {c.scorer.name!r} gave "
                f"{statistic.tolist()}; use an attention scorer (lava, snapkv, cake) with it"
            )
        self.statistics[layer_idx] = statistic
        self._candidates[layer_idx] = _Candidates(None, scores)
        seen = list(self.statistics)
        budgets = c.layers.budgets(torch.stack([self.statistics[j] for j in seen]), mean * len(self.layers),
                                   real_tokens=self.real_tokens, window=c.window)
        final = len(seen) == len(self.layers)
        for j, budget in zip(seen, budgets, strict=True):
            stored = self._compacted_at.get(j)
            if stored is not None:  # a cascade only truncates: a layer never regains entries it already evicted
                budget = torch.minimum(budget, stored)
            self.budgets[j] = budget
            # Truncate an earlier layer only when its budget fell below TRUNCATE_SLACK of the budget it was last
            # compacted to (or at the end): the result is the same (candidates only shrink) and earlier layers
            # never hold more than 1/TRUNCATE_SLACK of their current budget, with O(L log L) compactions.
            if not final and j != layer_idx and stored is not None and bool((budget >= TRUNCATE_SLACK * stored).all()):
                continue
            if self._select(j, None, budget, self._keeps_all(budget), keep_candidates=True):
                self._compacted_at[j] = budget
        if final:
            self._candidates.clear()  # cascade finished: budgets are final

    def _keeps_all(self, budget: torch.Tensor) -> torch.Tensor:
        """``[batch]`` rows that keep every real token: nothing to evict, or a budget covering the prefix."""
        return ~self.active | (budget >= (self.real_tokens - self.components.window))

    # -- the operation ----------------------------------------------------------------------------------------------
    def compress(self, budgets: dict[int, torch.Tensor], queries: dict[int, torch.Tensor]) -> None:
        """Compress each layer ``l`` of ``budgets`` to ``budgets[l]`` (``[batch]`` tokens per KV head, window
        excluded), scoring its entries with ``queries[l]`` ``[batch, q_heads, q, head_dim]``: the layer's most
        recent queries (post-RoPE, ``q >= window``; the last ``window`` of them are the observation window).

        Works on a layer in any state: uncompressed after a prefill, already compressed, holding decoded tokens.
        Every entry held competes (prompt and generated alike) except the last ``window`` positions, always kept.
        Scorers that read every prompt query (H2O) see only the queries given.
        """
        if self.components is None:
            raise ValueError("this cache's method is 'full': it has no scorer to compress with")
        if self.real_tokens is None:
            raise ValueError("nothing to compress yet: run the prompt's prefill through this cache first")
        w = self.components.window
        for layer_idx in budgets:
            layer = self.cache.layers[layer_idx]
            if not isinstance(layer, CompressedLayer) or layer_idx not in self.scaling or not layer.compressible:
                raise ValueError(f"layer {layer_idx} is not a compressible layer of this cache")
            if layer_idx not in queries:
                raise ValueError(f"no queries given for layer {layer_idx}")
        with torch.no_grad():
            for layer_idx, budget in budgets.items():
                inputs = self._held_inputs(layer_idx, queries[layer_idx])
                if queries[layer_idx].shape[2] < min(w, inputs.tokens):
                    raise ValueError(
                        f"compress needs at least window={w} queries for layer {layer_idx}, got "
                        f"{queries[layer_idx].shape[2]}"
                    )
                budget = budget.to(self.real_tokens.device)
                self.budgets[layer_idx] = budget
                self._keep_held(layer_idx, self.components.scorer(inputs), budget, budget.new_ones((), dtype=bool),
                                (self.budget - w).clamp_min(0))

    def compress_with(self, queries: dict[int, torch.Tensor]) -> None:
        """Compress every layer to its budget, scoring with ``queries[l]`` ``[batch, q_heads, r, head_dim]``: the
        queries of a pass that came after the whole (deferred, uncompressed) prompt -- a reconstruction pass, or a
        question the context is compressed for. Each of them sees every entry (no causal mask)."""
        self.deferred = False
        start = time.perf_counter()
        with torch.no_grad():
            self._evict_all((self.budget - self.window).clamp_min(0), self.active, queries)
        self.seconds += time.perf_counter() - start
        self.wall_seconds += time.perf_counter() - start

    # -- chunked prefill --------------------------------------------------------------------------------------------
    def begin_forward(self, new_valid: torch.Tensor, *, extending: bool) -> None:
        """Before a forward call on this (already filled) cache: ``new_valid [batch, new]`` marks the new tokens'
        padding. A multi-token call of a chunked method, before decoding started, is the prompt's next chunk."""
        new = new_valid.shape[1]
        if extending or new == 1:
            self.prefilling = False
            return
        if self.real_tokens is None or not self.prefilling or self.components is None or \
                self.components.chunk_size is None:
            raise RuntimeError("begin_forward: not a prompt chunk of a chunked-prefill cache")
        self.valid = torch.cat([self.valid, new_valid.to(self.valid.device)], dim=1)
        self.real_tokens = self.valid.sum(-1)
        self.budget, self.active = self.components.row_budgets(self.real_tokens)
        self._check_decode_room()  # the prompt's budget grows with each chunk
        self._held = None
        self._chunk_pending = True

    # -- decode-time eviction ---------------------------------------------------------------------------------------
    @property
    def _reserve(self) -> int:
        """Headroom for decoded tokens given to dense compacted storage (the tokens until the next eviction)."""
        return self.components.decode_interval if self.components is not None and self.components.decode_budget else 0

    def held_per_head(self) -> list[float]:
        """Per row, the entries the compressed layers hold per KV head on average (window included), padding
        excluded: the quantity ``decode_budget`` bounds."""
        logical = self.cache.get_seq_length()
        if self._held is None:
            prompt = self.valid.shape[-1]
            rows = torch.zeros(self.real_tokens.shape[0], dtype=torch.float64)
            for layer_idx in self.layers:
                layer = self.cache.layers[layer_idx]
                if layer.kept_prompt is not None:
                    held = layer.kept_prompt.sum(-1).double().cpu() / layer.kv_heads
                    held += logical - layer.prompt_columns
                else:
                    held = self.real_tokens.double().cpu() + (logical - prompt)
                rows += held
            self._held = ((rows / max(len(self.layers), 1)).tolist(), logical)
        held, at = self._held
        return [h + (logical - at) for h in held]

    def after_forward(self) -> None:
        """After every forward call: run decode-time eviction once the next token would pass ``decode_budget``."""
        c = self.components
        if c is None or self.real_tokens is None or not self.layers or self.deferred:
            return  # deferred: the context waits uncompressed for the pass that scores it (compress_with)
        if self._chunk_pending:  # chunked prefill: every layer back to its budget after each chunk
            self._chunk_pending = False
            start = time.perf_counter()
            with torch.no_grad():
                held = torch.tensor(self.held_per_head(), device=self.budget.device)
                self._evict_all((self.budget - c.window).clamp_min(0), self.active & (held > self.budget))
            self.seconds += time.perf_counter() - start
            self.wall_seconds += time.perf_counter() - start
        if c.decode_budget is None:
            return
        held = self.held_per_head()
        if max(held) + 1 <= c.decode_budget:
            return
        start = time.perf_counter()
        with torch.no_grad():
            # per row: a row evicts when IT reaches the bound, so each sequence of a padded batch evolves as alone
            self._evict_all(torch.full_like(self.real_tokens, c.decode_budget - c.decode_interval - c.window),
                            torch.tensor([h + 1 > c.decode_budget for h in held]))
        self.decode_seconds += time.perf_counter() - start
        self.decode_evictions += 1
        after = max(self.held_per_head())
        if after + 1 > c.decode_budget and not self._overshoot_warned:
            self._overshoot_warned = True
            logger.warning(
                "lavakv: after decode-time eviction %s still holds %.1f entries per KV head on average, above "
                "decode_budget=%d - 1; its head floor holds more than its budget (use floor='exact')",
                c.name, after, c.decode_budget,
            )

    def _evict_all(self, mean: torch.Tensor, active: torch.Tensor,
                   queries: dict[int, torch.Tensor] | None = None) -> None:
        """Compress every layer to ``mean [batch]`` + window entries per KV head on average, in the rows ``active
        [batch]`` (decode: those at the bound; chunked prefill: those above their budget); one global layer
        allocation from every layer's current statistic (the method's allocations, applied to what each layer
        holds now). ``queries`` replaces the layers' rings of recent queries (:meth:`compress_with`)."""
        c = self.components
        w = c.window
        device = self.real_tokens.device
        active = active.to(device)
        if not bool(active.any()):
            return
        logical = self.cache.get_seq_length()
        tokens = self.real_tokens + (logical - self.valid.shape[-1])  # [b] real positions so far
        total = mean * len(self.layers)
        scores: dict[int, torch.Tensor] = {}
        stats = []
        for layer_idx in self.layers:
            recent = queries[layer_idx] if queries is not None else self.cache.layers[layer_idx].recent_queries()
            inputs = self._held_inputs(layer_idx, recent, follow=queries is not None)
            scores[layer_idx] = c.scorer(inputs)
            if c.layers.cascade:
                valid_prefix = inputs.valid & ~inputs.window_mask()
                source = scores[layer_idx] if c.layers.reads == "scores" else inputs.window_attention()
                stats.append(c.layers.statistic(source, valid_prefix, w, prefix_len=max(logical - w, 1)))
        if c.layers.cascade:
            statistics = torch.stack(stats)
            budgets = c.layers.budgets(statistics, total, real_tokens=tokens, window=w)
            self.statistics = dict(zip(self.layers, statistics, strict=True))
        else:
            budgets = c.layers.budgets(len(self.layers), mean, real_tokens=tokens, window=w)
        budgets = _cap_total(budgets.to(device), total)
        for layer_idx, budget in zip(self.layers, budgets, strict=True):
            self.budgets[layer_idx] = budget
            self._keep_held(layer_idx, scores[layer_idx], budget, active, mean)

    def _held_inputs(self, layer_idx: int, queries: torch.Tensor, follow: bool = False) -> ScoringInputs:
        """Scoring inputs over everything layer ``layer_idx`` holds (:meth:`CompressedLayer.held_entries`);
        ``follow``: the queries come after every held entry (:attr:`ScoringInputs.queries_follow`)."""
        keys, values, valid = self.cache.layers[layer_idx].held_entries(self.valid)
        return ScoringInputs(queries, keys, values, valid, self.scaling[layer_idx], self.window,
                             self.rope.get(layer_idx), queries_follow=follow)

    def _keep_held(self, layer_idx: int, scores: torch.Tensor, budget: torch.Tensor, active: torch.Tensor,
                   configured: torch.Tensor) -> None:
        """Keep the allocated entries of ``scores [batch, kv_heads, n]`` (over the held layout) in the rows
        ``active`` (``[batch]`` or a scalar); other rows keep everything. Compacts the layer unless nothing goes.
        ``configured [batch]`` is the configured mean budget minus the window (for the reference head floors)."""
        c = self.components
        layer: CompressedLayer = self.cache.layers[layer_idx]
        valid = scores != float("-inf")
        keep = c.heads(scores, budget.clamp_min(0), c.window, configured)
        keep = torch.where(active.reshape(-1, 1, 1), keep, valid)
        if torch.equal(keep, valid):
            return  # nothing evicted: the layer stays as it is (an uncompressed one keeps its padding columns)
        keys, values, _ = layer.held_entries(self.valid)
        lengths = keep.sum(-1)
        layer.replace_held(compact(keys[keep], values[keep], lengths, reserve=self._reserve), lengths)
        self._held = None

    def _select(self, layer_idx: int, scores: torch.Tensor | None, budget: torch.Tensor, keep_all: torch.Tensor,
                keep_candidates: bool) -> bool:
        """Keep the allocated entries of one layer; truncate if it was already compressed.

        ``keep_all [batch]`` marks the rows that keep every real token. Returns whether the layer now holds a
        compacted selection (False: it still holds every position).
        """
        c = self.components
        layer: CompressedLayer = self.cache.layers[layer_idx]
        candidates = self._candidates.get(layer_idx) if keep_candidates else None
        full = scores if candidates is None else candidates.full_scores()  # [b, h, n]
        valid = full != float("-inf")
        keep = c.heads(full, budget.clamp_min(0), c.window, (self.budget - c.window).clamp_min(0))
        keep = torch.where(keep_all[:, None, None], valid, keep)
        slots = candidates.slots if candidates is not None else None
        if slots is None and not layer.compressed and bool(keep_all.all()):
            return False  # nothing evicted: the layer stays exactly as prefill left it (padding included)
        if slots is not None and torch.equal(keep, slots):
            return True
        subset = keep.reshape(-1) if slots is None else keep[slots]
        keys, values = (layer.dense or layer.prefix).select(subset)
        lengths = keep.sum(-1)
        layer.replace_held(compact(keys, values, lengths, reserve=self._reserve), lengths)
        self._held = None
        if keep_candidates:
            self._candidates[layer_idx] = _Candidates(keep, full[keep])
        return True


def _cap_total(budgets: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """``budgets [layers, batch]`` scaled down (floor) where a column sums above ``total [batch]``: decode-time
    eviction's bound holds for every allocation, including reference schedules that give more than the mean."""
    sums = budgets.sum(0)
    over = sums > total
    if not bool(over.any()):
        return budgets
    scaled = torch.floor(budgets.double() * (total.double() / sums.clamp_min(1).double())[None, :]).long()
    return torch.where(over[None, :], scaled, budgets)
