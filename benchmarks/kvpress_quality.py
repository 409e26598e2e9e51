"""kvpress side of the quality comparison (``quality_vs_kvpress.py``): greedy answers from kvpress-compressed caches.

Runs inside benchmarks/.kvpress-venv (``bash benchmarks/kvpress_env.sh``); never imports lavakv. Reads the
requests ``quality_vs_kvpress.py`` wrote (token ids of each prompt's compressed part and of the part fed after it,
generation length, stop ids, compression ratios) and writes one JSON line per request with the generated token
ids of every press x ratio plus the uncompressed cache, and the K/V bytes each cache held.

Protocol, identical to lavakv's runner (``lavakv.eval.runner.evaluate_sample``): ONE exact prefill of the
compressed part serves every press (kvpress compresses a layer's cache after that layer's exact attention, so the
model's computation does not depend on the press; each press's ``forward_hook`` fills its own shadow cache, as
``kvpress_bench.py`` does and validates against real ``with press(model)`` runs). The last prompt position's
logits start every answer. Query-agnostic requests then feed the question block through each cache with position
ids continuing from the context length (as kvpress's pipeline does); greedy decoding follows, one cache at a time,
with that cache's AdaKV masks installed on the attention modules.

    .kvpress-venv/bin/python benchmarks/kvpress_quality.py --model-dir DIR --requests req.json --out answers.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch
from kvpress_bench import cache_entries_bytes, installed, load, masked_entries, multiplexed_prefill


def make_press(name: str, ratio: float, window: int):
    """A kvpress press by name at ``compression_ratio=ratio`` (kvpress keeps ``int(n * (1 - ratio))`` per head)."""
    from kvpress import AdaKVPress, ExpectedAttentionPress, SnapKVPress

    if name == "snapkv":
        return SnapKVPress(compression_ratio=ratio, window_size=window)
    if name == "adakv-snapkv":
        return AdaKVPress(SnapKVPress(compression_ratio=ratio, window_size=window))
    if name == "expected-attention":
        return ExpectedAttentionPress(compression_ratio=ratio)
    if name == "adakv-expected-attention":
        return AdaKVPress(ExpectedAttentionPress(compression_ratio=ratio))
    raise ValueError(f"unknown press {name!r}; choose snapkv, adakv-snapkv, expected-attention, "
                     "adakv-expected-attention")


def step(model, ids: list[int], cache, past: int) -> torch.Tensor:
    """Feed ``ids`` after ``past`` logical positions; last logits ``[1, vocab]``."""
    block = torch.tensor([ids])
    positions = torch.arange(past, past + len(ids))[None]
    with torch.no_grad():
        return model(block, past_key_values=cache, position_ids=positions, logits_to_keep=1).logits[:, -1]


def answer(model, cache, masks: dict, logits: torch.Tensor, rest: list[int], past: int, max_new_tokens: int,
           stops: set[int]) -> list[int]:
    """Greedy tokens from ``cache`` (question block fed first when ``rest``), with its AdaKV ``masks`` installed."""
    with installed(masks):
        if rest:
            logits = step(model, rest, cache, past)
            past += len(rest)
        tokens: list[int] = []
        while True:
            token = int(logits[0].argmax())
            tokens.append(token)
            if token in stops or len(tokens) >= max_new_tokens:
                return tokens
            logits = step(model, [token], cache, past)
            past += 1


def run(model, request: dict, presses: list[str], window: int) -> dict:
    context = torch.tensor([request["context"]])
    n = context.shape[1]
    configs = {f"{name}@{ratio!r}": make_press(name, ratio, window) for name in presses for ratio in request["ratios"]}
    prefill = multiplexed_prefill(model, context, configs)
    stops = set(request["stops"])
    out = {"key": request["key"], "digest": request["digest"], "compressed_tokens": n,
           "prefill_seconds": prefill["total_s"], "answers": {},
           "presses": {label: repr(press) for label, press in configs.items()}}
    caches = {"full": (prefill["full"], {}), **{k: (c, prefill["masks"][k]) for k, c in prefill["shadows"].items()}}
    logits = prefill["logits"]
    for label, (cache, masks) in caches.items():
        held, nbytes = cache_entries_bytes(cache)
        hidden = masked_entries(masks)
        start = time.perf_counter()
        tokens = answer(model, cache, masks, logits, request["rest"], n, request["max_new_tokens"], stops)
        out["answers"][label] = {"tokens": tokens, "held_entries": held, "resident_kv_bytes": nbytes,
                                 "attended_entries": held - hidden, "decode_seconds": time.perf_counter() - start}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True,
                        help="JSON lines; requests answered there before (same digest) are skipped")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    spec = json.loads(args.requests.read_text())
    done = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            try:
                done.add(json.loads(line)["digest"])
            except (json.JSONDecodeError, KeyError):  # a torn last line or an older record: redone
                continue
    model = load(args.model_dir)
    from importlib.metadata import version

    todo = [r for r in spec["requests"] if r["digest"] not in done]
    for i, request in enumerate(todo, 1):
        record = run(model, request, spec["presses"], spec["window"])
        record["kvpress"] = version("kvpress")
        with args.out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"[kvpress] {i}/{len(todo)} {request['key']}: prefill {record['prefill_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
