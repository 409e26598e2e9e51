"""Every preset at one budget on one prompt: kept entries, resident KV bytes, prefill time ratio to `full`.

All methods see the same prompt in one process; each prefill is repeated and the runs are interleaved
(full, method, full, method, ...), so the ratio compares like with like on a noisy machine.

    python benchmarks/presets.py --model smollm2-135m --tokens 4096 --budget 128
    python benchmarks/presets.py --model tiny --tokens 2048 --budget 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from common import write_result

import lavakv


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
    with m.attach(model) as session:
        cache = session.cache()
        start = time.perf_counter()
        with torch.no_grad():
            model(ids, past_key_values=cache, logits_to_keep=1)
        seconds = time.perf_counter() - start
        st = session.stats()
    return seconds, st


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="a lavakv model name, an HF id/dir, or 'tiny'")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--budget", type=int, default=128)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(m for m in lavakv.list_methods() if m != "full"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.model == "tiny":
        model, text_ids = tiny_model(), None
    else:
        from lavakv.models import load_model

        model, tokenizer = load_model(args.model)
        text = Path(torch.__file__).with_name("functional.py").read_text()  # real text shipped with torch
        text_ids = tokenizer(text, return_tensors="pt").input_ids[:, : args.tokens]
    ids = text_ids if text_ids is not None else torch.randint(3, 1000, (1, args.tokens))
    rows = []
    for name in args.methods.split(","):
        full_times, method_times = [], []
        for _ in range(args.repeats):
            full_times.append(prefill(model, ids, "full", None, args.window)[0])
            seconds, st = prefill(model, ids, name, args.budget, args.window)
            method_times.append(seconds)
        full_s, method_s = statistics.median(full_times), statistics.median(method_times)
        row = {
            "method": name, "budget": args.budget, "prompt_tokens": int(ids.shape[1]),
            "kept_entries": st.kept_entries, "resident_kv_bytes": st.resident_kv_bytes,
            "uncompressed_kv_bytes": st.uncompressed_kv_bytes, "prefill_full_s": full_s, "prefill_method_s": method_s,
            "prefill_ratio": method_s / full_s, "compression_s": st.compression_seconds,
        }
        rows.append(row)
        print(f"{name:20s} kept={row['kept_entries']:8d} resident={row['resident_kv_bytes'] / 2**20:8.2f} MiB "
              f"(of {row['uncompressed_kv_bytes'] / 2**20:.2f}) prefill ratio={row['prefill_ratio']:.3f} "
              f"(compression {row['compression_s'] * 1e3:.0f} ms of {method_s * 1e3:.0f} ms)", flush=True)
    out = args.out or Path(f"benchmarks/results/presets_{args.model}_{args.tokens}_{args.budget}.json")
    write_result(out, {"rows": rows, "argv": sys.argv})


if __name__ == "__main__":
    main()
