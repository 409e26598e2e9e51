"""Chunked prefill vs exact prefill at the same final budget: needle retrieval by depth and the first answer token.

For each haystack length and needle depth, one prompt (haystack + question, query-aware) is answered uncompressed,
with the method after an exact prefill, and with the method after a chunked prefill (``chunk_size=C``) for each C;
each answer is scored on whether it contains the needle's value, and the first generated token's logits are
compared with the uncompressed model's (KL and top-1). Prefill seconds are recorded side by side in one run. Peak
memory is measured separately by ``peak_memory.py`` (configs ``NAME/cC``).

    python benchmarks/chunked_prefill.py --lengths 4096,8192 --chunks 512,2048 --method lava --budget 256
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from common import write_result


def render(res: dict) -> str:
    """Markdown tables of a result file: needle found per configuration x depth, first-token KL, prefill s."""
    env = res["environment"]
    lines = [f"**Chunked prefill, `{res['model']}`** (`{env['command']}`, {env['date']}, git `{env['git_commit']}`): "
             f"{res['method']} at B = {res['budget']}, query-aware needle (answer contains the value), "
             f"{res['max_new_tokens']} new tokens.", ""]
    for length in res["lengths"]:
        rows = [r for r in res["rows"] if r["length"] == length]
        depths = sorted({r["depth"] for r in rows})
        configs = list(dict.fromkeys(r["config"] for r in rows))
        lines += [f"{length} tokens:", "", "| config | " + " | ".join(f"depth {d:g}" for d in depths)
                  + " | found | mean first-token KL | mean prefill s |",
                  "|---" * (len(depths) + 4) + "|"]
        for config in configs:
            mine = [r for r in rows if r["config"] == config]
            cells = ["yes" if next(r for r in mine if r["depth"] == d)["found"] else "no" for d in depths]
            kl = sum(r["first_token_kl"] for r in mine) / len(mine)
            seconds = sum(r["prefill_seconds"] for r in mine) / len(mine)
            lines.append(f"| {config} | " + " | ".join(cells)
                         + f" | {sum(r['found'] for r in mine)}/{len(mine)} | {kl:.4f} | {seconds:.1f} |")
        lines.append("")
    return "\n".join(lines)


def render_peak(res: dict) -> str:
    """Markdown table of a ``peak_memory.py`` result file with chunked configs (``NAME/cC``)."""
    env = res["environment"]
    lines = [f"**Peak memory during prefill, `{res['model']}`** (`{env['command']}`, {env['date']}, git "
             f"`{env['git_commit']}`): peak RSS above the loaded model, each config in a fresh process run one after "
             "the other (prefill seconds are indicative, not side by side).", "",
             "| config | tokens | peak over model MiB | cache holds after MiB | prefill s |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['label']} | {r['tokens']} | {r['peak_over_before_bytes'] / 2**20:.0f} | "
                     f"{r['resident_kv_bytes'] / 2**20:.1f} | {r['prefill_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", default="4096,8192")
    parser.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9")
    parser.add_argument("--chunks", default="512,2048")
    parser.add_argument("--method", default="lava")
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/chunked_prefill_smollm2-135m.json"))
    parser.add_argument("--render", type=Path, default=None, help="print the tables of a result file and exit")
    parser.add_argument("--render-peak", type=Path, default=None,
                        help="print the table of a peak_memory.py result file with chunked configs and exit")
    args = parser.parse_args()
    if args.render_peak:
        import json

        print(render_peak(json.loads(args.render_peak.read_text())))
        return
    if args.render:
        import json

        print(render(json.loads(args.render.read_text())))
        return

    import lavakv
    from lavakv.generation import generate_many
    from lavakv.haystack import build_haystack

    model, tokenizer = lavakv.load_model(args.model)
    lengths = [int(x) for x in args.lengths.split(",")]
    chunks = [int(x) for x in args.chunks.split(",")]
    configs = {"full": None, args.method: lavakv.method(args.method, budget=args.budget)}
    configs.update({f"{args.method}/c{c}": lavakv.method(args.method, budget=args.budget, chunk_size=c)
                    for c in chunks})
    rows = []
    started = time.perf_counter()
    for length in lengths:
        for depth in (float(x) for x in args.depths.split(",")):
            hay = build_haystack(tokenizer, length, depth=depth)
            results = generate_many(model, tokenizer, hay.context, question=hay.question,
                                    methods=list(configs.values()), max_new_tokens=args.max_new_tokens)
            reference = torch.log_softmax(results[0].first_token_logits.double(), -1)
            for (config, _), result in zip(configs.items(), results, strict=True):
                mine = torch.log_softmax(result.first_token_logits.double(), -1)
                rows.append({
                    "length": length, "depth": depth, "config": config, "found": hay.answer in result.text,
                    "text": result.text, "first_token_kl": float((reference.exp() * (reference - mine)).sum()),
                    "first_token_top1": bool(reference.argmax() == mine.argmax()),
                    "prefill_seconds": result.prefill_seconds, "kept_entries": result.kept_entries,
                    "resident_kv_bytes": result.resident_kv_bytes,
                })
                print(f"[chunked] {length} depth {depth:g} {config}: found={rows[-1]['found']} "
                      f"KL={rows[-1]['first_token_kl']:.4f} prefill {result.prefill_seconds:.1f} s", flush=True)
    res = {"kind": "chunked_prefill", "argv": sys.argv, "model": args.model, "method": args.method,
           "budget": args.budget, "lengths": lengths, "chunks": chunks, "max_new_tokens": args.max_new_tokens,
           "rows": rows, "wall_s": time.perf_counter() - started}
    write_result(args.out, res)
    print(render({**res, "environment": __import__("common").environment()}))


if __name__ == "__main__":
    main()
