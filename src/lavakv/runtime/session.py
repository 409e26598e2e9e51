"""A session: a method attached to a model, the caches it makes, and the hooks that drive their compressors.

Control flows down from here. Attaching installs, for the duration of the ``with`` block:

* lavakv's attention function (:mod:`lavakv.attention.dispatch`) as the model's attention implementation; it only
  attends (and hands a layer's prefill queries to the layer);
* a forward pre-hook on the model that checks the inputs against the cache (empty prompt, right padding, a second
  multi-token call on a filled cache, ``output_attentions``) before any work;
* a forward hook on every attention module that, right after a layer's exact prefill, asks the cache's
  :class:`~lavakv.runtime.compressor.Compressor` to compress that layer (and, for several caches filled by one
  prefill, copies the layer's K/V into the others and compresses each with its own method).

One session per model at a time; a cache works only while its session is attached.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from lavakv.attention.dispatch import ATTENTION_NAME, register
from lavakv.cache.compressed import CompressedCache, CompressedLayer
from lavakv.compat import cache_from, cache_kwargs, rope_frequencies
from lavakv.models.support import check_supported
from lavakv.runtime.components import Components, Resolvable
from lavakv.runtime.compressor import Compressor
from lavakv.runtime.context import CompressedContext, load_context, model_fingerprint, tokenizer_fingerprint
from lavakv.scorers.base import ScoringInputs

logger = logging.getLogger(__name__)

# model -> its attached session (weak: never keeps a model alive); one session per model at a time
_ATTACHED: weakref.WeakKeyDictionary[torch.nn.Module, Session] = weakref.WeakKeyDictionary()
_ATTACH_LOCK = threading.Lock()
EMPTY_ROW = "empty prompt: a row of the attention mask is all padding; give every row at least one real token"

#: the reconstruction pass of KVzip-style scorers: this prompt, then the context again
RECONSTRUCTION_PROMPT = "\n\nRepeat the previous context exactly.\n\n"


@dataclass
class SessionStats:
    """What a cache's prefill kept and what the cache holds now.

    Attributes:
        kept_tokens: per compressed layer, ``LongTensor[batch, kv_heads]`` prompt entries kept (padding excluded).
        resident_kv_bytes: bytes of K/V entries the cache holds now, measured from the tensors (growth slack of
            decode buffers excluded, so it is never above ``uncompressed_kv_bytes`` for the same entries).
        slack_kv_bytes: bytes allocated ahead for decoded tokens (buffer headroom), not holding entries yet.
        uncompressed_kv_bytes: what the same cache would hold without compression.
        prompt_tokens: ``[batch]`` real (non-padding) prompt tokens.
        layer_budgets: per compressed layer, ``[batch]`` final prefix budget B_l (window excluded), or None.
        layer_statistics: per compressed layer, ``[batch]`` cascade statistic (LAVa entropy, CAKE preference).
        layers: indices of the compressed layers, aligned with the lists above.
        compression_seconds: wall time spent scoring, allocating and compacting during prefill. When one prefill
            fills several caches, the window attention they share is charged in full to each method that reads
            it, so every method's figure is what it would cost alone.
        shared_prefill_seconds: the compression wall time this cache actually took in its prefill, the shared
            window attention counted only where it was computed (summed over a prefill's caches: its total
            compression time). Equals ``compression_seconds`` for a cache prefilled alone.
        decode_evictions: decode-time evictions run so far (methods with ``decode_budget``).
        decode_eviction_seconds: their total wall time.
        held_per_head: ``[batch]`` entries the compressed layers hold per KV head on average (window included,
            padding excluded; prompt and generated), the quantity ``decode_budget`` bounds; None before prefill.

    After decode-time eviction, ``kept_tokens`` counts the entries of the compacted part, which then holds
    generated tokens as well as prompt tokens.
    """

    kept_tokens: list[torch.Tensor]
    resident_kv_bytes: int
    slack_kv_bytes: int
    uncompressed_kv_bytes: int
    prompt_tokens: torch.Tensor | None
    layer_budgets: list[torch.Tensor] | None
    layer_statistics: list[torch.Tensor] | None
    layers: list[int]
    compression_seconds: float
    shared_prefill_seconds: float
    decode_evictions: int = 0
    decode_eviction_seconds: float = 0.0
    held_per_head: list[float] | None = None

    @property
    def kept_entries(self) -> int:
        """Total prompt entries kept, all layers, heads and sequences."""
        return int(sum(int(k.sum()) for k in self.kept_tokens))


def attach(method: Resolvable, model: torch.nn.Module) -> Session:
    """``Session(method, model)``: use as ``with lavakv.attach(method, model) as session:``."""
    return Session(method, model)


class Session:
    """A method attached to a model. Use as a context manager; everything installed is removed on exit.

    Inside the ``with`` block the model's attention implementation is lavakv's (SDPA for anything that is not a
    lavakv cache layer, so a plain cache gives the same results as ``attn_implementation="sdpa"``).
    """

    def __init__(self, method: Resolvable, model: torch.nn.Module) -> None:
        _check_not_compiled(model)
        check_supported(model)
        self.method = method
        self.model = model
        self._components = method.resolve()
        self._rope = rope_frequencies(model)  # layer -> RoPE inverse frequencies, for scorers that need them
        self._live = False
        self._previous_impl: str | None = None
        self._hooks: list = []
        self._compressors: weakref.WeakKeyDictionary[CompressedCache, Compressor] = weakref.WeakKeyDictionary()
        self._followers: weakref.WeakKeyDictionary[CompressedCache, list[CompressedCache]] = (
            weakref.WeakKeyDictionary()
        )
        self._extending: weakref.WeakSet[CompressedCache] = weakref.WeakSet()
        self._warned: weakref.WeakSet[CompressedCache] = weakref.WeakSet()
        # caches the model forward this session watches is running on (set by its pre-hook, cleared after it)
        self._forwarding: weakref.WeakSet[CompressedCache] = weakref.WeakSet()
        self._last: CompressedCache | None = None

    # -- installation -------------------------------------------------------------------------------------------
    def __enter__(self) -> Session:
        with _ATTACH_LOCK:
            other = _ATTACHED.get(self.model)
            if other is not None:
                raise RuntimeError(
                    f"this model already has a lavakv session attached ({_describe(other)}); exit that `with` block "
                    "first: one session per model at a time (several methods can share one prefill through "
                    "session.prefill(ids, mask, methods))"
                )
            _ATTACHED[self.model] = self
        register()
        self._previous_impl = self.model.config._attn_implementation
        self.model.set_attn_implementation(ATTENTION_NAME)
        self._hooks.append(self.model.register_forward_pre_hook(self._check_inputs, with_kwargs=True))
        self._hooks.append(self.model.register_forward_hook(self._after_forward, with_kwargs=True, always_call=True))
        for module in self.model.modules():
            if hasattr(module, "layer_idx") and type(module).__name__.endswith("Attention"):
                self._hooks.append(module.register_forward_hook(self._after_attention, with_kwargs=True))
        self._live = True
        return self

    def __exit__(self, *exc) -> None:
        self._live = False
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._previous_impl is not None:
            self.model.set_attn_implementation(self._previous_impl)
            self._previous_impl = None
        with _ATTACH_LOCK:
            if _ATTACHED.get(self.model) is self:
                del _ATTACHED[self.model]

    def check_cache_usable(self, cache: CompressedCache) -> None:
        """Raise unless this session is attached and the forward pass storing into ``cache`` is one of the model it
        is attached to (called by the cache before it stores anything): a forward it does not watch (another model,
        or the decoder body ``model.model(...)``) would skip its input checks and decode-time eviction."""
        if not self._live:
            raise RuntimeError(
                "this lavakv cache belongs to a session that is not attached (its `with` block has exited); use the "
                "cache inside `with method.attach(model) as session:`"
            )
        if cache not in self._forwarding:
            raise RuntimeError(
                f"this lavakv cache was given to a forward pass its session does not watch: call the model the session "
                f"is attached to ({type(self.model).__name__}), not another model or its decoder body (model.model)"
            )

    # -- caches -------------------------------------------------------------------------------------------------
    def cache(self, method: Resolvable | None = None, *, record_window_queries: bool = False) -> CompressedCache:
        """A fresh compressed cache for one prompt (pass it as ``past_key_values``).

        ``method`` defaults to the session's; any method may be given, since decoding over a compressed cache
        does not depend on how it was compressed. ``record_window_queries`` keeps each compressed layer's window
        queries for :meth:`window_queries` (and :meth:`Compressor.compress` later).
        """
        if not self._live:
            raise RuntimeError("session.cache() must be called inside `with method.attach(model) as session:`")
        components = self._components if method is None else method.resolve()
        if record_window_queries and components is not None and components.chunk_size is not None:
            raise ValueError(
                "record_window_queries keeps the window queries of an exact prefill; a chunked prefill (chunk_size=) "
                "scores each chunk from its own last queries, so there is no such record: drop one of the two"
            )
        cache = CompressedCache(self.model.config, self)
        self._compressors[cache] = Compressor(components, cache, record_window_queries=record_window_queries,
                                              rope=self._rope)
        self._last = cache
        return cache

    def compressor(self, cache: CompressedCache) -> Compressor:
        """The compressor of a cache this session made."""
        try:
            return self._compressors[cache]
        except (KeyError, TypeError):
            raise ValueError("this cache was not made by this session: use session.cache()") from None

    def prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, methods: list[Resolvable], *,
        record_window_queries: bool = False,
    ) -> tuple[list[CompressedCache], torch.Tensor]:
        """One exact prefill that fills a compressed cache per method.

        Prefill attention is exact whatever the method, so every layer's K/V, queries and hence scores are the
        same for all methods: each layer is computed once and each cache compacts it with its own method. The
        caches are identical to running each method alone. A method with ``chunk_size`` (chunked prefill) must be
        prefilled alone: its later chunks attend to what it compressed.

        Args:
            input_ids: ``[batch, tokens]``; attention_mask: ``[batch, tokens]`` (left padding) or None.
            record_window_queries: as in :meth:`cache`.
        Returns:
            the caches (aligned with ``methods``) and the last prompt position's logits ``[batch, vocab]``.
        """
        if not methods:
            raise ValueError("prefill needs at least one method")
        chunks = [c.chunk_size if c is not None else None for c in (m.resolve() for m in methods)]
        if any(chunks):
            if len(methods) > 1:
                raise ValueError(
                    "chunked prefill (chunk_size=) cannot share one prefill between methods: each chunk attends to "
                    "the cache its method compressed. Call session.prefill once per method"
                )
            return self._prefill_chunked(input_ids, attention_mask, methods[0], chunks[0], record_window_queries)
        caches = [self.cache(m, record_window_queries=record_window_queries) for m in methods]
        return caches, self._fill(input_ids, attention_mask, caches)

    def _fill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, caches: list[CompressedCache]
              ) -> torch.Tensor:
        """One exact prefill of ``input_ids`` into every (empty) cache of ``caches``, each compressed by its own
        compressor; returns the last position's logits ``[batch, vocab]``."""
        self._followers[caches[0]] = caches[1:]
        try:
            with torch.no_grad():
                logits = self.model(
                    input_ids, attention_mask=attention_mask, **cache_kwargs(caches[0]), logits_to_keep=1
                ).logits[:, -1]
        finally:
            del self._followers[caches[0]]
        for i, layer in enumerate(caches[0].layers):  # layers lavakv does not compress (e.g. sliding past window)
            if not (isinstance(layer, CompressedLayer) and layer.compressible):
                for follower in caches[1:]:
                    follower.copy_layer_from(caches[0], i)
        return logits

    def _prefill_chunked(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, method: Resolvable,
                         chunk: int, record_window_queries: bool) -> tuple[list[CompressedCache], torch.Tensor]:
        """Prefill ``input_ids [batch, tokens]`` in chunks of ``chunk`` tokens into one cache of ``method``: the first
        chunk is an exact prefill compressed as usual; every later chunk attends to the compressed cache plus
        itself, then every layer is compressed back to its budget (``Compressor.after_forward``)."""
        cache = self.cache(method, record_window_queries=record_window_queries)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.dim() == 2 and not bool((attention_mask != 0).any(dim=-1).all()):
            raise ValueError(EMPTY_ROW)
        with torch.no_grad():
            for start in range(0, input_ids.shape[1], chunk):
                end = min(start + chunk, input_ids.shape[1])
                logits = self.model(input_ids[:, start:end], attention_mask=attention_mask[:, :end],
                                    **cache_kwargs(cache), logits_to_keep=1).logits[:, -1]
        return [cache], logits

    # -- compressed contexts: compress once, continue many times ---------------------------------------------------
    def fork(self, cache: CompressedCache) -> CompressedCache:
        """A new cache holding what ``cache`` holds, sharing its stored K/V (copy on append), with its own compressor
        state: continue each fork independently (e.g. one question each)."""
        compressor = self.compressor(cache)
        if compressor.real_tokens is None:
            raise ValueError("this cache holds nothing yet: prefill it before forking")
        other = cache.fork(self)
        self._compressors[other] = compressor.fork(other)
        return other

    def compress_context(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                         tokenizer=None, question_ids: torch.Tensor | None = None,
                         method: Resolvable | None = None) -> CompressedContext:
        """Prefill ``input_ids [batch, tokens]`` alone (no question yet) and compress it with ``method`` (default: the
        session's; ``full``: kept whole).

        ``question_ids [batch, q]`` (optional): compress the context FOR this question, as a query-aware method
        does with a question at the end of its prompt, but keep only the context: the context is prefilled
        uncompressed, the question is run on a throw-away fork, and its last ``window`` queries (each seeing the
        whole context) score the context's entries. Later questions then find what this one needed. Only for
        scorers that score by window attention (snapkv, lava, tova, cake); ``attention_mask`` must then be None or
        all ones.

        Returns a :class:`~lavakv.runtime.context.CompressedContext`: fork it for each question (``ctx.fork()``, then
        ``session.extend(fork, question_ids)`` and decode), save it with ``ctx.save(path)``. ``tokenizer`` (optional)
        is fingerprinted so a saved context refuses another tokenizer. Several methods: :meth:`compress_contexts`.
        """
        method = self.method if method is None else method
        return self.compress_contexts(input_ids, [method], attention_mask, tokenizer=tokenizer,
                                      question_ids=question_ids)[0]

    def compress_contexts(self, input_ids: torch.Tensor, methods: list[Resolvable],
                          attention_mask: torch.Tensor | None = None, *, tokenizer=None,
                          question_ids: torch.Tensor | list[torch.Tensor | None] | None = None
                          ) -> list[CompressedContext]:
        """One context compressed by each of ``methods`` from ONE prefill: ``contexts[i]`` equals
        ``compress_context(input_ids, attention_mask, tokenizer=tokenizer, question_ids=q_i, method=methods[i])``.

        ``question_ids``: None (every context compressed alone), one ``[batch, q]`` tensor (every method compressed
        for that question), or a list aligned with ``methods`` whose None entries compress that method's context
        alone. The context is computed once: methods that compress it alone are filled as one
        :meth:`prefill`, and methods scored by a later pass (a question, or a reconstruction scorer's repeat of the
        context) keep it uncompressed until that pass, which runs once per distinct question (and once for every
        reconstruction scorer) on a throw-away fork. Only chunked methods (``chunk_size``) are prefilled alone.
        """
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"compress_context needs input_ids [batch, tokens] with tokens >= 1, got {shape}")
        if not methods:
            raise ValueError("compress_contexts needs at least one method")
        questions = list(question_ids) if isinstance(question_ids, (list, tuple)) else [question_ids] * len(methods)
        if len(questions) != len(methods):
            raise ValueError(f"question_ids has {len(questions)} entries for {len(methods)} methods: give one per "
                             "method (None compresses that method's context alone)")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        caches: list[CompressedCache | None] = [None] * len(methods)
        shared: list[int] = []
        chunked: list[int] = []
        passes: dict[object, tuple[torch.Tensor, torch.Tensor, list[int]]] = {}  # pass -> (follow, its mask, users)
        for i, (method, question) in enumerate(zip(methods, questions, strict=True)):
            components = method.resolve()
            if question is not None:
                self._check_question(input_ids, attention_mask, question, components)
            if components is not None and components.scorer.reconstruction:
                if tokenizer is None:
                    raise ValueError(f"scorer {components.scorer.name!r} needs the tokenizer for its reconstruction "
                                     "prompt: session.compress_context(ids, tokenizer=tokenizer)")
                if "reconstruction" not in passes:
                    ask = tokenizer(RECONSTRUCTION_PROMPT, add_special_tokens=False)["input_ids"]
                    ask = torch.tensor([ask], dtype=input_ids.dtype, device=input_ids.device).expand(
                        input_ids.shape[0], -1)
                    real = (mask != 0).to(ask.dtype)  # a float / bool mask, or one of 0s and 2s, counts real tokens
                    follow, follow_mask = torch.cat([ask, input_ids], dim=1), torch.cat([torch.ones_like(ask), real], 1)
                    # a left-padded row repeats its real tokens right after the prompt, its padding moved to the end:
                    # padding between them would shift the repeat's positions against the context's
                    order = torch.sort((follow_mask == 0).to(torch.int8), dim=1, stable=True).indices
                    passes["reconstruction"] = (follow.gather(1, order), follow_mask.gather(1, order), [])
                passes["reconstruction"][2].append(i)
            elif question is not None and components is not None:
                passes.setdefault(id(question), (question, torch.ones_like(question), []))[2].append(i)
            elif components is not None and components.chunk_size is not None:
                chunked.append(i)
            else:
                shared.append(i)
        deferred = [i for _, _, users in passes.values() for i in users]
        together = shared + deferred
        if together:
            for i in together:
                caches[i] = self.cache(methods[i])
            for i in deferred:
                self.compressor(caches[i]).deferred = True
            self._fill(input_ids, attention_mask, [caches[i] for i in together])
        for i in chunked:
            (caches[i],), _ = self.prefill(input_ids, attention_mask, [methods[i]])
        for key, (follow, follow_mask, users) in passes.items():
            size = None if key == "reconstruction" else max(self.compressor(caches[i]).window for i in users)
            queries = self._follow_queries(caches[users[0]], follow, torch.cat([mask, follow_mask], dim=1), size)
            if key == "reconstruction" and not bool(follow_mask.bool().all()):
                # the padding at the end of a padded row's repeat is not a query of the row alone. The reconstruction
                # score is a max over queries, so a copy of the row's last real query in its place leaves every row's
                # scores exactly those it gets alone
                last = (follow_mask.sum(dim=1) - 1).view(-1, 1, 1, 1)  # [batch, 1, 1, 1]
                pad = (follow_mask == 0)[:, None, :, None]  # [batch, 1, f, 1]
                queries = {layer: torch.where(pad, q.gather(2, last.expand(-1, q.shape[1], 1, q.shape[3])), q)
                           for layer, q in queries.items()}
            for i in users:
                compressor = self.compressor(caches[i])
                if size is not None:
                    compressor.compress_with({layer: q[:, :, q.shape[2] - min(compressor.window, q.shape[2]):]
                                              for layer, q in queries.items()})
                else:
                    compressor.compress_with(queries)
        model, tokens = model_fingerprint(self.model), tokenizer_fingerprint(tokenizer)
        return [CompressedContext(self, cache, int(self.compressor(cache).real_tokens.max()),
                                  json.loads(json.dumps(method.describe())), model, tokens)
                for method, cache in zip(methods, caches, strict=True)]

    @staticmethod
    def _check_question(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, question_ids: torch.Tensor,
                        components: Components | None) -> None:
        """Refuse a ``question_ids`` that :meth:`compress_context` cannot honour exactly."""
        if not isinstance(question_ids, torch.Tensor) or question_ids.dim() != 2 or question_ids.shape[1] == 0 or \
                question_ids.shape[0] != input_ids.shape[0]:
            shape = tuple(question_ids.shape) if isinstance(question_ids, torch.Tensor) else type(question_ids).__name__
            raise ValueError(f"question_ids must be [batch, tokens] with the context's batch ({input_ids.shape[0]}) "
                             f"and tokens >= 1, got {shape}")
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("compress_context(question_ids=...) takes unpadded contexts only (attention_mask all "
                             "ones): compress each context of a padded batch on its own")
        if components is None:
            return
        if not components.scorer.window_attention:
            raise ValueError(
                f"scorer {components.scorer.name!r} does not score by the attention of a question's queries: "
                "question_ids needs snapkv, lava, tova or cake; compress without it (query-agnostic)")
        if components.chunk_size is not None:
            raise ValueError("compress_context(question_ids=...) prefills the context whole: drop chunk_size, or "
                             "compress without the question")

    def _follow_queries(self, cache: CompressedCache, follow: torch.Tensor, mask: torch.Tensor, size: int | None
                        ) -> dict[int, torch.Tensor]:
        """Run ``follow [batch, f]`` after the uncompressed context held by ``cache`` (deferred: it evicts nothing) on a
        throw-away fork (``mask [batch, held + f]``); per compressed layer, the last ``size`` (None: all) queries
        of that pass ``[batch, q_heads, min(size, f), head_dim]``."""
        fork = self.fork(cache)
        heads = self.model.config.get_text_config(decoder=True).num_attention_heads
        layers = self.compressor(cache).layers
        for layer_idx in layers:
            layer = fork.layers[layer_idx]
            layer.track_queries(layer.dense.keys.new_empty(layer.batch, heads, 0, layer.dense.keys.shape[-1]),
                                follow.shape[1] if size is None else min(size, follow.shape[1]))
        self.extend(fork, follow, mask)
        return {i: fork.layers[i].recent_queries() for i in layers}

    def stack(self, caches: list[CompressedCache]) -> CompressedCache:
        """One cache holding ``caches`` as consecutive rows, to continue them in one batch (e.g.
        :func:`lavakv.generation.decode_batch` over the caches of several methods, or the forks of one context).

        Every cache must be this session's, filled without padding, and at one logical length. The stacked cache
        holds a copy of what each holds, every layer as one compacted prefix (ragged unless all heads hold the
        same count), and compresses nothing more: each row continues as its cache would, up to float rounding of
        the batched computation. Caches whose method has ``decode_budget`` are refused (their eviction would stop).
        """
        if not caches:
            raise ValueError("stack needs at least one cache")
        for cache in caches:
            refusal = self.stack_refusal(cache)
            if refusal is not None:
                raise ValueError(f"stack: {refusal}")
        for index in range(len(caches[0].layers)):  # layer by layer: a model may spread its layers over devices
            kinds = {(c.layers[index].dtype, c.layers[index].device) for c in caches if c.layers[index].is_initialized}
            if len(kinds) > 1:
                found = ", ".join(sorted(f"{dtype} on {device}" for dtype, device in kinds))
                raise ValueError(f"stack: the caches hold layer {index}'s K/V in different dtypes or devices "
                                 f"({found}); stack caches filled by the model in one dtype and placement")
        length = caches[0].get_seq_length()
        if any(cache.get_seq_length() != length for cache in caches):
            raise ValueError(f"stack: caches hold different lengths ({sorted({c.get_seq_length() for c in caches})} "
                             "tokens); stack caches of one length only")
        stacked = CompressedCache(self.model.config, self)
        for index in range(len(stacked.layers)):
            stacked.layers[index] = CompressedLayer.stacked(stacked, [
                (cache.layers[index], self.compressor(cache).valid) for cache in caches])
        compressor = Compressor(None, stacked, rope=self._rope)
        self._compressors[stacked] = compressor
        compressor.start_prompt(torch.ones(sum(c.layers[0].batch for c in caches), length, dtype=torch.bool,
                                           device=caches[0].layers[0].device))
        compressor.prefilling = False
        return stacked

    def stack_refusal(self, cache: CompressedCache) -> str | None:
        """Why :meth:`stack` cannot take ``cache`` (a sentence), or None when it can."""
        compressor = self.compressor(cache)
        if compressor.real_tokens is None:
            return "a cache holds nothing yet; prefill every cache first"
        if compressor.components is not None and compressor.components.decode_budget is not None:
            return (f"{compressor.components.name!r} evicts while decoding (decode_budget), which a stacked cache does "
                    "not do; decode that cache on its own")
        if not bool(compressor.valid.all()):
            return "a cache holds a left-padded batch; stack unpadded caches only"
        for index, layer in enumerate(cache.layers):
            if not (isinstance(layer, CompressedLayer) and layer.compressible):
                return (f"layer {index} is not a compressed attention layer (a sliding layer past its window, or "
                        "another layer kind); decode such caches one by one")
        return None

    def load_context(self, path, *, tokenizer=None) -> CompressedContext:
        """A context saved by ``ctx.save(path)``, for this session's model and method (and ``tokenizer`` when
        given); anything else is refused with the difference named."""
        return load_context(self, path, tokenizer)

    @contextlib.contextmanager
    def extending(self, cache: CompressedCache) -> Iterator[None]:
        """Inside this block, multi-token forward calls on ``cache`` append tokens without compressing them.

        For feeding a question (or any continuation) through an already compressed context: query-agnostic use.
        Outside it, a second multi-token call on a filled cache is refused (it would not be compressed).
        """
        self.compressor(cache)
        self._extending.add(cache)
        try:
            yield
        finally:
            self._extending.discard(cache)

    def extend(self, cache: CompressedCache, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Feed ``input_ids [batch, new]`` through the compressed ``cache`` without compressing them.

        ``attention_mask`` covers the whole sequence so far plus the new tokens (``[batch, held + new]``); default
        all ones. Returns the model output (logits of the last position only).
        """
        if attention_mask is None:
            valid = self.compressor(cache).valid
            if valid is not None and not bool(valid.all()):
                raise ValueError(
                    "this cache holds a left-padded batch: pass attention_mask ([batch, held + new], 0 on the padding) "
                    "so the new tokens do not attend to the padding"
                )
            attention_mask = torch.ones(
                input_ids.shape[0], cache.get_seq_length() + input_ids.shape[1], dtype=torch.long,
                device=input_ids.device,
            )
        expected = (input_ids.shape[0], cache.get_seq_length() + input_ids.shape[1])
        if tuple(attention_mask.shape) != expected:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; extend needs [batch, held + new] = "
                f"{list(expected)}: the mask of what the cache holds (0 on its padding) followed by the new tokens'"
            )
        with self.extending(cache), torch.no_grad():
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **cache_kwargs(cache),
                              logits_to_keep=1)

    # -- what a cache holds -------------------------------------------------------------------------------------------
    def stats(self, cache: CompressedCache | None = None) -> SessionStats:
        """Statistics of ``cache`` (default: the last cache made by :meth:`cache`)."""
        if cache is None:
            cache = self._last
            if cache is None:
                raise RuntimeError("no cache yet: call session.cache() and run the model first")
        state = self.compressor(cache)
        layers = state.layers if state.real_tokens is not None else cache.compressible_layers()
        kept = []
        for i in layers:
            layer = cache.layers[i]
            if layer.kept_prompt is not None:
                kept.append(layer.kept_prompt.clone())
            elif state.real_tokens is not None:
                kept.append(state.real_tokens[:, None].expand(-1, layer.kv_heads).clone())
            else:
                kept.append(torch.zeros(0, 0, dtype=torch.long))
        budgets = [state.budgets[i] for i in layers] if all(i in state.budgets for i in layers) and layers else None
        statistics = [state.statistics[i] for i in layers] if state.statistics and all(
            i in state.statistics for i in layers) else None
        return SessionStats(
            kept_tokens=kept,
            resident_kv_bytes=cache.resident_kv_bytes(),
            slack_kv_bytes=cache.slack_kv_bytes(),
            uncompressed_kv_bytes=cache.uncompressed_kv_bytes(),
            prompt_tokens=state.real_tokens,
            layer_budgets=budgets,
            layer_statistics=statistics,
            layers=list(layers),
            compression_seconds=state.seconds,
            shared_prefill_seconds=state.wall_seconds,
            decode_evictions=state.decode_evictions,
            decode_eviction_seconds=state.decode_seconds,
            held_per_head=state.held_per_head() if state.real_tokens is not None and state.layers else None,
        )

    def window_queries(self, cache: CompressedCache, layer_idx: int) -> tuple[torch.Tensor, float]:
        """The last ``window`` prefill queries of a compressed layer, ``[batch, q_heads, window, head_dim]``
        (post-RoPE, as the layer computed them), and the layer's softmax scale."""
        compressor = self.compressor(cache)
        queries = compressor.window_queries.get(layer_idx)
        if queries is None:
            raise ValueError(
                f"no window queries recorded for layer {layer_idx}: make the cache with record_window_queries=True "
                "(session.cache / session.prefill) and a compressing method"
            )
        return queries, compressor.scaling[layer_idx]

    def kept_entries(self, cache: CompressedCache, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prompt entries a layer holds: keys and values ``[entries, head_dim]`` in (batch, head, position)
        order, and ``[batch, kv_heads]`` entries per head. Within a head, entries keep their prompt order. A layer
        that evicted nothing holds every prompt position, left padding included; decoded tokens are never included."""
        layer = cache.layers[layer_idx]
        if not isinstance(layer, CompressedLayer) or not layer.compressible:
            raise ValueError(f"layer {layer_idx} is not a compressed layer of this cache")
        keys, values = layer.prompt_entries()
        if layer.kept_prompt is not None:
            lengths = layer.kept_prompt
        else:
            lengths = torch.full((layer.batch, layer.kv_heads), keys.shape[0] // (layer.batch * layer.kv_heads))
        return keys, values, lengths

    # -- hooks ----------------------------------------------------------------------------------------------------
    def _check_inputs(self, module, args, kwargs):
        """Model forward pre-hook: refuse inputs lavakv would handle silently wrong, before any work."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        tensor = ids if ids is not None else embeds
        if ids is not None and ids.dim() != 2:
            raise ValueError(f"input_ids has shape {list(ids.shape)}: it must be [batch, tokens] (one prompt: "
                             "ids[None], or tokenizer(text, return_tensors='pt').input_ids)")
        if ids is None and embeds is not None and embeds.dim() != 3:
            raise ValueError(f"inputs_embeds has shape {list(embeds.shape)}: it must be [batch, tokens, hidden]")
        if tensor is not None and tensor.shape[0] == 0:
            raise ValueError("empty batch: input_ids has 0 rows; give at least one prompt")
        weights = module.get_input_embeddings().weight.device
        placed = hasattr(module, "_hf_hook")  # accelerate (device_map, offloading) moves the inputs itself
        for what, given in (("input_ids" if ids is not None else "inputs_embeds", tensor),
                            ("attention_mask", kwargs.get("attention_mask"))):
            if isinstance(given, torch.Tensor) and (given.device.type == "meta" or (
                    not placed and weights.type != "meta" and given.device != weights)):
                raise ValueError(f"{what} is on {given.device} and the model on {weights}: move the inputs to the "
                                 "model's device (ids.to(model.device))")
        if tensor is not None and tensor.shape[1] == 0:
            raise ValueError("empty prompt: input_ids has 0 tokens; give at least one token to generate from")
        cache = cache_from(kwargs)
        if cache is None and any(isinstance(a, CompressedCache) for a in args):
            raise ValueError("a lavakv cache was passed as a positional argument: pass it as past_key_values=cache")
        if not isinstance(cache, CompressedCache):
            return None
        compressor = self.compressor(cache)
        mask = kwargs.get("attention_mask")
        if kwargs.get("output_attentions"):
            raise ValueError("lavakv does not return attention weights (output_attentions=True); drop that option")
        new = tensor.shape[1] if tensor is not None and tensor.dim() >= 2 else 1
        held = cache.get_seq_length()
        components = compressor.components
        chunk = components.chunk_size if components is not None else None
        extending = cache in self._extending
        # a shared prefill fills its followers too: every cache filled by this call is checked, not just the first
        filled = [compressor, *(self.compressor(c) for c in self._followers.get(cache, ()))] if held == 0 else []
        for each in filled:
            if each.components is not None and each.components.scorer.reconstruction and not each.deferred:
                raise ValueError(
                    f"scorer {each.components.scorer.name!r} scores a context from a reconstruction pass: compress "
                    "the context with session.compress_context(ids, tokenizer=...) or lavakv.generate(..., "
                    "questions=[...]), then ask questions from its forks"
                )
        compressing = any(each.components is not None for each in filled) or components is not None
        if held == 0 and chunk is not None and new == 1 and not extending:
            raise ValueError(
                f"this method prefills in chunks (chunk_size={chunk}) and its first chunk is a single token: every "
                "later single token counts as generated, so the prompt would never be compressed. Use "
                "model.generate(..., prefill_chunk_size=C) with C >= 2 (a one-token prompt has nothing to compress: "
                "use the method without chunk_size)"
            )
        if held == 0 and chunk is not None and new > chunk:
            raise ValueError(
                f"this method prefills in chunks of at most chunk_size={chunk} tokens and got a {new}-token prompt in "
                f"one call: use session.prefill(ids, mask, [method]) or lavakv.generate, or model.generate(..., "
                f"prefill_chunk_size={chunk})"
            )
        if held > 0 and new > 1 and not extending and (chunk is None or not compressor.prefilling):
            raise RuntimeError(
                f"this lavakv cache already holds {held} tokens and got {new} more in one call. A prompt must be "
                "prefilled in a single call unless the method has chunk_size= (chunked prefill), and a cache serves "
                "one prompt (make a new one with session.cache()). To feed a question through a compressed "
                "context, use session.extend(cache, ids)"
            )
        if held > 0 and chunk is not None and new == 1 and compressor.prefilling and \
                compressor.real_tokens is not None and bool((compressor.real_tokens == 0).any()):
            raise ValueError(EMPTY_ROW)  # the first token after a chunked prefill: every row must have had a real one
        if held > 0 and chunk is not None and new > chunk and not extending:
            raise ValueError(f"a prompt chunk of {new} tokens is longer than the method's chunk_size={chunk}")
        if held > 0 and chunk is not None and new > 1 and not extending and compressor.prefilling:
            windows = {layer.sliding_window for layer in cache.layers
                       if isinstance(layer, CompressedLayer) and layer.sliding_window is not None
                       and layer.sliding is None and held + new > layer.sliding_window}
            if windows:
                window = min(windows)
                raise ValueError(
                    f"chunked prefill on a model with sliding-window layers of {window} tokens: the first chunk fit "
                    "that window, so those layers were compressed as full-attention layers, and this chunk takes "
                    f"them past it. Use chunks longer than the sliding window (chunk_size and prefill_chunk_size > "
                    f"{window}; longer sliding layers are left to transformers), or one chunk for the whole prompt"
                )
        # on the prompt (or a chunk, or an extension) only: a decode step's mask is the checked one plus ones, and a
        # per-token check would synchronise the device at every generated token
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and (held == 0 or new > 1) and \
                not bool(((mask == 0) | (mask == 1)).all()):
            found = sorted({float(v) for v in mask.unique()[:8].tolist()} - {0.0, 1.0})
            raise ValueError(f"attention_mask holds values other than 0 and 1 ({found}): lavakv counts real tokens "
                             "from it; give 1 on real tokens and 0 on padding")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and tensor is not None and tensor.dim() >= 2:
            expected = (tensor.shape[0], held + tensor.shape[1])
            if tuple(mask.shape) != expected:
                raise ValueError(
                    f"attention_mask has shape {tuple(mask.shape)} for {tensor.shape[1]} new tokens on a cache holding "
                    f"{held}: it must be [batch, held + new] = {list(expected)} (1 on real tokens, 0 on left padding)"
                )
            # (a chunked prefill's first chunk may be all padding for a row: checked when its prefill ends)
            if held == 0 and chunk is None and not bool((mask != 0).any(dim=-1).all()):
                raise ValueError(EMPTY_ROW)
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and compressing and (
                held == 0 or (chunk is not None and new > 1 and not extending)):
            real = mask != 0
            # left padding only: once a row has a real token, every later one is real
            if bool((real.cummax(dim=-1).values & ~real).any()):
                raise ValueError(
                    "the attention mask has padding after real tokens (right padding): the observation window would "
                    "be padding. Pad on the left (tokenizer.padding_side = 'left')"
                )
        if held > 0 and compressor.real_tokens is not None:
            if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[1] == held + new:
                new_valid = mask[:, held:] != 0
            else:
                new_valid = torch.ones(tensor.shape[0] if tensor is not None else 1, new, dtype=torch.bool)
            compressor.begin_forward(new_valid, extending=extending)
        self._forwarding.update((cache, *self._followers.get(cache, ())))
        return None

    def _after_attention(self, module, args, kwargs, output):
        """Attention-module forward hook: compress the layer whose exact prefill just ran, in every cache filled."""
        cache = cache_from(kwargs)
        if not isinstance(cache, CompressedCache):
            return None
        layer_idx = module.layer_idx
        layer = cache.layers[layer_idx]
        if not isinstance(layer, CompressedLayer):
            return None
        taken = layer.take_prefill()
        if taken is None:
            return None
        observation, keys, values = taken
        shared: dict[int, ScoringInputs] = {}  # per window size: window attention computed once per layer
        for target in (cache, *self._followers.get(cache, [])):
            if target is not cache:
                target.layers[layer_idx].update(keys, values)
                target.layers[layer_idx].end_prefill()
            compressor = self._compressors[target]
            w = compressor.window
            inputs = shared.setdefault(
                w, ScoringInputs(observation.queries, keys, values, observation.valid, observation.scaling, w,
                                 self._rope.get(layer_idx))
            )
            compressor.prefill_layer(layer_idx, inputs)
        return None

    def _after_forward(self, module, args, kwargs, output):
        """Model forward hook: decode-time eviction once a cache would pass its ``decode_budget``; a cache whose
        method compresses but that compressed no layer says so, once."""
        cache = cache_from(kwargs)
        if not isinstance(cache, CompressedCache):
            return None
        for target in (cache, *self._followers.get(cache, [])):
            self._forwarding.discard(target)
        if output is None:  # the forward raised (this hook runs then too, to end the forward above)
            return None
        for target in (cache, *self._followers.get(cache, [])):
            compressor = self._compressors.get(target)
            if compressor is None or compressor.components is None:
                continue
            compressor.after_forward()
            if target in self._warned:
                continue
            if compressor.real_tokens is None and target.get_seq_length() > 0:
                self._warned.add(target)
                logger.warning(
                    "lavakv compressed nothing: every attention layer of this model is a sliding-window layer whose "
                    "window is shorter than the %d-token prompt, and lavakv only compresses layers that see the "
                    "whole prompt", target.get_seq_length(),
                )
        return None


def _describe(session: Session) -> str:
    components: Components | None = session._components
    return "method " + (components.name if components is not None else "full")


def _check_not_compiled(model: torch.nn.Module) -> None:
    if hasattr(model, "_orig_mod") or getattr(model, "_compiled_call_impl", None) is not None:
        raise TypeError(
            "lavakv cannot attach to a torch.compile'd model yet (compiled graphs bypass its cache and attention and "
            "decode silently wrong); attach to the uncompiled model"
        )
