"""Where a method's compression time goes: cProfile of one prefill, lavakv's functions by cumulative time.

One warm prefill per method under cProfile; rows are lavakv's functions with their cumulative and own time (own
time includes tensor operators written inline, e.g. indexing), to compare with the run's ``compression_seconds``.
Profiling slows Python-heavy code more than torch kernels, so shares are indicative, not exact.

    python benchmarks/profile_compression.py --tokens 4096 --methods lava,snapkv
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
import warnings
from pathlib import Path

import torch
from common import write_result
from prompts import prompt_ids

import lavakv


def profile_one(model, ids, name: str, budget: int, top: int) -> dict:
    m = lavakv.method(name, budget=budget)
    with m.attach(model) as session:
        session.prefill(ids[:, :256], None, [m])  # warm-up
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        caches, _ = session.prefill(ids, None, [m])
        profiler.disable()
        total = time.perf_counter() - start
        compression = session.stats(caches[0]).compression_seconds
    stats = pstats.Stats(profiler).stats  # {(file, line, func): (cc, nc, tt, ct, callers)}
    rows = []
    for (file, line, func), (_, calls, tottime, cumtime, _) in stats.items():
        if "/lavakv/" in file:
            where = f"{file.split('/lavakv/', 1)[1]}:{line}({func})"
            rows.append({"function": where, "calls": calls, "cumtime_s": cumtime, "tottime_s": tottime})
    rows.sort(key=lambda r: -r["cumtime_s"])
    return {"method": name, "budget": budget, "tokens": int(ids.shape[1]), "prefill_s": total,
            "compression_s": compression, "functions": rows[:top]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--budget", type=int, default=128)
    parser.add_argument("--methods", default="lava,snapkv")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    from lavakv.models import load_model

    hf_logging.disable_progress_bar()
    model, tokenizer = load_model(args.model)
    ids = prompt_ids(tokenizer, args.tokens)
    runs = []
    for name in args.methods.split(","):
        with torch.no_grad():
            run = profile_one(model, ids, name, args.budget, args.top)
        runs.append(run)
        print(f"[profile] {name}@{args.budget} at {args.tokens}: compression {run['compression_s']:.2f} s of "
              f"{run['prefill_s']:.2f} s (profiled)", flush=True)
        for r in run["functions"][:12]:
            print(f"    {r['cumtime_s']:7.3f} s cum {r['tottime_s']:7.3f} s own {r['calls']:6d} calls  {r['function']}")
    out = args.out or Path(f"benchmarks/results/profile_{args.model}.json")
    write_result(out, {"argv": sys.argv, "runs": runs})


if __name__ == "__main__":
    main()
