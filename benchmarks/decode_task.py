"""Decode-time eviction on a long-answer task whose answer depends on the model's own earlier output.

The task (generated offline, one seeded generator per sample): start with ``x = s`` and apply ``--steps``
operations ("add 7", "subtract 3", ...; every intermediate value stays in 1..99) in order, writing one line
``Step k: x = ...`` per operation, then ``Final: x = <value>``. Step ``k`` needs operation ``k`` from the prompt and
the value the model itself wrote at step ``k - 1``, so a cache that loses either goes wrong from there on. The
prompt is one chat user turn; decoding is greedy (``model.generate``, ``do_sample=False``), left-padded batches.

Configurations: ``full`` (plain transformers cache, no lavakv) and every method x decode budget ``D`` of
``--methods`` x ``--decode-budgets``, each as ``lavakv.method(name, budget=D - interval, decode_budget=D,
decode_interval=interval)`` (the prompt is compressed to ``D - interval`` if longer, then the cache never holds
more than ``D`` entries per KV head on average).

Scores per sample: ``final`` (1 if the last ``Final ...`` line ends with the true value), ``steps`` (fraction of
step lines whose last number is the true running value); ``render`` recomputes them from the stored answers. Every
configuration sees the same samples, so each is compared with ``full`` pairwise (bootstrap 95 % interval of the
mean per-sample difference, as ``lavakv report``).

Resumable: each configuration's records are written to the result file as soon as it finishes; a rerun with the
same settings skips finished configurations (``--samples`` larger than before runs everything again).

    python benchmarks/decode_task.py run --model qwen2.5-coder-1.5b --samples 30 --batch 15
    python benchmarks/decode_task.py render --model qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import torch
from common import write_result
from decode_eviction import ints

import lavakv
from lavakv.compat import cache_kwargs
from lavakv.eval.intervals import bootstrap_interval, paired_comparison

RESULTS = Path("benchmarks/results/decode_eviction")
# the last number of a "Final ..." line and of each "Step k ..." line (markdown emphasis and a full stop allowed)
FINAL = re.compile(r"Final\b[^\n]*?(-?\d+)\W*$", re.MULTILINE)
STEP = re.compile(r"Step\s+(\d+)\W*:[^\n]*?(-?\d+)\W*$", re.MULTILINE)


def make_sample(seed: int, steps: int) -> dict:
    """One task sample: the prompt text, the true running values ``values[k]`` after step ``k`` (1-based, index 0 is
    the start) and the final value."""
    rng = random.Random(f"decode-task:{seed}")
    x = rng.randint(10, 30)
    values, ops = [x], []
    for _ in range(steps):
        amount = rng.randint(2, 9)
        add = x - amount < 1 or (x + amount <= 99 and rng.random() < 0.5)
        x = x + amount if add else x - amount
        ops.append(f"{'add' if add else 'subtract'} {amount}")
        values.append(x)
    listing = "\n".join(f"{k + 1}. {op}" for k, op in enumerate(ops))
    prompt = (f"Start with x = {values[0]}. Apply the operations below in order. After each operation write one line "
              f"'Step k: x = <value>' with the new value of x, and after the last step write 'Final: x = <value>'."
              f"\n\nOperations:\n{listing}")
    return {"id": f"s{seed}", "prompt": prompt, "values": values, "final": values[-1]}


def score(sample: dict, text: str) -> dict[str, float]:
    """``final``: 1.0 when the last ``Final ...`` line ends with the true value; ``steps``: the share of steps whose
    line (the last one numbered ``k``) ends with the true value after step ``k``."""
    finals = FINAL.findall(text)
    final = float(bool(finals) and int(finals[-1]) == sample["final"])
    written = {int(k): int(v) for k, v in STEP.findall(text)}
    values = sample["values"]
    right = sum(written.get(k) == values[k] for k in range(1, len(values)))
    return {"final": final, "steps": right / (len(values) - 1)}


def configurations(names: list[str], decode_budgets: list[int], interval: int) -> list[tuple[str, object]]:
    """``[(label, method or None for full), ...]``."""
    out: list[tuple[str, object]] = [("full", None)]
    for d in decode_budgets:
        for name in names:
            out.append((f"{name}@D{d}", lavakv.method(name, budget=d - interval, decode_budget=d,
                                                      decode_interval=interval)))
    return out


def generate_batch(model, tokenizer, prompts: list[str], method, max_new_tokens: int) -> tuple[list[str], dict]:
    """Greedy answers to ``prompts`` (one left-padded batch) with ``method``'s cache (None: transformers' own), and
    the cache's end state (held entries per head, resident KV bytes, evictions)."""
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                  repetition_penalty=None, pad_token_id=tokenizer.pad_token_id)
    state: dict = {"prompt_tokens": enc.attention_mask.sum(1).tolist()}
    with torch.no_grad():
        if method is None:
            out = model.generate(**enc, **kwargs)
        else:
            with method.attach(model) as session:
                cache = session.cache()
                out = model.generate(**enc, **cache_kwargs(cache), **kwargs)
                stats = session.stats(cache)
                state.update(held_per_head=stats.held_per_head, resident_kv_bytes=stats.resident_kv_bytes,
                             decode_evictions=stats.decode_evictions)
    new = out[:, enc.input_ids.shape[1]:]
    return tokenizer.batch_decode(new, skip_special_tokens=True), state


