"""One exact prefill per prompt length, shared by three measurements of every preset x budget.

``session.prefill`` runs the model once and fills one compressed cache per method (identical to separate runs),
so a single prefill per length gives, for all presets at all budgets:

* memory: kept entries and resident KV bytes (measured from the tensors) vs the uncompressed cache;
* compression cost: the seconds each method spent scoring, allocating and compacting, as a fraction of the
  uncompressed prefill measured in the same run. The window attention (w queries x n keys) is computed once per
  layer and shared by the methods that use it; lavakv charges it in full to each method that reads it
  (``SessionStats.compression_seconds``), so every method's figure is what it would cost alone;
* decode: after the lengths in ``--decode-tokens``, ms per decoded token for full and for
  ``--decode-methods`` at ``--decode-budgets``, steps interleaved across variants in one process.

    python benchmarks/sweep.py --tokens 1024,2048,4096,8192,16384 --out benchmarks/results/sweep_smollm2-135m.json
    python benchmarks/sweep.py --tokens 1024,2048 --decode-tokens 2048 --budgets 64,128   # quick
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from common import write_result
from prompts import ids_digest, prompt_ids

import lavakv
from lavakv.methods import PRESETS
from lavakv.timing import decode_step_medians


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def sweep_methods(presets: list[str], budgets: list[int], tokens: int, args) -> list[tuple[str, lavakv.Method]]:
    """(label, method) pairs for one prompt length: full, then preset x budget."""
    out = [("full", lavakv.method("full"))]
    seen = set()
    for name in presets:
        for budget in budgets:
            if name in args.expensive and (tokens > args.expensive_max_tokens or budget != args.main_budget):
                continue  # O(n^2) scorers: one budget, short prompts only (see --expensive)
            if tokens > args.all_budgets_max_tokens and budget != args.main_budget and name not in args.long_presets:
                continue  # long prompts: every preset at the middle budget, a few at every budget
            out.append((f"{name}@{budget}", lavakv.method(name, budget=budget, window=args.window)))
            seen.add((name, budget))
    if tokens in args.decode_tokens:
        for name in args.decode_methods:
            for budget in args.decode_budgets:
                if (name, budget) not in seen:
                    out.append((f"{name}@{budget}", lavakv.method(name, budget=budget, window=args.window)))
    return out


def decode_times(model, caches: dict[str, object], token: torch.Tensor, steps: int, threads: int) -> dict[str, dict]:
    """ms per decode step for each cache, steps interleaved across caches (each cache grows by one per step); the
    same timing as ``lavakv bench`` (:func:`lavakv.timing.decode_step_medians`).

    ``threads``: torch intra-op threads for the timing (0: leave torch's default).
    """
    default = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return decode_step_medians(model, caches, token, steps, warmup=2)
    finally:
        torch.set_num_threads(default)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=ints, default=ints("1024,2048,4096,8192,16384"))
    parser.add_argument("--budgets", type=ints, default=ints("64,128,512"))
    parser.add_argument("--presets", default=",".join(p for p in PRESETS if p != "full"))
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--main-budget", type=int, default=128,
                        help="the budget every preset runs at, whatever the length (default: %(default)s)")
    parser.add_argument("--expensive", default="h2o",
                        help="presets whose scoring is O(n^2) (h2o re-computes every query's attention): they run at "
                             "--main-budget only, and only up to --expensive-max-tokens")
    parser.add_argument("--expensive-max-tokens", type=int, default=4096)
    parser.add_argument("--all-budgets-max-tokens", type=int, default=8192,
                        help="above this length only --long-presets run at every budget (the rest at --main-budget)")
    parser.add_argument("--long-presets", default="snapkv,ada-snapkv,lava")
    parser.add_argument("--decode-tokens", type=ints, default=ints("2048,4096,8192,16384"))
    parser.add_argument("--decode-budgets", type=ints, default=ints("128,1024"))
    parser.add_argument("--decode-methods", default="snapkv,ada-snapkv,lava")
    parser.add_argument("--decode-steps", type=int, default=20)
    parser.add_argument("--decode-threads", type=ints, default=ints("0,1"),
                        help="torch threads for the decode timing, one pass each (0: torch's default); a single "
                             "thread resists a shared machine's contention")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' past_key_values -> cache rename
    args.expensive = set(filter(None, args.expensive.split(",")))
    args.decode_methods = [m for m in args.decode_methods.split(",") if m]
    args.long_presets = set(filter(None, args.long_presets.split(",")))
    presets = [p for p in args.presets.split(",") if p]

    from transformers.utils import logging as hf_logging

    from lavakv.models import load_model

    hf_logging.disable_progress_bar()
    model, tokenizer = load_model(args.model)
    ids_all = prompt_ids(tokenizer, max(args.tokens))
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    entry_bytes = 2 * head_dim * next(model.parameters()).element_size()  # one K and one V vector per head
    rows, prefills, decode = [], [], []
    with lavakv.method("full").attach(model) as session:
        with torch.no_grad():  # warm-up: first calls pay one-time costs
            session.prefill(ids_all[:, :256], None, [lavakv.method("snapkv", budget=64), lavakv.method("full")])
        for n in args.tokens:
            ids = ids_all[:, :n]
            labelled = sweep_methods(presets, args.budgets, n, args)
            gc.collect()
            start = time.perf_counter()
            caches, _ = session.prefill(ids, None, [m for _, m in labelled])
            total_s = time.perf_counter() - start
            stats = {label: session.stats(c) for (label, _), c in zip(labelled, caches, strict=True)}
            compression_sum = sum(s.shared_prefill_seconds for s in stats.values())  # wall time actually spent
            base_s = total_s - compression_sum  # the exact prefill itself (lavakv's attention routing included)
            prefills.append({"tokens": n, "methods": len(labelled), "total_s": total_s, "base_prefill_s": base_s,
                             "compression_sum_s": compression_sum, "loadavg": os.getloadavg()})
            print(f"[sweep] {n} tokens: prefill {base_s:.1f} s + compression of {len(labelled)} caches "
                  f"{compression_sum:.1f} s", flush=True)
            for (label, m), st in zip(labelled, stats.values(), strict=True):
                cost = st.compression_seconds
                rows.append({
                    "tokens": n, "label": label, "method": m.name, "budget": m.budget,
                    "kept_entries": st.kept_entries, "resident_kv_bytes": st.resident_kv_bytes,
                    "uncompressed_kv_bytes": st.uncompressed_kv_bytes,
                    "entry_bytes_x_kept": st.kept_entries * entry_bytes,
                    "compression_s": cost, "overhead_ratio": 1.0 + cost / base_s,
                })
            if n in args.decode_tokens:
                keep = ["full"] + [f"{m}@{b}" for m in args.decode_methods for b in args.decode_budgets]
                chosen = {label: c for (label, _), c in zip(labelled, caches, strict=True) if label in keep}
                sizes = {label: (stats[label].kept_entries, stats[label].resident_kv_bytes) for label in chosen}
                del caches, stats
                gc.collect()
                for threads in args.decode_threads:
                    times = decode_times(model, chosen, ids[:, -1:], args.decode_steps, threads)
                    load = os.getloadavg()
                    used = threads or torch.get_num_threads()
                    for label, t in times.items():
                        decode.append({"tokens": n, "label": label, "threads": used, "kept_entries": sizes[label][0],
                                       "resident_kv_bytes": sizes[label][1], "loadavg": load, **t})
                    line = ", ".join(f"{k} {v['median_ms']:.1f}" for k, v in times.items())
                    print(f"[sweep] decode after {n} tokens, {used} thread(s), ms/token: {line}", flush=True)
                del chosen
            else:
                del caches, stats
    out = args.out or Path(f"benchmarks/results/sweep_{args.model}.json")
    write_result(out, {
        "argv": sys.argv, "model": args.model, "prompt_sha256_16": ids_digest(ids_all), "entry_bytes": entry_bytes,
        "layers": cfg.num_hidden_layers, "kv_heads": cfg.num_key_value_heads, "window": args.window,
        "budgets": args.budgets, "tokens": args.tokens, "decode_steps": args.decode_steps,
        "all_budgets_max_tokens": args.all_budgets_max_tokens, "long_presets": sorted(args.long_presets),
        "expensive": sorted(args.expensive), "expensive_max_tokens": args.expensive_max_tokens,
        "prefills": prefills, "rows": rows, "decode": decode,
    })
    print(f"[sweep] wrote {out}")


if __name__ == "__main__":
    main()
