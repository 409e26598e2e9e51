"""Greedy generation with a compressed KV cache, query-aware or query-agnostic, with memory and timing measured.

* Query-aware (default): context and question form one prompt (through the tokenizer's chat template when it has
  one and ``chat=True``); that whole prompt is prefilled and compressed, so the observation window holds the
  question.
* Query-agnostic: the context alone is prefilled and compressed, then the question (and the chat template's
  assistant header and any answer prefix) is fed through the same compressed cache, as when one compressed
  context serves questions not known in advance.

Both then decode greedily with ``model.generate`` on the pre-filled cache: transformers 5.24 slices the input ids
to the tokens the cache does not hold yet, so only the first generated token is fed again. ``method=None`` or
``"full"`` runs through a ``lavakv.method("full")`` session, so statistics are measured the same way.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from lavakv.methods import Method
from lavakv.methods import method as make_method


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
        first_token_logits: ``[vocab]`` float32 logits of the first generated token (exact under compression
            when query-aware: prefill attention never depends on the method).
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


def prompt_ids(tokenizer, context: str, question: str | None, *, answer_prefix: str = "", chat: bool = True
               ) -> tuple[list[int], list[int], list[int]]:
    """Token ids of the prompt: ``(whole, context_part, rest)`` with ``context_part + rest`` split after the context.

    ``whole`` is the prompt tokenized in one piece (query-aware); ``context_part`` and ``rest`` are tokenized apart
    (query-agnostic), so their concatenation may differ from ``whole`` at the seam by a merge. With a chat
    template, context and question are stripped of surrounding whitespace (templates often trim them).
    """
    if chat and getattr(tokenizer, "chat_template", None):
        context, question = context.strip(), question.strip() if question is not None else None
        content = context if question is None else f"{context}\n\n{question}"
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        rendered += answer_prefix
        at = rendered.find(content)
        if at < 0:
            raise ValueError("the tokenizer's chat template rewrote the context text; pass chat=False (--no-chat)")
        split = at + len(context)
        special = False  # the template writes BOS and role markers itself
    else:
        content = context if question is None else f"{context}\n\n{question}"
        rendered = content + (f"\n\n{answer_prefix}" if answer_prefix else "")
        split = len(context)
        special = True

    def encode(text: str, add_special: bool) -> list[int]:
        return list(tokenizer(text, add_special_tokens=add_special)["input_ids"]) if text else []

    return encode(rendered, special), encode(rendered[:split], special), encode(rendered[split:], False)


def _stop_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
) -> GenerationResult:
    """Answer ``question`` about ``context`` greedily with ``method``'s compressed KV cache (batch of one).

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
            method name without a budget.
    """
    return generate_many(
        model, tokenizer, context, question=question, methods=[method], max_new_tokens=max_new_tokens,
        query_agnostic=query_agnostic, chat=chat, answer_prefix=answer_prefix,
    )[0]


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
    (plus, query-agnostic, its own question feed); decoding is timed per method. ``progress`` shows a progress
    bar over the methods on stderr.
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
    stops = _stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(stops), 0)

    results = []
    with torch.no_grad(), resolved[0].attach(model) as session:
        start = time.perf_counter()
        caches, shared_logits = session.prefill(compressed, torch.ones_like(compressed), resolved)
        _sync(device)
        shared_seconds = time.perf_counter() - start
        shared_stats = [session.stats(c) for c in caches]
        compression = [st.compression_seconds for st in shared_stats]  # each as if prefilled alone
        spent = sum(st.shared_prefill_seconds for st in shared_stats)  # what the shared prefill actually spent
        del shared_stats
        for i in tqdm(range(len(caches)), desc="lavakv decode", unit="method", file=sys.stderr, disable=not progress):
            cache, caches[i] = caches[i], None  # release each cache once used
            start = time.perf_counter()
            if query_agnostic:
                c = compressed.shape[1]
                out = model(input_ids=ids[:, c:], attention_mask=torch.ones_like(ids), cache=cache, logits_to_keep=1)
                logits = out.logits[:, -1].float()  # [1, vocab]
            else:
                logits = shared_logits.float()
            first = logits.argmax(-1, keepdim=True)  # [1, 1]
            _sync(device)
            prefill_seconds = shared_seconds - spent + compression[i] + time.perf_counter() - start
            stats = session.stats(cache)

            start = time.perf_counter()
            new = first
            if int(first) not in stops and max_new_tokens > 1:
                seq = torch.cat([ids, first], dim=1)  # [1, n + 1]; the cache holds all but the last token
                seq = model.generate(
                    seq, attention_mask=torch.ones_like(seq), cache=cache, max_new_tokens=max_new_tokens - 1,
                    do_sample=False, pad_token_id=pad, eos_token_id=sorted(stops) or None,
                )
                new = seq[:, ids.shape[1]:]
            _sync(device)
            decode_seconds = time.perf_counter() - start
            new_ids = new[0].tolist()
            results.append(GenerationResult(
                text=tokenizer.decode(new_ids, skip_special_tokens=True).strip(),
                prompt_tokens=int(ids.shape[1]),
                compressed_tokens=int(compressed.shape[1]),
                kept_entries=stats.kept_entries,
                resident_kv_bytes=stats.resident_kv_bytes,
                uncompressed_kv_bytes=stats.uncompressed_kv_bytes,
                prefill_seconds=prefill_seconds,
                decode_seconds=decode_seconds,
                new_tokens=len(new_ids),
                first_token_logits=logits[0].cpu(),
            ))
    return results
