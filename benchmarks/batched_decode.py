"""Decoding several methods' caches of one prompt: one at a time vs stacked into one batch (``Session.stack`` +
``decode_batch``), as ``lavakv eval`` does.

One exact prefill fills a cache per method; each repeat forks every cache and decodes ``--tokens`` greedy tokens
(no stop ids) either cache by cache or all together, alternating the two orders, in one process. Reported: the median
seconds of each way, their ratio, and how many rows' tokens agree between the two (float rounding of the batched
computation may flip a near tie). Times on a shared machine are noisy: read the ratio.

    python benchmarks/batched_decode.py --model smollm2-135m --tokens 2048 \
        --out benchmarks/results/batched_decode_smollm2-135m.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import write_result
from prompts import prompt_ids

import lavakv
from lavakv.generation import decode_batch, decode_from_cache
from lavakv.models import load_model

METHODS = ["lava", "ada-snapkv", "snapkv", "pyramidkv", "cake", "streamingllm", "h2o", "tova"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=2048, help="prompt tokens")
    parser.add_argument("--budgets", default="128,512")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    ids = prompt_ids(tokenizer, args.tokens)
    methods = [lavakv.method("full")] + [lavakv.method(name, budget=int(b))
                                         for b in args.budgets.split(",") for name in METHODS]
    with lavakv.method("full").attach(model) as session:
        caches, logits = session.prefill(ids, None, methods)
        times: dict[str, list[float]] = {"one_by_one": [], "stacked": []}
        answers: dict[str, list[list[int]]] = {}
        for repeat in range(args.repeats):
            for way in (("one_by_one", "stacked") if repeat % 2 == 0 else ("stacked", "one_by_one")):
                forks = [session.fork(cache) for cache in caches]
                start = time.perf_counter()
                if way == "one_by_one":
                    rows = [decode_from_cache(model, fork, logits, max_new_tokens=args.new_tokens, stops=set())
                            for fork in forks]
                else:
                    rows = decode_batch(model, session.stack(forks), logits.expand(len(forks), -1),
                                        max_new_tokens=args.new_tokens, stops=set())
                times[way].append(time.perf_counter() - start)
                answers[way] = [row.tokens for row in rows]
                del forks
    one, stacked = (statistics.median(times[w]) for w in ("one_by_one", "stacked"))
    agree = sum(a == b for a, b in zip(answers["one_by_one"], answers["stacked"], strict=True))
    result = {
        "model": args.model, "prompt_tokens": args.tokens, "caches": len(methods),
        "methods": [m.describe()["name"] + (f"@{m.describe()['budget']}" if m.describe().get("budget") else "")
                    for m in methods],
        "new_tokens": args.new_tokens, "repeats": args.repeats, "seconds": times,
        "median_one_by_one_s": one, "median_stacked_s": stacked, "speedup": one / stacked,
        "rows_identical": agree,
    }
    write_result(args.out, result)
    print(f"{len(methods)} caches x {args.new_tokens} tokens: one by one {one:.2f} s, stacked {stacked:.2f} s "
          f"(x{one / stacked:.2f}); identical answers {agree}/{len(methods)}")


if __name__ == "__main__":
    main()
