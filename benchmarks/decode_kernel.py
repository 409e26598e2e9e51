"""Decode-step attention: lavakv's ragged attention vs dense SDPA over the same number of kept entries.

One decode query per sequence against a layer that holds, per KV head, ``budget`` kept prompt entries on average
(ragged: lengths drawn around the mean, total equal to the dense case) plus ``tail`` decoded tokens. Both ragged
strategies (per-segment matmuls, one flat masked matmul) are timed beside the one ``ragged_attention`` picks.
Times are medians of interleaved repeats in one process; the ratio ragged / dense is what matters on a shared
machine.

    python benchmarks/decode_kernel.py --out benchmarks/results/decode_kernel.json
    python benchmarks/decode_kernel.py --threads 1 --out benchmarks/results/decode_kernel_1thread.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import interleaved_medians, write_result

from lavakv.ragged_attention import FLAT_WASTE_LIMIT, flat_attention, flat_waste, ragged_attention, segment_attention
from lavakv.storage import RaggedKV


def case(batch: int, kv_heads: int, group: int, head_dim: int, budget: int, tail: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(budget // 2, 3 * budget // 2 + 1, (batch, kv_heads), generator=g)
    lengths = (lengths.double() * (budget * batch * kv_heads / lengths.sum())).round().long().clamp_min(1)
    total = int(lengths.sum())
    dense_len = total // (batch * kv_heads)
    keys = torch.randn(total, head_dim, generator=g)
    values = torch.randn(total, head_dim, generator=g)
    prefix = RaggedKV(keys, values, lengths)
    tail_k = torch.randn(batch, kv_heads, tail, head_dim, generator=g)
    tail_v = torch.randn(batch, kv_heads, tail, head_dim, generator=g)
    dense_k = torch.randn(batch, kv_heads, dense_len + tail, head_dim, generator=g)
    dense_v = torch.randn(batch, kv_heads, dense_len + tail, head_dim, generator=g)
    query = torch.randn(batch, kv_heads * group, 1, head_dim, generator=g)
    scale = head_dim**-0.5

    def dense():
        q = query.reshape(batch, kv_heads, group, head_dim)  # transformers' pack_gqa for one decode token
        return torch.nn.functional.scaled_dot_product_attention(q, dense_k, dense_v, scale=scale)

    def ragged():
        return ragged_attention(query, prefix, tail_k, tail_v, None, scale)

    variants = {"dense_sdpa": dense, "ragged": ragged,
                "segments": lambda: segment_attention(query, prefix, tail_k, tail_v, None, scale)}
    waste = flat_waste(query, prefix)
    if waste <= 4 * FLAT_WASTE_LIMIT:  # far past the limit the flat strategy is only slower
        variants["flat"] = lambda: flat_attention(query, prefix, tail_k, tail_v, None, scale)
    with torch.no_grad():
        timing = interleaved_medians(variants, repeats=repeats)
    return {
        "batch": batch, "kv_heads": kv_heads, "group": group, "head_dim": head_dim, "mean_budget": budget,
        "tail": tail, "entries": total, "timing": timing,
        "strategy": "flat" if waste <= FLAT_WASTE_LIMIT else "segments", "flat_waste": waste,
        "ragged_over_dense": timing["ragged"]["median_s"] / timing["dense_sdpa"]["median_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decode_kernel.json"))
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default); 1 resists a shared machine's contention")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = []
    # smollm2-135m-like (3 KV heads, G=3, d=64) and qwen2.5-1.5b-like (2 KV heads, G=6, d=128) layers at batch 1,
    # and a Llama-3-8B-like layer (8 KV heads, G=4, d=128) at batch 4
    shapes = [(1, 3, 3, 64, (128, 512, 1024, 4096)), (1, 2, 6, 128, (128, 512, 1024, 4096)),
              (4, 8, 4, 128, (128, 1024))]
    for batch, kv_heads, group, head_dim, budgets in shapes:
        for budget in budgets:
            result = case(batch, kv_heads, group, head_dim, budget, tail=32, repeats=args.repeats // batch)
            cases.append(result)
            print(f"b={batch} H_kv={kv_heads} G={group} d={head_dim} B={budget}: ragged/dense = "
                  f"{result['ragged_over_dense']:.2f} ({result['strategy']}; dense "
                  f"{result['timing']['dense_sdpa']['median_s'] * 1e6:.0f} us)")
    write_result(args.out, {"cases": cases, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
