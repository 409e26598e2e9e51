"""The coordinator: attaches a method to a model, compresses each layer after its exact prefill.

During prefill every full-attention layer attends over its whole K/V through SDPA (exact). Right after, the
coordinator scores the layer's entries from the tensors the layer computed (window queries post-RoPE, keys,
values), asks the layer allocation for budgets and the head allocation for the kept set, and compacts the
layer's storage. Cascading layer allocations (LAVa, CAKE) re-budget all layers seen so far after each layer and
truncate earlier layers from the scores of their kept candidates only (METHODS.md §3).
"""

from __future__ import annotations

import copy
import logging
import time
import weakref
from dataclasses import dataclass, field

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from lavakv.attention import ATTENTION_NAME, ROUTES, dense_mask, register, tail_mask
from lavakv.budget import budget_per_row, rows_to_compress
from lavakv.cache import CompressedCache, CompressedLayer
from lavakv.methods import Method
from lavakv.ragged_attention import ragged_attention
from lavakv.scorers import SCORERS, ScoringInputs
from lavakv.storage import compact
from lavakv.support import check_supported

logger = logging.getLogger(__name__)

TRUNCATE_SLACK = 0.8  # cascade: re-truncate an earlier layer once its budget drops below 80 % of its stored one


@dataclass
class SessionStats:
    """What the last prefill kept and what the cache holds now.

    Attributes:
        kept_tokens: per compressible layer, ``LongTensor[batch, kv_heads]`` prompt entries kept (padding excluded).
        resident_kv_bytes: bytes of K/V tensors held by the cache now, measured from the tensors.
        uncompressed_kv_bytes: what the same cache would hold without compression.
        prompt_tokens: ``[batch]`` real (non-padding) prompt tokens.
        layer_budgets: per compressible layer, ``[batch]`` final prefix budget B_l (window excluded), or None.
        layer_statistics: per compressible layer, ``[batch]`` cascade statistic (LAVa entropy, CAKE preference).
        layers: indices of the compressible layers, aligned with the lists above.
        compression_seconds: wall time spent scoring, allocating and compacting during prefill. When one prefill
            fills several caches, the window attention they share is charged in full to each method that reads
            it, so every method's figure is what it would cost alone.
        shared_prefill_seconds: the compression wall time this cache actually took in its prefill, the shared
            window attention counted only where it was computed (summed over a prefill's caches: its total
            compression time). Equals ``compression_seconds`` for a cache prefilled alone.
    """

    kept_tokens: list[torch.Tensor]
    resident_kv_bytes: int
    uncompressed_kv_bytes: int
    prompt_tokens: torch.Tensor | None
    layer_budgets: list[torch.Tensor] | None
    layer_statistics: list[torch.Tensor] | None
    layers: list[int]
    compression_seconds: float
    shared_prefill_seconds: float

    @property
    def kept_entries(self) -> int:
        """Total prompt entries kept, all layers, heads and sequences."""
        return int(sum(int(k.sum()) for k in self.kept_tokens))


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


@dataclass
class _Prefill:
    """Per-cache state of one prefill."""

    method: Method
    real_tokens: torch.Tensor | None = None  # [b]
    budget: torch.Tensor | None = None  # [b] B per row, window included
    active: torch.Tensor | None = None  # [b] rows that evict anything
    statistics: list[torch.Tensor] = field(default_factory=list)
    budgets: dict[int, torch.Tensor] = field(default_factory=dict)
    candidates: dict[int, _Candidates] = field(default_factory=dict)
    compacted_at: dict[int, torch.Tensor] = field(default_factory=dict)  # [b] budget of a layer's last compaction
    observed: list[int] = field(default_factory=list)
    seconds: float = 0.0  # compression time, shared window attention charged to each reader
    wall_seconds: float = 0.0  # compression time actually spent by this cache


