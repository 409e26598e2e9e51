"""NVIDIA kvpress on the same model and prompt as lavakv: resident KV bytes, compression cost, prefill/decode ratios.

Runs inside benchmarks/.kvpress-venv (``bash benchmarks/kvpress_env.sh``); never imports lavakv. The model is the
directory lavakv converted (plain ``from_pretrained``), the token ids come from lavakv's side (``prompts.py``).
Budgets map to kvpress's convention as ``compression_ratio = 1 - B / n`` (n_kept = B per KV head per layer on
average, exactly lavakv's B), so equal budgets mean equal *kept* entries; what each library then *holds* is
measured from the cache tensors.

* memory: one prefill per length; every press x budget runs its own ``forward_hook`` on a shadow DynamicCache
  holding that layer's K/V (kvpress compresses after a layer's exact attention, so the model's computation does
  not depend on the press: each shadow equals a separate run, checked against real ``with press(model)`` runs at
  ``--validate-tokens``). The time inside each press's hook is its compression cost.
* e2e: rounds of plain prefill and ``with press(model)`` prefills, interleaved; then decode steps interleaved over
  the last round's caches (AdaKV's masks restored per step, as kvpress's attention patch expects).
* peak: ``--peak 8192:full,snapkv,adakv-snapkv`` measures peak RSS during prefill in fresh child processes.

    .kvpress-venv/bin/python benchmarks/kvpress_bench.py --model-dir ~/.cache/lavakv/smollm2-135m --ids ids.pt
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path

import torch
from common import write_result
from peak import child_env, peak_bytes, reset_peak, rss_bytes
from prompts import ids_digest, load_ids

WINDOW = 32  # lavakv's default observation window; kvpress's SnapKV default is 64


def interleaved_medians(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, dict]:
    """A copy of ``lavakv.timing.interleaved_medians`` (CPU: no device sync), kept here because this script runs in
    the kvpress venv, which cannot import lavakv: ``warmup`` untimed rounds, then ``repeats`` rounds, each calling
    every variant once in turn; per variant the median, p10 and p90 in seconds. Keep the two in step."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(warmup + repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                samples[name].append(time.perf_counter() - start)
    return {
        name: {"median_s": statistics.median(s), "p10_s": sorted(s)[len(s) // 10],
               "p90_s": sorted(s)[(9 * len(s)) // 10]}
        for name, s in samples.items()
    }


def make_press(name: str, budget: int, n: int):
    from kvpress import AdaKVPress, PyramidKVPress, SnapKVPress, StreamingLLMPress
    from kvpress.utils import compute_n_kept

    ratio = 1.0 - (budget + 0.25) / n  # n_kept = int(n * (1 - ratio)) = budget exactly
    if compute_n_kept(n, ratio) != budget:
        raise AssertionError(f"compression_ratio {ratio} keeps {compute_n_kept(n, ratio)}, not {budget}")
    if name == "snapkv":
        return SnapKVPress(compression_ratio=ratio, window_size=WINDOW)
    if name == "adakv-snapkv":
        return AdaKVPress(SnapKVPress(compression_ratio=ratio, window_size=WINDOW))
    if name == "pyramidkv":
        return PyramidKVPress(compression_ratio=ratio, window_size=WINDOW)
    if name == "streamingllm":
        return StreamingLLMPress(compression_ratio=ratio)
    raise ValueError(f"unknown press {name!r}; choose snapkv, adakv-snapkv, pyramidkv, streamingllm")


PRESSES = ("snapkv", "adakv-snapkv", "pyramidkv", "streamingllm")


def load(model_dir: Path):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


def new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def cache_entries_bytes(cache) -> tuple[int, int]:
    """(entries, bytes) of the K/V tensors the cache holds: entries = batch x heads x tokens, summed over layers."""
    entries = nbytes = 0
    for layer in cache.layers:
        k, v = layer.keys, layer.values
        entries += k.shape[0] * k.shape[1] * k.shape[2]
        nbytes += k.nbytes + v.nbytes
    return entries, nbytes


def attention_modules(model) -> list[torch.nn.Module]:
    return [layer.self_attn for layer in model.model.layers]


def multiplexed_prefill(model, ids, configs: dict[str, object]) -> dict:
    """One exact prefill; each press's own forward_hook compresses a shadow cache per config.

    Returns ``full`` (the uncompressed cache), ``shadows`` {label: cache}, ``masks`` {label: {attention module:
    AdaKV masked-key indices or None}}, ``seconds`` {label: time in its hook}, ``total_s`` and ``logits`` (last
    position, ``[1, vocab]``).
    """
    for press in configs.values():
        press.post_init_from_model(model)
    modules = attention_modules(model)
    for module in modules:
        module.rotary_emb = model.model.rotary_emb  # what ``with press(model)`` sets up
    shadows = {label: new_cache(model) for label in configs}
    masks: dict[str, dict] = {label: {} for label in configs}
    seconds = dict.fromkeys(configs, 0.0)

    def hook(module, args, kwargs, output):
        main = kwargs["past_key_values"].layers[module.layer_idx]
        for label, press in configs.items():
            layer = shadows[label].layers[module.layer_idx]
            layer.lazy_initialization(main.keys, main.values)
            layer.keys, layer.values = main.keys, main.values  # shared, as the real cache holds them
            module.masked_key_indices = None
            start = time.perf_counter()
            press.forward_hook(module, args, {**kwargs, "past_key_values": shadows[label]}, output)
            seconds[label] += time.perf_counter() - start
            masks[label][module] = getattr(module, "masked_key_indices", None)  # set by AdaKV only
            module.masked_key_indices = None
        return output

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules]
    cache = new_cache(model)
    try:
        start = time.perf_counter()
        with torch.no_grad():
            logits = model(ids, past_key_values=cache, logits_to_keep=1).logits[:, -1]
        total = time.perf_counter() - start
    finally:
        for h in handles:
            h.remove()
    return {"full": cache, "shadows": shadows, "masks": masks, "seconds": seconds, "total_s": total,
            "logits": logits}


def masked_entries(masks: dict) -> int:
    """Entries a cache's AdaKV masks hide, summed over layers (0 for presses that evict)."""
    return sum(int(m[0].numel()) for m in masks.values() if m is not None)


@contextlib.contextmanager
def installed(masks: dict) -> Iterator[None]:
    """Install one cache's AdaKV masks ({attention module: indices or None}) while it decodes; kvpress's attention
    patch reads them from the modules."""
    for module, mask in masks.items():
        module.masked_key_indices = mask
    try:
        yield
    finally:
        for module in masks:
            module.masked_key_indices = None


def real_prefill(model, ids, press):
    """``with press(model)`` prefill (plain prefill when press is None); returns the cache."""
    cache = new_cache(model)
    with torch.no_grad():
        if press is None:
            model(ids, past_key_values=cache, logits_to_keep=1)
        else:
            with press(model):
                model(ids, past_key_values=cache, logits_to_keep=1)
    return cache


def memory_sweep(model, ids_all, args) -> tuple[list[dict], list[dict]]:
    rows, prefills = [], []
    for n in args.memory_tokens:
        ids = ids_all[:, :n]
        configs = {f"{p}@{b}": make_press(p, b, n) for p in args.presses for b in args.budgets if b < n}
        gc.collect()
        out = multiplexed_prefill(model, ids, configs)
        hook_sum = sum(out["seconds"].values())
        base = out["total_s"] - hook_sum
        prefills.append({"tokens": n, "total_s": out["total_s"], "base_prefill_s": base, "hooks_s": hook_sum,
                         "loadavg": os.getloadavg()})
        entries, nbytes = cache_entries_bytes(out["full"])
        rows.append({"tokens": n, "label": "full", "press": "full", "budget": None, "held_entries": entries,
                     "resident_kv_bytes": nbytes, "attended_entries": entries, "uncompressed_kv_bytes": nbytes,
                     "compression_s": 0.0, "overhead_ratio": 1.0})
        full_bytes = nbytes
        for label, cache in out["shadows"].items():
            entries, nbytes = cache_entries_bytes(cache)
            press, budget = label.split("@")
            rows.append({"tokens": n, "label": label, "press": press, "budget": int(budget), "held_entries": entries,
                         "resident_kv_bytes": nbytes, "attended_entries": entries - masked_entries(out["masks"][label]),
                         "uncompressed_kv_bytes": full_bytes, "compression_s": out["seconds"][label],
                         "overhead_ratio": 1.0 + out["seconds"][label] / base})
        print(f"[kvpress] {n} tokens: prefill {base:.1f} s + hooks of {len(configs)} presses {hook_sum:.1f} s",
              flush=True)
        del out
    return rows, prefills


def validate(model, ids_all, rows, args) -> list[dict]:
    """Real ``with press(model)`` runs must hold what the shadows held."""
    checks = []
    n, b = args.validate_tokens, args.validate_budget
    for p in args.presses:
        cache = real_prefill(model, ids_all[:, :n], make_press(p, b, n))
        entries, nbytes = cache_entries_bytes(cache)
        shadow = next((r for r in rows if r["tokens"] == n and r["label"] == f"{p}@{b}"), None)
        checks.append({"tokens": n, "label": f"{p}@{b}", "real_bytes": nbytes,
                       "shadow_bytes": shadow["resident_kv_bytes"] if shadow else None,
                       "match": shadow is not None and shadow["resident_kv_bytes"] == nbytes})
        print(f"[kvpress] validate {p}@{b} at {n}: real {nbytes} B, shadow "
              f"{checks[-1]['shadow_bytes']} B -> {'ok' if checks[-1]['match'] else 'MISMATCH'}", flush=True)
        del cache
    return checks


def e2e_and_decode(model, ids_all, args) -> tuple[list[dict], list[dict]]:
    prefill_rows, decode_rows = [], []
    with torch.no_grad():
        real_prefill(model, ids_all[:, :256], None)  # warm-up
    for n in args.e2e_tokens:
        ids = ids_all[:, :n]
        names = ["full", *args.e2e_presses]
        samples = {name: [] for name in names}
        last: dict[str, tuple[object, dict]] = {}
        for _ in range(args.e2e_rounds):
            for name in names:
                press = None if name == "full" else make_press(name, args.e2e_budget, n)
                gc.collect()
                start = time.perf_counter()
                cache = real_prefill(model, ids, press)
                samples[name].append(time.perf_counter() - start)
                masks = {m: getattr(m, "masked_key_indices", None) for m in attention_modules(model)}
                last[name] = (cache, masks)
                for m in attention_modules(model):
                    m.masked_key_indices = None
        full_med = sorted(samples["full"])[len(samples["full"]) // 2]
        for name in args.e2e_presses:
            med = sorted(samples[name])[len(samples[name]) // 2]
            paired = sorted(s / f for s, f in zip(samples[name], samples["full"], strict=True))
            prefill_rows.append({"tokens": n, "press": name, "budget": args.e2e_budget, "rounds": args.e2e_rounds,
                                 "prefill_full_s": full_med, "prefill_press_s": med, "prefill_ratio": med / full_med,
                                 "paired_ratio_min": paired[0], "paired_ratio_max": paired[-1],
                                 "samples_full_s": samples["full"], "samples_press_s": samples[name]})
            print(f"[kvpress] e2e {name}@{args.e2e_budget} at {n}: prefill ratio {med / full_med:.3f} "
                  f"(paired {paired[0]:.3f}..{paired[-1]:.3f})", flush=True)
        if n in args.decode_tokens:
            token = ids[:, -1:]
            sizes = {name: cache_entries_bytes(cache) for name, (cache, _) in last.items()}

            steps = {name: decode_step(model, token, *last[name]) for name in names}
            default = torch.get_num_threads()
            for threads in args.decode_threads:
                torch.set_num_threads(threads or default)
                timing = interleaved_medians(steps, repeats=args.decode_steps, warmup=2)
                torch.set_num_threads(default)
                for name, t in timing.items():
                    decode_rows.append({"tokens": n, "label": name, "threads": threads or default,
                                        "held_entries": sizes[name][0], "resident_kv_bytes": sizes[name][1],
                                        "loadavg": os.getloadavg(),
                                        **{k.replace("_s", "_ms"): v * 1e3 for k, v in t.items()}})
                line = ", ".join(f"{k} {v['median_s'] * 1e3:.1f}" for k, v in timing.items())
                print(f"[kvpress] decode after {n} tokens, {threads or default} thread(s), ms/token: {line}",
                      flush=True)
        del last
    return prefill_rows, decode_rows


def decode_step(model, token, cache, masks):
    """One decode step on ``cache``, with that cache's AdaKV masks installed on the attention modules."""

    def run():
        with installed(masks), torch.no_grad():
            model(token, past_key_values=cache, logits_to_keep=1)

    return run


def peak_child(args) -> None:
    """Fresh process: load, reset the high-water mark, prefill one config, print one JSON line."""
    model = load(args.model_dir)
    ids = load_ids(args.ids)[:, : args.peak_tokens]
    name = args.peak_child
    press = None if name == "full" else make_press(name, args.e2e_budget, ids.shape[1])
    with torch.no_grad():
        real_prefill(model, ids[:, :64], None)  # pages in the mmapped weights and one-time buffers
    gc.collect()
    before = rss_bytes()
    reset_peak()
    cache = real_prefill(model, ids, press)
    peak = peak_bytes()
    entries, nbytes = cache_entries_bytes(cache)
    print(json.dumps({"tokens": ids.shape[1], "label": name, "budget": None if press is None else args.e2e_budget,
                      "rss_before_bytes": before, "peak_bytes": peak, "peak_over_before_bytes": peak - before,
                      "resident_kv_bytes": nbytes, "held_entries": entries}))


def peak_runs(args) -> list[dict]:
    rows = []
    for spec in args.peak:
        tokens, names = spec.split(":")
        for name in names.split(","):
            cmd = [sys.executable, __file__, "--model-dir", str(args.model_dir), "--ids", str(args.ids),
                   "--peak-child", name, "--peak-tokens", tokens, "--e2e-budget", str(args.e2e_budget)]
            done = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"peak child {name}@{tokens} failed:\n{done.stderr[-3000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"[kvpress] peak {name} at {tokens}: +{row['peak_over_before_bytes'] / 2**20:.0f} MiB over the "
                  f"loaded model (cache holds {row['resident_kv_bytes'] / 2**20:.1f} MiB)", flush=True)
    return rows


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def names(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="lavakv.models.converted_dir(name)")
    parser.add_argument("--ids", type=Path, required=True, help="token ids written by benchmarks/prompts.py")
    parser.add_argument("--model-name", default="smollm2-135m")
    parser.add_argument("--presses", type=names, default=list(PRESSES))
    parser.add_argument("--memory-tokens", type=ints, default=ints("1024,2048,4096,8192,16384"))
    parser.add_argument("--budgets", type=ints, default=ints("64,128,512"))
    parser.add_argument("--validate-tokens", type=int, default=2048, help="0: skip the real-run check")
    parser.add_argument("--validate-budget", type=int, default=128)
    parser.add_argument("--e2e-tokens", type=ints, default=ints("4096"))
    parser.add_argument("--e2e-presses", type=names, default=names("snapkv,adakv-snapkv"))
    parser.add_argument("--e2e-budget", type=int, default=128)
    parser.add_argument("--e2e-rounds", type=int, default=3)
    parser.add_argument("--decode-tokens", type=ints, default=ints("4096"), help="subset of --e2e-tokens")
    parser.add_argument("--decode-steps", type=int, default=20)
    parser.add_argument("--decode-threads", type=ints, default=ints("0,1"), help="0: torch's default")
    parser.add_argument("--peak", nargs="*", default=[], help="TOKENS:CONFIG,... e.g. 8192:full,snapkv,adakv-snapkv")
    parser.add_argument("--peak-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--peak-tokens", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.peak_child:
        peak_child(args)
        return
    model = load(args.model_dir)
    ids_all = load_ids(args.ids)
    memory, prefills = memory_sweep(model, ids_all, args) if args.memory_tokens else ([], [])
    checks = validate(model, ids_all, memory, args) if args.validate_tokens else []
    e2e, decode = e2e_and_decode(model, ids_all, args) if args.e2e_tokens else ([], [])
    peaks = peak_runs(args) if args.peak else []
    out = args.out or Path(f"benchmarks/results/kvpress_{args.model_name}.json")
    cfg = model.config
    write_result(out, {
        "argv": sys.argv, "model": args.model_name, "model_dir": str(args.model_dir), "kvpress": version("kvpress"),
        "prompt_sha256_16": ids_digest(ids_all), "window": WINDOW, "layers": cfg.num_hidden_layers,
        "kv_heads": cfg.num_key_value_heads, "loadavg_end": os.getloadavg(),
        "prefills": prefills, "memory": memory, "validation": checks, "e2e": e2e, "decode": decode, "peak": peaks,
    })
    print(f"[kvpress] wrote {out}")


if __name__ == "__main__":
    main()
