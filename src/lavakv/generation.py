"""Greedy generation with a compressed KV cache, query-aware or query-agnostic, with memory and timing measured.

* Query-aware (default): context and question form one prompt (through the tokenizer's chat template when it has
  one and ``chat=True``); that whole prompt is prefilled and compressed, so the observation window holds the
  question.
* Query-agnostic: the context alone is prefilled and compressed, then the question (and the chat template's
  assistant header and any answer prefix) is fed through the same compressed cache, as when one compressed
  context serves questions not known in advance.

Both then decode greedily from the filled cache (:func:`decode_from_cache`: argmax, one token per step, until an
end-of-sequence id of :func:`stop_ids` or ``max_new_tokens``). ``method=None`` or ``"full"`` runs through a
``lavakv.method("full")`` session, so statistics are measured the same way.

The pieces are public and shared with the evaluation harness (:mod:`lavakv.eval.runner`), so both encode prompts,
stop and decode the same way: :func:`encode_prompt` (the one prompt encoder; :func:`prompt_ids` is
:func:`generate`'s layout on top of it), :func:`stop_ids`, :func:`decode_from_cache` after
:meth:`Session.prefill <lavakv.Session.prefill>` (and :meth:`Session.extend <lavakv.Session.extend>` for a question
fed through the compressed context), :func:`decode_text`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from lavakv.cache import CompressedCache
from lavakv.compat import cache_kwargs
from lavakv.methods import Method
from lavakv.methods import method as make_method
from lavakv.timing import sync


@dataclass
class GenerationResult:
    """What :func:`generate` produced and measured.

    Attributes:
        text: the generated answer (special tokens removed, answer prefix not included), stripped.
        prompt_tokens: tokens given to the model before the first generated token (context + question).
        compressed_tokens: tokens of the compressed prefill (the whole prompt query-aware, the context agnostic).
        kept_entries: prompt entries kept in the compressed prefill, summed over layers and KV heads.
        resident_kv_bytes: K/V bytes the cache holds when decoding starts, measured from its tensors.
        uncompressed_kv_bytes: what the same cache would hold without compression at that point.
        prefill_seconds: time to the first generated token (prefill, compression, and the question feed when
            query-agnostic).
        decode_seconds: time for the tokens after the first.
        new_tokens: tokens generated, the first one and an end-of-sequence token included.
        first_token_logits: ``[vocab]`` float32 logits of the first generated token. Equal to the uncompressed
            model's for a query-aware method with one exact prefill (its attention never depends on the method);
            not with ``chunk_size`` (later chunks attend to a compressed cache) nor for a context compressed before
            the question (query-agnostic, ``kvzip``), whose question runs through the compressed cache.
        decode_evictions: decode-time evictions while generating (methods with ``decode_budget``).
        end_resident_kv_bytes: K/V bytes the cache holds when decoding ended (growth slack excluded).
    """

    text: str
    prompt_tokens: int
    compressed_tokens: int
    kept_entries: int
    resident_kv_bytes: int
    uncompressed_kv_bytes: int
    prefill_seconds: float
    decode_seconds: float
    new_tokens: int
    first_token_logits: torch.Tensor | None = field(default=None, repr=False)
    decode_evictions: int = 0
    end_resident_kv_bytes: int | None = None

    @property
    def decode_ms_per_token(self) -> float | None:
        """Mean decode step time in milliseconds (tokens after the first), or None when only one was made."""
        return 1000.0 * self.decode_seconds / (self.new_tokens - 1) if self.new_tokens > 1 else None


def resolve_method(method: Method | str | None) -> Method:
    """``None`` / ``"full"`` -> the uncompressed method; a :class:`Method` is returned unchanged."""
    if method is None or method == "full":
        return make_method("full")
    if isinstance(method, Method):
        return method
    raise ValueError(
        f"method {method!r} needs a budget: pass lavakv.method({method!r}, budget=...) or "
        f"lavakv.method({method!r}, compression_ratio=...), or None / 'full' for no compression"
    )


class PromptIds(NamedTuple):
    """A prompt's token ids, split where the compressed context ends (unpacks as ``whole, context, rest``).

    Attributes:
        whole: the prompt tokenized in one piece (query-aware runs compress all of it).
        context: the ids up to the end of the context, tokenized alone (query-agnostic runs compress these).
        rest: the ids after the context, tokenized alone (fed through the compressed cache when query-agnostic).
            ``context + rest`` may differ from ``whole`` at the seam by a merge.
    """

    whole: list[int]
    context: list[int]
    rest: list[int]


def encode_prompt(tokenizer, context: str, query: str = "", *, answer_prefix: str = "", chat: bool = True
                  ) -> PromptIds:
    """Token ids of the prompt ``context + query`` followed by ``answer_prefix``: the one prompt encoder.

    The user message is exactly ``context + query`` (callers write every separator themselves: the evaluation
    tasks' official templates do, :func:`prompt_ids` joins with a blank line). With ``chat`` and a tokenizer that
    has a chat template, the message is one user turn and ``answer_prefix`` follows the assistant header, its
    leading whitespace dropped; otherwise ``answer_prefix`` follows the message directly.

    Raises:
        ValueError: the chat template changed the message text, so the context's end cannot be found.
    """
    content = context + query
    if chat and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        at = rendered.find(content)
        if at < 0:
            raise ValueError("the tokenizer's chat template rewrote the prompt text; pass chat=False (--no-chat)")
        rendered += answer_prefix.lstrip()
        split = at + len(context)
        special = False  # the template writes BOS and role markers itself
    else:
        rendered = content + answer_prefix
        split = len(context)
        special = True

    def encode(text: str, add_special: bool) -> list[int]:
        return list(tokenizer(text, add_special_tokens=add_special)["input_ids"]) if text else []

    return PromptIds(encode(rendered, special), encode(rendered[:split], special), encode(rendered[split:], False))


def prompt_ids(tokenizer, context: str, question: str | None, *, answer_prefix: str = "", chat: bool = True
               ) -> PromptIds:
    """The prompt of :func:`generate`: context and question joined by a blank line, through :func:`encode_prompt`.

    Without a chat template a blank line also precedes a non-empty ``answer_prefix``. With one, context and
    question are stripped of surrounding whitespace (templates often trim them).
    """
    if chat and getattr(tokenizer, "chat_template", None):
        context, question = context.strip(), question.strip() if question is not None else None
    query = "" if question is None else f"\n\n{question}"
    prefix = f"\n\n{answer_prefix}" if answer_prefix else ""
    return encode_prompt(tokenizer, context, query, answer_prefix=prefix, chat=chat)


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of ``text`` without special tokens."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def stop_ids(model, tokenizer) -> set[int]:
    """End-of-sequence ids: the model's generation config, else the tokenizer's EOS."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


@dataclass
class Decoded:
    """Tokens generated from one cache (the stop token included when one was produced)."""

    tokens: list[int]
    stopped: bool


def decode_from_cache(model, cache, first_logits: torch.Tensor, *, max_new_tokens: int, stops: set[int]
                      ) -> Decoded:
    """Greedy tokens from an already filled ``cache``, given the logits ``[1, vocab]`` of its last fed position.

    The cache may come from :meth:`~lavakv.Session.prefill` (one exact prefill for several methods), with a
    question fed after it through :meth:`~lavakv.Session.extend` (query-agnostic). Each step takes the argmax
    token and feeds it with the cache, at position ``cache.get_seq_length()`` (the cache's logical length: evicted
    entries count), batch of one, no padding. Pure argmax: no logits processor of the model's generation config
    applies.

    Args:
        max_new_tokens: at most this many tokens are produced (>= 1).
        stops: end-of-sequence ids (:func:`stop_ids`, plus any others); decoding ends after producing one.
    """
    if first_logits.dim() != 2 or first_logits.shape[0] != 1:
        raise ValueError(f"decode_from_cache decodes one sequence: logits [1, vocab], got {tuple(first_logits.shape)}")
    return decode_batch(model, cache, first_logits, max_new_tokens=max_new_tokens, stops=stops)[0]


def decode_batch(model, cache, first_logits: torch.Tensor, *, max_new_tokens: int, stops: set[int]
                 ) -> list[Decoded]:
    """Greedy tokens for every row of a filled, unpadded ``cache`` (e.g. :meth:`~lavakv.Session.stack` of several
    caches), given the logits ``[rows, vocab]`` of its last fed position; one :class:`Decoded` per row.

    As :func:`decode_from_cache` row by row: a row ends after a stop id or ``max_new_tokens`` tokens; the batch
    runs until every row ended (ended rows keep being fed, their tokens are not kept).
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if first_logits.dim() != 2 or first_logits.shape[0] < 1:
        raise ValueError(f"decode_batch needs logits [rows, vocab], got {tuple(first_logits.shape)}")
    if isinstance(cache, CompressedCache):  # a lavakv cache knows its rows and their padding: refuse a mismatch
        valid = cache.owner.compressor(cache).valid
        if valid is not None and (valid.shape[0] != first_logits.shape[0] or not bool(valid.all())):
            raise ValueError(
                f"decode_batch feeds every row at one position without a padding mask: it needs an unpadded cache "
                f"with one row per logits row (cache: {valid.shape[0]} rows, padded: {not bool(valid.all())}; "
                f"logits: {first_logits.shape[0]} rows); decode a padded batch with model.generate"
            )
    device = first_logits.device
    rows = first_logits.shape[0]
    logits = first_logits
    tokens: list[list[int]] = [[] for _ in range(rows)]
    stopped = [False] * rows
    with torch.no_grad():
        while True:
            step = logits.argmax(-1)  # [rows]
            for row, token in enumerate(step.tolist()):
                if not stopped[row] and len(tokens[row]) < max_new_tokens:
                    tokens[row].append(token)
                    stopped[row] = token in stops
            if all(s or len(t) >= max_new_tokens for s, t in zip(stopped, tokens, strict=True)):
                return [Decoded(t, s) for t, s in zip(tokens, stopped, strict=True)]
            past = cache.get_seq_length()
            out = model(step[:, None], attention_mask=torch.ones(rows, past + 1, dtype=torch.long, device=device),
                        position_ids=torch.full((rows, 1), past, device=device), **cache_kwargs(cache),
                        logits_to_keep=1)
            logits = out.logits[:, -1]


def decode_text(tokenizer, tokens: list[int]) -> str:
    """Text of generated ``tokens`` with special tokens dropped, outer whitespace stripped."""
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()


def generate(
    model,
    tokenizer,
    context: str,
    *,
    question: str | None = None,
    method: Method | str | None = None,
    max_new_tokens: int = 64,
    query_agnostic: bool = False,
    chat: bool = True,
    answer_prefix: str = "",
    questions: list[str] | None = None,
) -> GenerationResult | list[GenerationResult]:
    """Answer ``question`` about ``context`` greedily with ``method``'s compressed KV cache (batch of one).

    With ``questions`` (a list) instead of ``question``: the context is compressed ONCE, alone (query-agnostic),
    and each question is answered from a fork of that compressed context, exactly as if it were the only one;
    returns one result per question (the context's prefill and compression time is in the first result's
    ``prefill_seconds`` only).

    Args:
        model: a supported Hugging Face causal LM.
        tokenizer: its tokenizer.
        context: the long text to compress; must not be empty.
        question: asked after the context (required when ``query_agnostic``); None continues the context.
        method: a :class:`~lavakv.Method`, or None / ``"full"`` for no compression.
        max_new_tokens: at most this many tokens are generated (>= 1).
        query_agnostic: compress the context before the question is seen.
        chat: wrap context + question as one user turn with the tokenizer's chat template, when it has one.
        answer_prefix: text the answer starts with (appended after the assistant header); not in ``text``.

    Raises:
        ValueError: empty context or question, ``max_new_tokens < 1``, query-agnostic without a question, or a
            method name without a budget; ``questions`` empty, with an empty question, or given with ``question``.
    """
    if questions is not None:
        if question is not None:
            raise ValueError("give question= (one) or questions= (a list answered from one compression), not both")
        return answer_questions(model, tokenizer, context, questions, method=method, max_new_tokens=max_new_tokens,
                                chat=chat, answer_prefix=answer_prefix)
    return generate_many(
        model, tokenizer, context, question=question, methods=[method], max_new_tokens=max_new_tokens,
        query_agnostic=query_agnostic, chat=chat, answer_prefix=answer_prefix,
    )[0]


def _decode_result(session, model, tokenizer, cache, logits: torch.Tensor, stops: set[int], max_new_tokens: int,
                   prompt_tokens: int, compressed_tokens: int, prefill_seconds: float) -> GenerationResult:
    """Decode greedily from a filled ``cache`` given its last logits ``[1, vocab]``; the result with its stats."""
    stats = session.stats(cache)
    start = time.perf_counter()
    decoded = decode_from_cache(model, cache, logits, max_new_tokens=max_new_tokens, stops=stops)
    sync(logits.device)
    decode_seconds = time.perf_counter() - start
    end = session.stats(cache)
    return GenerationResult(
        text=decode_text(tokenizer, decoded.tokens), prompt_tokens=prompt_tokens, compressed_tokens=compressed_tokens,
        kept_entries=stats.kept_entries, resident_kv_bytes=stats.resident_kv_bytes,
        uncompressed_kv_bytes=stats.uncompressed_kv_bytes, prefill_seconds=prefill_seconds,
        decode_seconds=decode_seconds, new_tokens=len(decoded.tokens), first_token_logits=logits[0].cpu(),
        decode_evictions=end.decode_evictions, end_resident_kv_bytes=end.resident_kv_bytes,
    )


def answer_questions(
    model,
    tokenizer,
    context: str,
    questions: list[str],
    *,
    method: Method | str | None = None,
    max_new_tokens: int = 64,
    chat: bool = True,
    answer_prefix: str = "",
) -> list[GenerationResult]:
    """Compress ``context`` once (``Session.compress_context``) and answer every question from a fork of it."""
    if not isinstance(context, str) or not context.strip():
        raise ValueError("context is empty: give the text to answer from (a non-empty string)")
    if isinstance(questions, str) or not isinstance(questions, (list, tuple)) or not questions:
        raise ValueError("questions must be a non-empty list of strings (use question= for a single one)")
    for i, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"question {i} is empty: every question must be a non-empty string")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    m = resolve_method(method)
    prompts = [prompt_ids(tokenizer, context, q, answer_prefix=answer_prefix, chat=chat) for q in questions]
    context_ids = prompts[0].context
    if any(p.context != context_ids for p in prompts):
        raise ValueError("the context's tokens depend on the question under this chat template; pass chat=False")
    device = next(model.parameters()).device
    stops = stop_ids(model, tokenizer)
    results = []
    with torch.no_grad(), m.attach(model) as session:
        start = time.perf_counter()
        ctx = session.compress_context(torch.tensor([context_ids], device=device), tokenizer=tokenizer)
        sync(device)
        context_seconds = time.perf_counter() - start
        for i, p in enumerate(prompts):
            cache = ctx.fork()
            start = time.perf_counter()
            logits = session.extend(cache, torch.tensor([p.rest], device=device)).logits[:, -1].float()
            sync(device)
            prefill_seconds = time.perf_counter() - start + (context_seconds if i == 0 else 0.0)
            results.append(_decode_result(session, model, tokenizer, cache, logits, stops, max_new_tokens,
                                          len(context_ids) + len(p.rest), len(context_ids), prefill_seconds))
            del cache
    return results


def alone(method: Method) -> str | None:
    """Why ``method`` cannot share an exact prefill with other methods: ``"chunked"`` (its later chunks attend to
    what it compressed), ``"reconstruction"`` (kvzip: scored by a pass over the whole context), or None (it can)."""
    components = method.resolve()
    if components is None:
        return None
    if components.scorer.reconstruction:
        return "reconstruction"
    return "chunked" if components.chunk_size is not None else None


def fill_alone(session, method: Method, tokenizer, ids: torch.Tensor, compressed: int
                ) -> tuple[CompressedCache, torch.Tensor]:
    """Fill ``method``'s cache from ``ids [1, n]`` when it cannot share the exact prefill (:func:`alone`), its
    first ``compressed`` tokens compressed; returns the cache holding all of ``ids`` and the last logits ``[1, vocab]``.

    Chunked: prefilled alone (then the tokens after ``compressed`` fed through it). Reconstruction: the compressed
    part (all but the last token when it is the whole prompt: that token is in every window) is compressed by
    :meth:`~lavakv.Session.compress_context`, then the rest is fed through the compressed cache.
    """
    if alone(method) == "chunked":
        (cache,), logits = session.prefill(ids[:, :compressed], torch.ones_like(ids[:, :compressed]), [method])
        start = compressed
    else:
        start = compressed if compressed < ids.shape[1] else compressed - 1
        if start < 1:
            raise ValueError(f"{method.name}: a one-token prompt has no context to reconstruct")
        cache = session.compress_context(ids[:, :start], tokenizer=tokenizer, method=method).cache
    if start < ids.shape[1]:
        logits = session.extend(cache, ids[:, start:]).logits[:, -1]
    return cache, logits


def generate_many(
    model,
    tokenizer,
    context: str,
    *,
    question: str | None = None,
    methods: list[Method | str | None],
    max_new_tokens: int = 64,
    query_agnostic: bool = False,
    chat: bool = True,
    answer_prefix: str = "",
    progress: bool = False,
) -> list[GenerationResult]:
    """:func:`generate` for several methods from ONE exact prefill (``Session.prefill``).

    Prefill attention never depends on the method, so the prompt is run through the model once and each method
    compacts every layer into its own cache; the caches (hence the answers) are identical to separate runs.
    Each result's ``prefill_seconds`` is the shared forward time without the other methods' compression time
    (plus, query-agnostic, its own question feed); decoding is timed per method. A method that cannot share the
    prefill (:func:`alone`: chunked prefill, kvzip's reconstruction) is filled on its own and timed alone.
    ``progress`` shows a progress bar over the methods on stderr.
    """
    if not isinstance(context, str) or not context.strip():
        raise ValueError("context is empty: give the text to answer from (a non-empty string)")
    if question is not None and not question.strip():
        raise ValueError("question is empty: give a question, or question=None to continue the context")
    if query_agnostic and question is None:
        raise ValueError("query_agnostic=True needs a question: the context is compressed before it is asked")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not methods:
        raise ValueError("methods is empty: give at least one method (None for no compression)")
    resolved = [resolve_method(m) for m in methods]
    whole, context_ids, rest_ids = prompt_ids(tokenizer, context, question, answer_prefix=answer_prefix, chat=chat)
    device = next(model.parameters()).device
    ids = torch.tensor([context_ids + rest_ids if query_agnostic else whole], device=device)  # [1, n]
    compressed = ids[:, : len(context_ids)] if query_agnostic else ids  # what the prefill compresses
    stops = stop_ids(model, tokenizer)

    results: list[GenerationResult | None] = [None] * len(resolved)
    shared = [i for i, m in enumerate(resolved) if alone(m) is None]  # one exact prefill serves all of these
    groups = ([shared] if shared else []) + [[i] for i, m in enumerate(resolved) if alone(m) is not None]
    with torch.no_grad(), resolved[0].attach(model) as session:
        for group in tqdm(groups, desc="lavakv prefill", unit="prefill", file=sys.stderr,
                          disable=not progress or len(groups) == 1):
            start = time.perf_counter()
            if group is not shared:
                (i,) = group
                cache, logits = fill_alone(session, resolved[i], tokenizer, ids, compressed.shape[1])
                sync(device)
                results[i] = _decode_result(session, model, tokenizer, cache, logits.float(), stops, max_new_tokens,
                                            int(ids.shape[1]), int(compressed.shape[1]), time.perf_counter() - start)
                continue
            group_methods = [resolved[i] for i in group]
            caches, shared_logits = session.prefill(compressed, torch.ones_like(compressed), group_methods)
            sync(device)
            shared_seconds = time.perf_counter() - start
            shared_stats = [session.stats(c) for c in caches]
            compression = [st.compression_seconds for st in shared_stats]  # each as if prefilled alone
            spent = sum(st.shared_prefill_seconds for st in shared_stats)  # what the shared prefill actually spent
            del shared_stats
            for k in tqdm(range(len(caches)), desc="lavakv decode", unit="method", file=sys.stderr,
                          disable=not progress or len(groups) > 1):
                cache, caches[k] = caches[k], None  # release each cache once used
                start = time.perf_counter()
                if query_agnostic:
                    logits = session.extend(cache, ids[:, compressed.shape[1]:]).logits[:, -1].float()  # [1, vocab]
                else:
                    logits = shared_logits.float()
                sync(device)
                prefill_seconds = shared_seconds - spent + compression[k] + time.perf_counter() - start
                results[group[k]] = _decode_result(session, model, tokenizer, cache, logits, stops, max_new_tokens,
                                                   int(ids.shape[1]), int(compressed.shape[1]), prefill_seconds)
    return results
