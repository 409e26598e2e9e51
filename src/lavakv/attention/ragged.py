"""Exact attention over a ragged prefix (kept prompt entries, per-KV-head lengths, stored flat) plus a dense tail.

Every strategy reads the flat ``[entries, head_dim]`` storage in place: no padded copy of K/V is made, so a
decode step moves the kept bytes once, as dense SDPA does. Scores are computed per KV head for the G query heads
of its group at once (no K/V repeated across a GQA group), scaled and soft-maxed in float32 over the concatenated
prefix and tail.

* :func:`segment_attention` runs one matmul per (sequence, KV head) segment on a zero-copy view of the storage,
  writing into one score buffer; one softmax; one matmul per segment for the values. Its cost follows the kept
  entries; its op count grows with batch x KV heads.
* :func:`flat_attention` runs one matmul of every query head against every stored entry and masks each head to
  its own segment with :meth:`RaggedKV.foreign_entries`. It does batch x KV heads times the score arithmetic but a
  fixed, small number of ops, which wins on small layers where per-op overhead dominates.
* :func:`native_attention` is the CPU decode fast path (one query token, float32 / bfloat16): a C kernel
  (:mod:`lavakv.attention.native`, compiled at first use) that splits every segment into chunks over the CPU threads and
  merges their partial softmaxes, reading the storage in place.
* :func:`flash_varlen_attention` is the CUDA fast path when flash-attention is installed.
* :func:`ragged_attention` runs the path :func:`strategy` picks.
"""

from __future__ import annotations

import functools

import torch

from lavakv.attention import native
from lavakv.cache.storage import RaggedKV

# flat_attention is used while the multiply-adds it spends on other segments' entries stay at most this many
# (about where it stops beating segment_attention on one CPU thread; benchmarks/decode_kernel.py measures both)
FLAT_WASTE_LIMIT = 2**19
NATIVE_CHUNK = 256  # entries per work item of the native kernel
NATIVE_DTYPES = (torch.float32, torch.bfloat16)
# queries attended at once: a block of queries (chunked prefill, a question fed through a compressed context) is
# split so the float32 score buffer stays O(QUERY_BLOCK x entries) instead of O(q_len x entries)
QUERY_BLOCK = 256


