"""Peak process memory during one prefill: no cache vs the full cache vs compressed caches (LAVa's cascade).

Each (length, config) runs in a fresh child process that loads the model, runs a short warm-up (pages in the
weights), resets the kernel's RSS high-water mark and prefills once (see peak.py). The figure is the peak RSS
above the loaded model: activations + whatever K/V the cache holds at the worst moment. ``nocache``
(``use_cache=False``) frees each layer's K/V after the layer, so ``config - nocache`` is what a cache adds to the
peak: the whole K/V for ``full``; for a compressed cache at most the current layer's full K/V (freed once the
layer is compacted) plus the compressed layers and the scoring scratch.

A config ``NAME/cC`` prefills with chunked prefill (``chunk_size=C``, through ``session.prefill``), so the cache
holds about B + C entries per head while prefilling instead of the whole prompt.

    python benchmarks/peak_memory.py --runs 8192:nocache,full,lava,ada-snapkv 16384:full,lava
    python benchmarks/peak_memory.py --runs 8192:lava,lava/c512,lava/c2048 --out benchmarks/results/peak_chunked.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from common import write_result
from peak import child_env, peak_bytes, reset_peak, rss_bytes
from prompts import ids_digest, prompt_ids

from lavakv.compat import cache_kwargs


def child(args) -> None:
    from transformers.utils import logging as hf_logging

    import lavakv
    from lavakv.models import load_model

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    model, tokenizer = load_model(args.model)
    ids = prompt_ids(tokenizer, args.tokens)
    name = args.child
    preset, _, chunk = name.partition("/c")
    method = None if name == "nocache" else (
        lavakv.method("full") if name == "full" else lavakv.method(
            preset, budget=args.budget, window=args.window, chunk_size=int(chunk) if chunk else None))
    with torch.no_grad():
        model(ids[:, :64], use_cache=False, logits_to_keep=1)  # warm-up: pages in the mmapped weights
    gc.collect()
    before = rss_bytes()
    reset_peak()
    resident = kept = 0
    started = time.perf_counter()
    with torch.no_grad():
        if method is None:
            model(ids, use_cache=False, logits_to_keep=1)
        else:
            with method.attach(model) as session:
                if method.chunk_size:
                    (cache,), _ = session.prefill(ids, None, [method])
                else:
                    cache = session.cache()
                    model(ids, **cache_kwargs(cache), logits_to_keep=1)
                st = session.stats(cache)
                resident, kept = st.resident_kv_bytes, st.kept_entries
    seconds = time.perf_counter() - started
    peak = peak_bytes()
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    layer_kv = args.tokens * cfg.num_key_value_heads * 2 * head_dim * next(model.parameters()).element_size()
    # window attention of the scorers: float32 logits and probabilities [q_heads, w, n], alive together
    scratch = 2 * cfg.num_attention_heads * args.window * args.tokens * 4 if method is not None and method.compresses \
        else 0
    print(json.dumps({
        "tokens": args.tokens, "label": name, "budget": None if method is None or not method.compresses
        else args.budget, "rss_before_bytes": before, "peak_bytes": peak, "peak_over_before_bytes": peak - before,
        "resident_kv_bytes": resident, "kept_entries": kept, "one_layer_full_kv_bytes": layer_kv,
        "scoring_scratch_bytes": scratch, "chunk_size": method.chunk_size if method is not None else None,
        "prefill_seconds": seconds,
        "prompt_sha256_16": ids_digest(ids),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--runs", nargs="*", default=["8192:nocache,full,lava,ada-snapkv", "16384:full,lava"],
                        help="TOKENS:CONFIG,...; a config is nocache, full or a preset name (at --budget)")
    parser.add_argument("--budget", type=int, default=128)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    for spec in args.runs:
        tokens, configs = spec.split(":")
        for name in configs.split(","):
            cmd = [sys.executable, __file__, "--model", args.model, "--child", name, "--tokens", tokens,
                   "--budget", str(args.budget), "--window", str(args.window)]
            done = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"peak child {name}@{tokens} failed:\n{done.stderr[-3000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"[peak] {name} at {tokens}: +{row['peak_over_before_bytes'] / 2**20:.0f} MiB over the loaded model"
                  f" (cache holds {row['resident_kv_bytes'] / 2**20:.1f} MiB; one layer's full K/V "
                  f"{row['one_layer_full_kv_bytes'] / 2**20:.1f} MiB)", flush=True)
    out = args.out or Path(f"benchmarks/results/peak_{args.model}.json")
    write_result(out, {"argv": sys.argv, "model": args.model, "budget": args.budget, "rows": rows,
                       "loadavg_end": os.getloadavg()})
    print(f"[peak] wrote {out}")


if __name__ == "__main__":
    main()
