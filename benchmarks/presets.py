"""Presets at one budget on one prompt: kept entries, resident KV bytes, end-to-end prefill time ratio to `full`.

Each method runs its own prefill (nothing shared). Per prompt length, every round runs `full` and then each
method once, in one process; rounds repeat. The ratio is median(method) / median(full), with the spread of the
per-round ratios, so a noisy machine compares like with like. The compression seconds each run spent scoring,
allocating and compacting are recorded too (``compression_s``): ``1 + compression_s / (method_s -
compression_s)`` is the same run's own overhead, free of the between-run noise of the end-to-end ratio.

    python benchmarks/presets.py --model smollm2-135m --tokens 2048,4096,8192 --methods lava --repeats 3
    python benchmarks/presets.py --model smollm2-135m --tokens 4096 --budget 128
    python benchmarks/presets.py --model tiny --tokens 2048 --budget 64
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from common import write_result

import lavakv
from lavakv.compat import cache_kwargs


def tiny_model() -> torch.nn.Module:
    """A random Llama-shaped model (8 layers, 8 heads / 2 KV heads, d=64) for quick runs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=512, intermediate_size=1024, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=32768)
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation("sdpa")
    return model


def prefill(model, ids, name, budget, window):
    m = lavakv.method(name) if name == "full" else lavakv.method(name, budget=budget, window=window)
    gc.collect()
    with m.attach(model) as session:
        cache = session.cache()
        start = time.perf_counter()
        with torch.no_grad():
            model(ids, **cache_kwargs(cache), logits_to_keep=1)
        seconds = time.perf_counter() - start
        st = session.stats()
    return seconds, st


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="a lavakv model name, an HF id/dir, or 'tiny'")
    parser.add_argument("--tokens", default="4096", help="prompt length(s), comma-separated")
    parser.add_argument("--budget", type=int, default=128)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--repeats", default="3",
                        help="rounds per length: one number, or one per --tokens entry (e.g. 3,3,2)")
    parser.add_argument("--methods", default=",".join(m for m in lavakv.list_methods() if m != "full"),
                        help="comma-separated; or one list per --tokens entry separated by '|' (lava,snapkv|lava)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    lengths = [int(t) for t in args.tokens.split(",")]
    repeats = [int(r) for r in args.repeats.split(",")]
    repeats = repeats * len(lengths) if len(repeats) == 1 else repeats
    if len(repeats) != len(lengths):
        raise SystemExit(f"--repeats gives {len(repeats)} values for {len(lengths)} lengths")
    method_lists = [[m for m in part.split(",") if m] for part in args.methods.split("|")]
    method_lists = method_lists * len(lengths) if len(method_lists) == 1 else method_lists
    if len(method_lists) != len(lengths):
        raise SystemExit(f"--methods gives {len(method_lists)} lists for {len(lengths)} lengths")
    if args.model == "tiny":
        model, text_ids = tiny_model(), None
    else:
        from prompts import prompt_ids
        from transformers.utils import logging as hf_logging

        from lavakv.models import load_model

        hf_logging.disable_progress_bar()
        model, tokenizer = load_model(args.model)
        text_ids = prompt_ids(tokenizer, max(lengths))
    all_ids = text_ids if text_ids is not None else torch.randint(3, 1000, (1, max(lengths)))
    prefill(model, all_ids[:, :256], "full", None, args.window)  # warm-up
    rows = []
    loadavg_start = os.getloadavg()
    for n, rounds, methods in zip(lengths, repeats, method_lists, strict=True):
        ids = all_ids[:, :n]
        times = {name: [] for name in ["full", *methods]}
        compression_s = {name: [] for name in times}
        stats = {}
        for _ in range(rounds):
            for name in times:
                seconds, stats[name] = prefill(model, ids, name, args.budget, args.window)
                times[name].append(seconds)
                compression_s[name].append(stats[name].compression_seconds)
        full_s = statistics.median(times["full"])
        for name in methods:
            st = stats[name]
            method_s = statistics.median(times[name])
            paired = sorted(m / f for m, f in zip(times[name], times["full"], strict=True))
            compression = statistics.median(compression_s[name])
            own = statistics.median(c / (t - c) for c, t in zip(compression_s[name], times[name], strict=True))
            row = {
                "method": name, "budget": args.budget, "prompt_tokens": int(ids.shape[1]), "rounds": rounds,
                "kept_entries": st.kept_entries, "resident_kv_bytes": st.resident_kv_bytes,
                "uncompressed_kv_bytes": st.uncompressed_kv_bytes, "prefill_full_s": full_s,
                "prefill_method_s": method_s, "prefill_ratio": method_s / full_s,
                "paired_ratio_min": paired[0], "paired_ratio_max": paired[-1],
                "compression_s": compression, "own_overhead_ratio": 1.0 + own,
                "samples_full_s": times["full"], "samples_method_s": times[name],
            }
            rows.append(row)
            print(f"{n:6d} {name:20s} kept={row['kept_entries']:8d} resident={row['resident_kv_bytes'] / 2**20:8.2f}"
                  f" MiB (of {row['uncompressed_kv_bytes'] / 2**20:.2f}) prefill ratio={row['prefill_ratio']:.3f} "
                  f"[{paired[0]:.3f}..{paired[-1]:.3f}] (compression {compression * 1e3:.0f} ms of "
                  f"{method_s * 1e3:.0f} ms: own overhead {row['own_overhead_ratio']:.3f})", flush=True)
    default = f"presets_{args.model}_{lengths[0]}_{args.budget}.json" if len(lengths) == 1 \
        else f"prefill_{args.model}_{args.budget}.json"
    out = args.out or Path("benchmarks/results") / default
    write_result(out, {"rows": rows, "argv": sys.argv, "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg()})


if __name__ == "__main__":
    main()