def ragged_attention(
    query: torch.Tensor,
    prefix: RaggedKV,
    tail_keys: torch.Tensor,
    tail_values: torch.Tensor,
    tail_valid: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """Exact attention over a ragged prefix plus a dense tail, on any device, by the path :func:`strategy` picks.

    Args:
        query: ``[batch, q_heads, q_len, head_dim]``; query head h reads KV head ``h // G``.
        prefix: kept prompt entries, per-head lengths ``[batch, kv_heads]``, every one visible to every query.
        tail_keys, tail_values: ``[batch, kv_heads, tail, head_dim]`` entries appended after the prompt.
        tail_valid: ``[batch or 1, 1, q_len, tail]`` bool, or None when every tail entry is visible.
        scaling: softmax scale.

    Returns:
        ``[batch, q_len, q_heads, head_dim]`` (the layout transformers' attention functions return).
    """
    if query.shape[2] > QUERY_BLOCK:  # each query row is independent: attend block by block, bounded scratch
        return torch.cat([
            ragged_attention(query[:, :, start : start + QUERY_BLOCK], prefix, tail_keys, tail_values,
                             tail_valid[:, :, start : start + QUERY_BLOCK] if tail_valid is not None else None,
                             scaling)
            for start in range(0, query.shape[2], QUERY_BLOCK)
        ], dim=1)
    chosen = strategy(query, prefix, tail_keys, tail_values, tail_valid)
    if chosen == "flash_varlen":
        return flash_varlen_attention(query, prefix, tail_keys, tail_values, scaling)
    if chosen == "native":
        return native_attention(query, prefix, tail_keys, tail_values, tail_valid, scaling)
    if chosen == "flat":
        return flat_attention(query, prefix, tail_keys, tail_values, tail_valid, scaling)
    return segment_attention(query, prefix, tail_keys, tail_values, tail_valid, scaling)


def strategy(
    query: torch.Tensor,
    prefix: RaggedKV,
    tail_keys: torch.Tensor,
    tail_values: torch.Tensor,
    tail_valid: torch.Tensor | None,
) -> str:
    """The path :func:`ragged_attention` takes: ``flash_varlen`` (CUDA, one query token, every tail entry visible,
    flash-attention installed), ``native`` (see :func:`native_applies`), else ``flat`` while :func:`flat_waste` is
    at most ``FLAT_WASTE_LIMIT``, else ``segments``."""
    if tail_valid is None and query.shape[2] == 1 and flash_varlen_available(query):
        return "flash_varlen"
    if native_applies(query, prefix, tail_keys, tail_values):
        return "native"
    return "flat" if flat_waste(query, prefix) <= FLAT_WASTE_LIMIT else "segments"


def native_applies(query: torch.Tensor, prefix: RaggedKV, tail_keys: torch.Tensor, tail_values: torch.Tensor) -> bool:
    """Whether :func:`native_attention` can run: CPU, one query token, float32 / bfloat16 throughout, rows
    contiguous in their last dimension, and the kernel built (see :mod:`lavakv.attention.native`)."""
    dtype = query.dtype
    return (
        query.shape[2] == 1
        and dtype in NATIVE_DTYPES
        and query.device.type == "cpu"
        and prefix.keys.dtype == prefix.values.dtype == tail_keys.dtype == tail_values.dtype == dtype
        and prefix.keys.stride(-1) == prefix.values.stride(-1) == tail_keys.stride(-1) == tail_values.stride(-1) == 1
        and native.ragged_decode() is not None
    )


def native_attention(
    query: torch.Tensor,
    prefix: RaggedKV,
    tail_keys: torch.Tensor,
    tail_values: torch.Tensor,
    tail_valid: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """:func:`ragged_attention` for one decode token on CPU through the native split-K kernel.

    Only valid where :func:`native_applies`; float32 scores, softmax and accumulation.
    """
    b, hq, _, d = query.shape
    h = prefix.lengths.shape[1]
    t, dv = tail_keys.shape[2], tail_values.shape[-1]
    q = query.float().contiguous()  # [b, hq, 1, d] = [segments, G, d] in memory
    starts, lengths = prefix.segment_offsets()
    visible, visible_stride = None, 0
    if tail_valid is not None:  # [batch or 1, 1, 1, tail] -> bytes [batch or 1, tail]
        visible = tail_valid[:, 0, 0].contiguous()
        visible_stride = t if visible.shape[0] > 1 else 0
    out = torch.empty(b, 1, hq, dv, dtype=torch.float32)  # = [segments, G, dv] in memory (one query token)
    tk, tv = tail_keys.stride(), tail_values.stride()
    failed = native.ragged_decode()(
        q.data_ptr(), b * h, hq // h, d, dv, scaling, prefix.keys.data_ptr(), prefix.values.data_ptr(),
        prefix.keys.stride(0), prefix.values.stride(0), starts.data_ptr(), lengths.data_ptr(),
        tail_keys.data_ptr(), tail_values.data_ptr(), h, tk[0], tk[1], tk[2], tv[0], tv[1], tv[2], t,
        visible.data_ptr() if visible is not None else None, visible_stride,
        int(query.dtype == torch.bfloat16), NATIVE_CHUNK, torch.get_num_threads(), out.data_ptr(),
    )
    if failed:
        raise MemoryError("lavakv: the native ragged decode kernel ran out of memory for its partial results")
    return out if query.dtype == torch.float32 else out.to(query.dtype)


def flat_waste(query: torch.Tensor, prefix: RaggedKV) -> int:
    """Multiply-adds :func:`flat_attention` spends on entries of other segments, per K or V product.

    ``(segments - 1) x entries x (query rows per segment) x head_dim``; the wasted compute grows with it while
    the per-op overhead :func:`segment_attention` pays grows with the number of segments.
    """
    segments = prefix.lengths.numel()
    rows = query.shape[1] // prefix.lengths.shape[1] * query.shape[2]
    return max(segments - 1, 0) * prefix.keys.shape[0] * rows * query.shape[3]


def segment_attention(
    query: torch.Tensor,
    prefix: RaggedKV,
    tail_keys: torch.Tensor,
    tail_values: torch.Tensor,
    tail_valid: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """:func:`ragged_attention` with one matmul per (sequence, KV head) segment, in place on the flat storage."""
    b, hq, q_len, d = query.shape
    h = prefix.lengths.shape[1]
    rows = hq // h * q_len
    q = query.reshape(b * h, rows, d)
    segments = prefix.segments()
    width = max((n for _, n in segments), default=0)
    t = tail_keys.shape[2]
    scores = query.new_full((b * h, rows, width + t), float("-inf"))
    for s, (start, n) in enumerate(segments):
        if n:  # scaled in the matmul's epilogue (beta=0 ignores the buffer's content)
            block = scores[s, :, :n]
            torch.addmm(block, q[s], prefix.keys[start : start + n].t(), beta=0, alpha=scaling, out=block)
    block = scores[:, :, width:]
    torch.baddbmm(block, q, tail_keys.reshape(b * h, t, d).transpose(1, 2), beta=0, alpha=scaling, out=block)
    probs = _probabilities(scores, width, tail_valid, b, h, q_len).to(tail_values.dtype)
    out = torch.bmm(probs[:, :, width:], tail_values.reshape(b * h, t, -1))  # [b*h, rows, dv]
    for s, (start, n) in enumerate(segments):
        if n:
            out[s].addmm_(probs[s, :, :n], prefix.values[start : start + n])
    return out.view(b, hq, q_len, -1).transpose(1, 2).contiguous()


def flat_attention(
    query: torch.Tensor,
    prefix: RaggedKV,
    tail_keys: torch.Tensor,
    tail_values: torch.Tensor,
    tail_valid: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """:func:`ragged_attention` with one matmul of every query head against every stored entry, masked per segment.

    The masked probabilities are exact zeros, so the value matmul adds nothing from other segments.
    """
    b, hq, q_len, d = query.shape
    h = prefix.lengths.shape[1]
    rows = hq // h * q_len
    entries = prefix.keys.shape[0]
    t = tail_keys.shape[2]
    q = query.reshape(b * h, rows, d)
    scores = query.new_empty(b * h, rows, entries + t)
    block = scores[:, :, :entries].view(b * h * rows, entries)
    torch.addmm(block, q.reshape(-1, d), prefix.keys.t(), beta=0, alpha=scaling, out=block)
    block = scores[:, :, entries:]
    torch.baddbmm(block, q, tail_keys.reshape(b * h, t, d).transpose(1, 2), beta=0, alpha=scaling, out=block)
    probs = _probabilities(scores, entries, tail_valid, b, h, q_len, prefix.foreign_entries())
    probs = probs.to(tail_values.dtype)
    out = torch.mm(probs[:, :, :entries].reshape(b * h * rows, entries), prefix.values).view(b * h, rows, -1)
    out = torch.baddbmm(out, probs[:, :, entries:], tail_values.reshape(b * h, t, -1))
    return out.view(b, hq, q_len, -1).transpose(1, 2).contiguous()


def _probabilities(
    scores: torch.Tensor,
    width: int,
    tail_valid: torch.Tensor | None,
    batch: int,
    kv_heads: int,
    q_len: int,
    prefix_foreign: torch.Tensor | None = None,
) -> torch.Tensor:
    """float32 softmax of scaled ``scores [batch * kv_heads, G * q_len, width + tail]`` (prefix columns first).

    ``prefix_foreign`` (``[batch * kv_heads, 1, width]`` bool) masks prefix columns of other segments; ``tail_valid``
    (``[batch or 1, 1, q_len, tail]``) masks the tail columns for every query head of a group alike. A row that
    sees nothing (a padding query whose sequence holds no earlier entry, e.g. during chunked prefill) gets zeros,
    as PyTorch's SDPA gives, not NaN.
    """
    scores = scores.float() if scores.dtype != torch.float32 else scores
    if prefix_foreign is not None:
        scores[:, :, :width].masked_fill_(prefix_foreign, float("-inf"))
    if tail_valid is not None:
        rows, t = scores.shape[1], scores.shape[2] - width
        visible = tail_valid.expand(batch, kv_heads, q_len, t)[:, :, None]
        visible = visible.expand(batch, kv_heads, rows // q_len, q_len, t).reshape(batch * kv_heads, rows, t)
        scores[:, :, width:].masked_fill_(~visible, float("-inf"))
        return torch.softmax(scores, dim=-1).nan_to_num_(nan=0.0)
    return torch.softmax(scores, dim=-1)


def flash_varlen_available(query: torch.Tensor) -> bool:
    """Whether the flash-attention varlen path can run for this query (CUDA, fp16/bf16, package installed)."""
    return query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and _flash_attn_installed()


@functools.cache
def _flash_attn_installed() -> bool:
    """Looked up once: a failed import is not cached by Python and would search the path on every decode step."""
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
    Not exercised by the CPU test-suite (no GPU here); the portable path is :func:`ragged_attention`.
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
