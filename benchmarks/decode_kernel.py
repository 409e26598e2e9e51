"""Decode-step attention: lavakv's ragged attention vs dense SDPA over the same number of kept entries.

One decode query per sequence against a layer that holds, per KV head, ``budget`` kept prompt entries on average
(ragged: lengths drawn around the mean, total equal to the dense case) plus ``tail`` decoded tokens. The ragged
strategies (the native CPU kernel, per-segment matmuls, one flat masked matmul) are timed beside the one
``ragged_attention`` picks, and on CUDA with flash-attention installed the varlen path too. Every ragged output
is first checked against a float64 computation over the same entries. Times are medians of interleaved repeats
in one process; the ratio ragged / dense is what matters on a shared machine.

    python benchmarks/decode_kernel.py --out benchmarks/results/decode_kernel.json
    python benchmarks/decode_kernel.py --threads 1 --out benchmarks/results/decode_kernel_1thread.json
    python benchmarks/decode_kernel.py --device cuda --dtype bfloat16 --out benchmarks/results/decode_kernel_cuda.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import write_result

from lavakv.attention.ragged import (
    FLAT_WASTE_LIMIT,
    flash_varlen_attention,
    flash_varlen_available,
    flat_attention,
    flat_waste,
    native_applies,
    native_attention,
    ragged_attention,
    segment_attention,
    strategy,
)
from lavakv.cache.storage import RaggedKV
from lavakv.timing import interleaved_medians

# allowed max |ragged - float64| relative to max |float64 output|, per dtype
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def reference(query: torch.Tensor, prefix: RaggedKV, tail_k: torch.Tensor, tail_v: torch.Tensor, scale: float):
    """float64 attention of each query head over its KV head's kept entries + tail, ``[batch, 1, q_heads, d]``."""
    b, hq, _, d = query.shape
    h = prefix.lengths.shape[1]
    out = torch.empty(b, 1, hq, tail_v.shape[-1], dtype=torch.float64, device=query.device)
    for s, (start, n) in enumerate(prefix.segments()):
        i, kv = divmod(s, h)
        keys = torch.cat([prefix.keys[start : start + n], tail_k[i, kv]]).double()
        values = torch.cat([prefix.values[start : start + n], tail_v[i, kv]]).double()
        heads = slice(kv * (hq // h), (kv + 1) * (hq // h))
        probs = torch.softmax(query[i, heads, 0].double() @ keys.T * scale, dim=-1)
        out[i, 0, heads] = probs @ values
    return out


def case(batch: int, kv_heads: int, group: int, head_dim: int, budget: int, tail: int, repeats: int,
         device: torch.device, dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(budget // 2, 3 * budget // 2 + 1, (batch, kv_heads), generator=g)
    lengths = (lengths.double() * (budget * batch * kv_heads / lengths.sum())).round().long().clamp_min(1)
    total = int(lengths.sum())
    dense_len = total // (batch * kv_heads)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    prefix = RaggedKV(randn(total, head_dim), randn(total, head_dim), lengths.to(device))
    tail_k, tail_v = randn(batch, kv_heads, tail, head_dim), randn(batch, kv_heads, tail, head_dim)
    dense_k = randn(batch, kv_heads, dense_len + tail, head_dim)
    dense_v = randn(batch, kv_heads, dense_len + tail, head_dim)
    query = randn(batch, kv_heads * group, 1, head_dim)
    scale = head_dim**-0.5

    def dense():
        q = query.reshape(batch, kv_heads, group, head_dim)  # transformers' pack_gqa for one decode token
        return torch.nn.functional.scaled_dot_product_attention(q, dense_k, dense_v, scale=scale)

    ragged = {"ragged": lambda: ragged_attention(query, prefix, tail_k, tail_v, None, scale)}
    if native_applies(query, prefix, tail_k, tail_v):
        ragged["native"] = lambda: native_attention(query, prefix, tail_k, tail_v, None, scale)
    ragged["segments"] = lambda: segment_attention(query, prefix, tail_k, tail_v, None, scale)
    waste = flat_waste(query, prefix)
    if waste <= 4 * FLAT_WASTE_LIMIT:  # far past the limit the flat strategy is only slower
        ragged["flat"] = lambda: flat_attention(query, prefix, tail_k, tail_v, None, scale)
    if flash_varlen_available(query):
        ragged["flash_varlen"] = lambda: flash_varlen_attention(query, prefix, tail_k, tail_v, scale)
    exact = reference(query, prefix, tail_k, tail_v, scale)
    errors = {}
    with torch.no_grad():
        for name, fn in ragged.items():
            errors[name] = float((fn().double() - exact).abs().max() / exact.abs().max())
            if errors[name] > TOLERANCE[dtype]:
                raise SystemExit(f"{name} differs from the float64 reference by {errors[name]:.2e} (relative)")
        # the device is synchronised around each call: on CUDA the kernels are timed, not their launch
        timing = interleaved_medians({"dense_sdpa": dense, **ragged}, repeats=repeats, device=device)
    return {
        "batch": batch, "kv_heads": kv_heads, "group": group, "head_dim": head_dim, "mean_budget": budget,
        "tail": tail, "entries": total, "timing": timing, "max_relative_error": errors,
        "strategy": strategy(query, prefix, tail_k, tail_v, None), "flat_waste": waste,
        "ragged_over_dense": timing["ragged"]["median_s"] / timing["dense_sdpa"]["median_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decode_kernel.json"))
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default); 1 resists a shared machine's contention")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=[str(t).removeprefix("torch.") for t in TOLERANCE])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cases = []
    # smollm2-135m-like (3 KV heads, G=3, d=64) and qwen2.5-1.5b-like (2 KV heads, G=6, d=128) layers at batch 1,
    # and a Llama-3-8B-like layer (8 KV heads, G=4, d=128) at batch 4
    shapes = [(1, 3, 3, 64, (128, 512, 1024, 4096)), (1, 2, 6, 128, (128, 512, 1024, 4096)),
              (4, 8, 4, 128, (128, 1024))]
    for batch, kv_heads, group, head_dim, budgets in shapes:
        for budget in budgets:
            result = case(batch, kv_heads, group, head_dim, budget, tail=32, repeats=args.repeats // batch,
                          device=device, dtype=dtype)
            cases.append(result)
            t = result["timing"]
            flash = (f"; flash varlen / dense = {t['flash_varlen']['median_s'] / t['dense_sdpa']['median_s']:.2f}"
                     if "flash_varlen" in t else "")
            print(f"b={batch} H_kv={kv_heads} G={group} d={head_dim} B={budget}: ragged/dense = "
                  f"{result['ragged_over_dense']:.2f} ({result['strategy']}; dense "
                  f"{t['dense_sdpa']['median_s'] * 1e6:.0f} us){flash}", flush=True)
    write_result(args.out, {"cases": cases, "threads": torch.get_num_threads(), "device": str(device),
                            "dtype": args.dtype,
                            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None})


if __name__ == "__main__":
    main()