def run(args) -> Path:
    model, tokenizer = lavakv.load_model(args.model)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    samples = [make_sample(args.seed * 100_003 + i, args.steps) for i in range(args.samples)]
    path = args.out or RESULTS / f"task_{args.model}.json"
    settings = {"model": args.model, "samples": args.samples, "steps": args.steps, "seed": args.seed,
                "interval": args.interval, "max_new_tokens": args.max_new_tokens, "batch": args.batch}
    done: dict = {}
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("settings") == settings:
            done = old["configurations"]
    for label, method in configurations(args.methods.split(","), args.decode_budgets, args.interval):
        if label in done:
            print(f"{label}: done", file=sys.stderr)
            continue
        start, records = time.perf_counter(), []
        for at in range(0, len(samples), args.batch):
            chunk = samples[at:at + args.batch]
            texts, state = generate_batch(model, tokenizer, [s["prompt"] for s in chunk], method, args.max_new_tokens)
            for i, (sample, text) in enumerate(zip(chunk, texts, strict=True)):
                records.append({"id": sample["id"], "text": text, **score(sample, text),
                                "prompt_tokens": state["prompt_tokens"][i],
                                **({"held_per_head": state["held_per_head"][i]} if "held_per_head" in state else {})})
            print(f"{label}: {len(records)}/{len(samples)} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        done[label] = {"records": records, "seconds": time.perf_counter() - start}
        write_result(path, {"kind": "decode_task", "settings": settings, "configurations": done,
                            "example_prompt": samples[0]["prompt"]})
    return path


def render(res: dict) -> list[str]:
    """Markdown lines: per configuration, mean final-answer and step accuracy with 95 % intervals, and the paired
    differences from ``full``."""
    cfg, s = res["configurations"], res["settings"]
    for entry in cfg.values():  # scores from the stored answers with this file's scoring
        for r in entry["records"]:
            r.update(score(make_sample(int(r["id"][1:]), s["steps"]), r["text"]))
    full = {r["id"]: r["final"] for r in cfg["full"]["records"]}
    full_steps = {r["id"]: r["steps"] for r in cfg["full"]["records"]}
    env = res["environment"]
    lines = [f"**Long-answer task, `{s['model']}`**: `{env['command']}` ({env['date']}, git `{env['git_commit']}`, "
             f"{sum(c['seconds'] for c in cfg.values()) / 60:.0f} min). {s['samples']} samples of {s['steps']} "
             f"operations, greedy, at most {s['max_new_tokens']} new tokens, decode interval {s['interval']}, prompt "
             "budget B = D - interval. Final answer: the last `Final` line ends with the true value; steps right: "
             "share of the `Step k` lines that end with the true value. Paired: mean per-sample difference from "
             "`full` with its 95 % bootstrap interval; W/T/L: samples better / equal / worse than `full`.", "",
             "| configuration | final answer % [95 % CI] | vs full (paired) | W/T/L | steps right % [95 % CI] "
             "| vs full (paired) | max held/head |",
             "|---|---|---|---|---|---|---|"]
    for label, entry in cfg.items():
        recs = entry["records"]
        final = bootstrap_interval([r["final"] for r in recs]).scaled(100)
        steps = bootstrap_interval([r["steps"] for r in recs]).scaled(100)
        held = max((r.get("held_per_head", float("nan")) for r in recs), default=float("nan"))
        if label == "full":
            pair, pair_steps, wtl = "", "", ""
        else:
            cmp = paired_comparison({r["id"]: r["final"] for r in recs}, full)
            d = cmp.difference.scaled(100)
            pair = f"{d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}] {cmp.verdict}"
            wtl = f"{cmp.wins}/{cmp.ties}/{cmp.losses}"
            cs = paired_comparison({r["id"]: r["steps"] for r in recs}, full_steps).difference.scaled(100)
            pair_steps = f"{cs.mean:+.1f} [{cs.low:+.1f}, {cs.high:+.1f}]"
        lines.append(f"| {label} | {final.mean:.1f} [{final.low:.1f}, {final.high:.1f}] | {pair} | {wtl} | "
                     f"{steps.mean:.1f} [{steps.low:.1f}, {steps.high:.1f}] | {pair_steps} | "
                     f"{'' if held != held else f'{held:.1f}'} |")
    lines += ["", "Methods at the same decode budget, paired (row minus column, final answer, points):", ""]
    labels = [label for label in cfg if label != "full"]
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            if a.split("@")[-1] != b.split("@")[-1]:
                continue
            cmp = paired_comparison({r["id"]: r["final"] for r in cfg[a]["records"]},
                                    {r["id"]: r["final"] for r in cfg[b]["records"]})
            d = cmp.difference.scaled(100)
            lines.append(f"- {a} - {b}: {d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}], W/T/L {cmp.wins}/{cmp.ties}/"
                         f"{cmp.losses}: {cmp.verdict}")
    prompts = [r["prompt_tokens"] for r in cfg["full"]["records"]]
    lines += ["", f"Prompt tokens {min(prompts)}-{max(prompts)}; `full` is transformers' own cache (no lavakv). "
              f"Example prompt:", "", *("    " + line for line in res["example_prompt"].split("\n"))]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["run", "render"])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--steps", type=int, default=12, help="operations per sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=15)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--methods", default="lava,snapkv,h2o,streamingllm")
    parser.add_argument("--decode-budgets", type=ints, default=ints("128,256"))
    parser.add_argument("--interval", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part == "run":
        print(run(args))
    else:
        print("\n".join(render(json.loads((args.out or RESULTS / f"task_{args.model}.json").read_text()))))


if __name__ == "__main__":
    main()