class Session:
    """A method attached to a model. Use as a context manager; everything installed is removed on exit.

    Inside the ``with`` block the model's attention implementation is lavakv's (SDPA for layers it does not
    compress, so a plain cache gives the same results as ``attn_implementation="sdpa"``).
    """

    def __init__(self, method: Method, model: torch.nn.Module) -> None:
        check_supported(model)
        self.method = method
        self.model = model
        self._previous_impl: str | None = None
        self._modules: list[torch.nn.Module] = []
        self._caches: weakref.WeakSet[CompressedCache] = weakref.WeakSet()
        self._last: CompressedCache | None = None
        self._hook = None
        self._static_budgets: torch.Tensor | None = None

    # -- installation -------------------------------------------------------------------------------------
    def __enter__(self) -> Session:
        register()
        self._previous_impl = self.model.config._attn_implementation
        self.model.set_attn_implementation(ATTENTION_NAME)
        self._modules = [
            m for m in self.model.modules() if hasattr(m, "layer_idx") and type(m).__name__.endswith("Attention")
        ]
        for module in self._modules:
            ROUTES[module] = self._attend
        self._hook = self.model.register_forward_pre_hook(_reject_empty_prompt, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        for module in self._modules:
            ROUTES.pop(module, None)
        self._modules = []
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._previous_impl is not None:
            self.model.set_attn_implementation(self._previous_impl)
            self._previous_impl = None

    def cache(self, method: Method | None = None) -> CompressedCache:
        """A fresh compressed cache for one generation (pass it as ``past_key_values``).

        ``method`` defaults to the session's; any method may be given, since decoding over a compressed cache
        does not depend on how it was compressed.
        """
        if not self._modules:
            raise RuntimeError("session.cache() must be called inside `with method.attach(model) as session:`")
        cache = CompressedCache(self.model.config)
        cache.lavakv_prefill = _Prefill(method or self.method)
        cache.lavakv_followers = []
        self._caches.add(cache)
        self._last = cache
        return cache

    def prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, methods: list[Method]
    ) -> tuple[list[CompressedCache], torch.Tensor]:
        """One exact prefill that fills a compressed cache per method.

        Prefill attention is exact whatever the method, so every layer's K/V, queries and hence scores are the
        same for all methods: each layer is computed once and each cache compacts it with its own method. The
        caches are identical to running each method alone.

        Args:
            input_ids: ``[batch, tokens]``; attention_mask: ``[batch, tokens]`` (left padding) or None.
        Returns:
            the caches (aligned with ``methods``) and the last prompt position's logits ``[batch, vocab]``.
        """
        if not methods:
            raise ValueError("prefill needs at least one method")
        caches = [self.cache(m) for m in methods]
        caches[0].lavakv_followers = caches[1:]
        with torch.no_grad():
            logits = self.model(
                input_ids, attention_mask=attention_mask, cache=caches[0], logits_to_keep=1
            ).logits[:, -1]
        caches[0].lavakv_followers = []
        for i, layer in enumerate(caches[0].layers):  # layers lavakv does not compress (e.g. sliding window)
            if not isinstance(layer, CompressedLayer):
                for follower in caches[1:]:
                    follower.layers[i] = copy.deepcopy(layer)
        return caches, logits

    def stats(self, cache: CompressedCache | None = None) -> SessionStats:
        """Statistics of ``cache`` (default: the last cache made by :meth:`cache`)."""
        cache = cache or self._last
        if cache is None:
            raise RuntimeError("no cache yet: call session.cache() and run the model first")
        state: _Prefill = cache.lavakv_prefill
        layers = cache.compressible_layers()
        kept = []
        for i in layers:
            layer = cache.layers[i]
            if layer.kept_prompt is not None:
                kept.append(layer.kept_prompt.clone())
            elif state.real_tokens is not None:
                kept.append(state.real_tokens[:, None].expand(-1, layer.kv_heads).clone())
            else:
                kept.append(torch.zeros(0, 0, dtype=torch.long))
        budgets = [state.budgets[i] for i in layers] if len(state.budgets) == len(layers) else None
        stats = state.statistics if len(state.statistics) == len(layers) else None
        return SessionStats(
            kept_tokens=kept,
            resident_kv_bytes=cache.resident_kv_bytes(),
            uncompressed_kv_bytes=cache.uncompressed_kv_bytes(),
            prompt_tokens=state.real_tokens,
            layer_budgets=budgets,
            layer_statistics=list(stats) if stats is not None else None,
            layers=layers,
            compression_seconds=state.seconds,
            shared_prefill_seconds=state.wall_seconds,
        )

    # -- attention ----------------------------------------------------------------------------------------
    def _find(self, layer_idx: int, key: torch.Tensor) -> tuple[CompressedCache, CompressedLayer] | None:
        for cache in self._caches:
            layer = cache.layers[layer_idx] if layer_idx < len(cache.layers) else None
            if isinstance(layer, CompressedLayer) and layer.keys is key:
                return cache, layer
        return None

    def _attend(self, module, query, key, value, attention_mask, **kwargs):
        found = self._find(module.layer_idx, key)
        if found is None:
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        cache, layer = found
        scaling = kwargs.get("scaling") or module.scaling
        q_len = query.shape[2]
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
            valid = _valid_tokens(attention_mask, key)
            shared: dict[int, ScoringInputs] = {}  # per window size: window attention computed once per layer
            for target in (cache, *cache.lavakv_followers):
                if target is not cache:
                    target.layers[module.layer_idx].update(key, value)
                target.layers[module.layer_idx].prefill_pending = False
                state: _Prefill = target.lavakv_prefill
                if state.real_tokens is None:
                    state.real_tokens = valid.sum(-1)
                if not state.method.compresses:
                    continue
                w = state.method.window
                inputs = shared.setdefault(w, ScoringInputs(query, key, value, valid, float(scaling), w))
                reads, spent = inputs.window_reads, inputs.window_seconds
                start = time.perf_counter()
                with torch.no_grad():
                    self._compress(target, module.layer_idx, inputs)
                wall = time.perf_counter() - start
                state.wall_seconds += wall
                # the window attention, computed once per layer, is charged in full to every method that read it
                own = wall - (inputs.window_seconds - spent)
                state.seconds += own + (inputs.window_seconds if inputs.window_reads > reads else 0.0)
        return out

    # -- compression --------------------------------------------------------------------------------------
    def _compress(self, cache: CompressedCache, layer_idx: int, inputs: ScoringInputs) -> None:
        """Score one layer, update the layer budgets, and compact (or truncate) the affected layers."""
        state: _Prefill = cache.lavakv_prefill
        m = state.method
        layers = cache.compressible_layers()
        if state.budget is None:
            state.budget = budget_per_row(state.real_tokens, m.budget, m.compression_ratio, m.window)
            state.active = rows_to_compress(state.real_tokens, state.budget, m.window)
        state.observed.append(layer_idx)
        if not bool(state.active.any()):
            return
        scores = SCORERS[m.scorer](inputs, **m.scorer_kwargs())
        allocation = m.layer_allocation()
        mean = (state.budget - m.window).clamp_min(0)  # [b] B - w
        if not allocation.cascade:
            budgets = allocation.budgets(len(layers), mean)
            state.budgets[layer_idx] = budgets[layers.index(layer_idx)]
            self._select(cache, layer_idx, scores, state.budgets[layer_idx], state, keep_candidates=False)
            return
        statistic = allocation.statistic(inputs, scores)
        if statistic.min() < 0 or not bool(torch.isfinite(statistic).all()):
            raise ValueError(
                f"layer allocation {m.layers!r} needs a non-negative finite statistic; scorer {m.scorer!r} gave "
                f"{statistic.tolist()}; use a non-negative scorer (lava, snapkv, cake) with it"
            )
        state.statistics.append(statistic)
        state.candidates[layer_idx] = _Candidates(None, scores)
        total = mean * len(layers)
        budgets = allocation.budgets(torch.stack(state.statistics), total)  # [seen, b]
        final = len(state.observed) == len(layers)
        for j, budget in zip(state.observed, budgets, strict=True):
            state.budgets[j] = budget
            stored = state.compacted_at.get(j)
            # Truncate an earlier layer only when its budget fell below TRUNCATE_SLACK of the budget it was last
            # compacted to (or at the end): the result is the same (candidates only shrink) and earlier layers
            # never hold more than 1/TRUNCATE_SLACK of their current budget, with O(L log L) compactions.
            if not final and j != layer_idx and stored is not None and bool((budget >= TRUNCATE_SLACK * stored).all()):
                continue
            if self._select(cache, j, None, budget, state, keep_candidates=True):
                state.compacted_at[j] = budget
        if final:
            state.candidates.clear()  # cascade finished: budgets are final

    def _select(self, cache, layer_idx, scores, budget, state: _Prefill, keep_candidates: bool) -> bool:
        """Keep the allocated entries of one layer; truncate if it was already compressed.

        Returns whether the layer now holds a compacted selection (False: it still holds every position).
        """
        m = state.method
        layer: CompressedLayer = cache.layers[layer_idx]
        candidates = state.candidates.get(layer_idx) if keep_candidates else None
        full = scores if candidates is None else candidates.full_scores()  # [b, h, n]
        valid = full != float("-inf")
        real = state.real_tokens
        keep_all = ~state.active | (budget >= (real - m.window))  # rows whose budget covers the prefix
        keep = m.allocate_heads(full, budget.clamp_min(0), (state.budget - m.window).clamp_min(0))
        keep = torch.where(keep_all[:, None, None], valid, keep)
        slots = candidates.slots if candidates is not None else None
        if slots is None and not layer.compressed and bool(keep_all.all()):
            return False  # nothing evicted: the layer stays exactly as prefill left it (padding included)
        if slots is not None and torch.equal(keep, slots):
            return True
        subset = keep.reshape(-1) if slots is None else keep[slots]
        keys, values = (layer.dense or layer.prefix).select(subset)
        lengths = keep.sum(-1)
        layer.replace_prompt(compact(keys, values, lengths), lengths, prompt_columns=full.shape[-1])
        if keep_candidates:
            state.candidates[layer_idx] = _Candidates(keep, full[keep])
        return True


def _valid_tokens(attention_mask: torch.Tensor | None, key: torch.Tensor) -> torch.Tensor:
    """``[batch, tokens]`` bool real-token mask, read from the last query row of the prefill mask."""
    b, _, n, _ = key.shape
    if attention_mask is None:
        return torch.ones(b, n, dtype=torch.bool, device=key.device)
    last = attention_mask[:, 0, -1, :]
    last = last if last.dtype == torch.bool else last == 0
    return last.expand(b, n)


def _reject_empty_prompt(module, args, kwargs):
    ids = kwargs.get("input_ids", args[0] if args else None)
    embeds = kwargs.get("inputs_embeds")
    tensor = ids if ids is not None else embeds
    if tensor is not None and tensor.dim() >= 2 and tensor.shape[1] == 0:
        raise ValueError("empty prompt: input_ids has 0 tokens; give at least one token to generate from")
    return None
