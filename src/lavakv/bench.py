"""Memory and speed of compression methods on one model: resident KV, compression time, decode time per token.

For each prompt length, one exact prefill fills an uncompressed cache and one compressed cache per method
(:meth:`Session.prefill`; each cache is identical to a separate run). Measured for every cache:

* kept entries and resident KV bytes, from the cache's tensors;
* compression seconds (scoring, allocation, compaction; the window attention shared by methods is charged to each
  method that reads it), and their ratio to the uncompressed prefill measured in the same run;
* decode milliseconds per token: the same next token fed to every cache, steps alternated across the caches in
  one process, so the ratios to the uncompressed cache hold on a busy machine.
"""

from __future__ import annotations

import time

import torch

from lavakv.generation import alone
from lavakv.methods import Method
from lavakv.methods import method as make_method
from lavakv.timing import decode_step_medians


def check_shared(methods: list[Method]) -> None:
    """Refuse a method that cannot share the one exact prefill :func:`measure` fills every cache from."""
    for m in methods:
        kind = alone(m)
        if kind is not None:
            what = ("prefills in chunks (chunk_size=); its peak memory and prefill time: benchmarks/peak_memory.py "
                    "with a NAME/cC config" if kind == "chunked" else
                    "is scored by a reconstruction pass over the context; time it with lavakv generate or lavakv eval "
                    "(prefill_seconds)")
            raise ValueError(f"bench fills every cache from one shared exact prefill, and {m.name} cannot share it: "
                             f"it {what}")


def measure(model, ids: torch.Tensor, methods: list[Method], decode_steps: int = 10, progress: bool = False
            ) -> list[dict]:
    """Measure the uncompressed cache and each method's cache after one shared prefill of ``ids``.

    Args:
        model: a supported decoder (see :func:`lavakv.models.support.check_supported`).
        ids: ``[1, tokens]`` prompt token ids on the model's device.
        methods: compressing methods (the uncompressed cache is always measured first).
        decode_steps: timed decode steps per cache (after 2 untimed ones).

    Returns:
        one dict per cache (``full`` first): label, method, budget, tokens, kept_entries, resident_kv_bytes,
        uncompressed_kv_bytes, compression_s, prefill_s (the uncompressed prefill of this run),
        decode_ms_median / decode_ms_p10 / decode_ms_p90.
    """
    if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] < 1:
        raise ValueError(f"bench needs token ids of shape [1, tokens >= 1], got {tuple(ids.shape)}")
    if decode_steps < 1:
        raise ValueError(f"decode steps must be >= 1, got {decode_steps}")
    check_shared(methods)
    caches_methods = [make_method("full"), *methods]
    with torch.no_grad(), caches_methods[0].attach(model) as session:
        start = time.perf_counter()
        caches, logits = session.prefill(ids, None, caches_methods)
        total = time.perf_counter() - start
        stats = [session.stats(c) for c in caches]
        prefill_s = total - sum(s.shared_prefill_seconds for s in stats)  # the exact prefill alone
        token = logits.argmax(-1, keepdim=True)  # [1, 1]
        times = decode_step_medians(model, dict(enumerate(caches)), token, decode_steps,
                                    progress="lavakv bench decode" if progress else None)
    rows = []
    for i, (m, st) in enumerate(zip(caches_methods, stats, strict=True)):
        ms = times[i]
        rows.append({
            "label": m.name if not m.compresses else f"{m.name}@{m.budget}", "method": m.name,
            "budget": m.budget if m.compresses else None, "tokens": int(ids.shape[1]),
            "kept_entries": st.kept_entries, "resident_kv_bytes": st.resident_kv_bytes,
            "uncompressed_kv_bytes": st.uncompressed_kv_bytes, "compression_s": st.compression_seconds,
            "prefill_s": prefill_s, "decode_ms_median": ms["median_ms"], "decode_ms_p10": ms["p10_ms"],
            "decode_ms_p90": ms["p90_ms"],
        })
    return rows

