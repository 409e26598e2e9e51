"""Quality at equal compression vs NVIDIA kvpress: the same prompts, model and decoding on both sides.

lavakv's side draws the prompts with its own task generators (offline RULER tasks and real-code completion),
tokenizes them once and writes the token ids to a requests file; ``kvpress_quality.py`` (in the kvpress venv)
answers them with kvpress's presses; lavakv's methods answer the same ids through ``lavakv.eval.runner
.evaluate_sample``; every answer is scored by the same task scorer. Both sides use one exact prefill per prompt
for all their methods (exact, so each cache equals a separate run's), the last prompt position's logits, greedy
decoding and the model's end-of-sequence ids.

Compression is matched per prompt: kvpress's ``compression_ratio=r`` keeps ``int(n * (1 - r))`` entries per KV
head (n = compressed prompt tokens); lavakv runs ``budget=int(n * (1 - r))`` (tokens per KV head, window
included), i.e. the same number of kept entries per layer on average. What each cache then *holds* is measured
from its tensors (kvpress's AdaKV masks evicted entries but keeps them in memory; lavakv stores what it keeps).

Query-aware: the whole prompt (question included) is compressed. Query-agnostic: the context alone is compressed,
then the question block is fed through the compressed cache (kvpress's pipeline protocol).

    python benchmarks/quality_vs_kvpress.py --model qwen2.5-coder-1.5b --tasks ruler:niah_multikey_2,vt+code \\
        --length 2048 --samples 3 --ratios 0.75,0.9
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import write_result

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODES = ("query-aware", "query-agnostic")


def n_kept(n: int, ratio: float) -> int:
    """Entries per KV head kvpress keeps at ``compression_ratio=ratio`` (``kvpress.utils.compute_n_kept``)."""
    return int(n * (1 - ratio))


def build_requests(tokenizer, model, tasks, args) -> tuple[list[dict], dict]:
    """One request per (task, sample, mode): the token ids both libraries see, plus what scoring needs."""
    from lavakv.generation import stop_ids

    requests, samples = [], {}
    for task in tasks:
        for index in range(len(task)):
            sample = task.sample(index)
            ids = sample.prompt_ids(tokenizer)
            stops = set(stop_ids(model, tokenizer))
            for text in sample.extra_stops:
                encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
                if encoded:
                    stops.add(int(encoded[-1]))
            for mode in args.modes:
                agnostic = mode == "query-agnostic" and bool(ids.rest)
                context = ids.context if agnostic else ids.whole
                key = f"{task.name}|{sample.id}|{mode}"
                samples[key] = (task, sample)
                request = {"key": key, "task": task.name, "sample": sample.id, "mode": mode, "context": context,
                           "rest": ids.rest if agnostic else [], "max_new_tokens": sample.max_new_tokens,
                           "stops": sorted(stops), "ratios": args.ratios}
                # everything the kvpress answers depend on: a stale answer in --work is never reused
                identity = {**request, "model": args.model, "presses": args.presses, "window": args.window}
                request["digest"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
                requests.append(request)
    return requests, samples


def run_kvpress(requests: list[dict], args, model_dir: Path, work: Path) -> dict[str, dict]:
    """Answers of every press from the kvpress venv (resumable through its JSON-lines output)."""
    done = subprocess.run(["bash", str(HERE / "kvpress_env.sh")], capture_output=True, text=True, check=True)
    python = done.stdout.strip().splitlines()[-1]
    spec = work / "requests.json"
    spec.write_text(json.dumps({"presses": args.presses, "window": args.window, "requests": requests}))
    answers = work / "kvpress_answers.jsonl"
    subprocess.run([python, str(HERE / "kvpress_quality.py"), "--model-dir", str(model_dir), "--requests",
                    str(spec), "--out", str(answers)], cwd=HERE, check=True)
    by_digest = {}
    for line in answers.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        by_digest[record.get("digest")] = record
    return {r["key"]: by_digest[r["digest"]] for r in requests}


def run_lavakv(model, tokenizer, requests: list[dict], samples: dict, args) -> dict[str, dict]:
    """Answers of lavakv's methods (one shared prefill per request)."""
    from lavakv import method
    from lavakv.eval.runner import evaluate_sample

    out = {}
    with torch.no_grad(), method("full").attach(model) as session:
        for i, request in enumerate(requests, 1):
            task, sample = samples[request["key"]]
            n = len(request["context"])
            runs = {"full": method("full")}
            for name in args.methods:
                for ratio in args.ratios:
                    runs[f"{name}@{ratio!r}"] = method(name, budget=n_kept(n, ratio), window=args.window)
            start = time.perf_counter()
            records = evaluate_sample(model, tokenizer, session, task, sample, list(runs.values()),
                                      request["mode"] == "query-agnostic")
            out[request["key"]] = dict(zip(runs, records, strict=True))
            print(f"[lavakv] {i}/{len(requests)} {request['key']}: {time.perf_counter() - start:.0f} s", flush=True)
    return out


def rows_from(requests, samples, ours, theirs, tokenizer) -> list[dict]:
    """One row per (request, library, config): prediction, score, kept and held entries/bytes."""
    from lavakv.generation import decode_text

    rows = []
    for request in requests:
        key = request["key"]
        task, sample = samples[key]
        n = len(request["context"])
        for label, record in ours[key].items():
            name, _, ratio = label.partition("@")
            rows.append({"key": key, "task": task.name, "mode": request["mode"], "library": "lavakv",
                         "method": name, "ratio": float(ratio) if ratio else None, "compressed_tokens": n,
                         "kept_per_head": n_kept(n, float(ratio)) if ratio else n,
                         "prediction": record["prediction"], "score": _headline(task, record["scores"]),
                         "held_entries": record["kept_entries"], "attended_entries": record["kept_entries"],
                         "resident_kv_bytes": record["resident_kv_bytes"]})
        for label, answer in theirs[key]["answers"].items():
            name, _, ratio = label.partition("@")
            prediction = decode_text(tokenizer, answer["tokens"])
            rows.append({"key": key, "task": task.name, "mode": request["mode"], "library": "kvpress",
                         "method": name, "ratio": float(ratio) if ratio else None, "compressed_tokens": n,
                         "kept_per_head": n_kept(n, float(ratio)) if ratio else n,
                         "prediction": prediction, "score": _headline(task, task.score(sample, prediction)),
                         "held_entries": answer["held_entries"], "attended_entries": answer["attended_entries"],
                         "resident_kv_bytes": answer["resident_kv_bytes"]})
    return rows


def _headline(task, scores: dict[str, float]) -> float:
    return 100.0 * scores[task.score_name]


def summary(rows: list[dict]) -> list[dict]:
    """Mean score per (mode, library, method, ratio) per task and overall, with mean bytes held."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["mode"], r["library"], r["method"], r["ratio"]), []).append(r)
    out = []
    for (mode, library, name, ratio), members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        by_task: dict[str, list[float]] = {}
        for r in members:
            by_task.setdefault(r["task"], []).append(r["score"])
        out.append({"mode": mode, "library": library, "method": name, "ratio": ratio, "samples": len(members),
                    "score": statistics.fmean(r["score"] for r in members),
                    "by_task": {t: statistics.fmean(v) for t, v in by_task.items()},
                    "resident_kv_bytes": statistics.fmean(r["resident_kv_bytes"] for r in members),
                    "held_entries": statistics.fmean(r["held_entries"] for r in members),
                    "attended_entries": statistics.fmean(r["attended_entries"] for r in members)})
    return out


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def names(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--tasks", default="ruler:niah_multikey_2,vt+code", help="lavakv eval --task syntax")
    parser.add_argument("--length", type=int, default=2048, help="prompt tokens (ruler) / context cap (code)")
    parser.add_argument("--samples", type=int, default=3, help="samples per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratios", type=floats, default=floats("0.75,0.9"), help="kvpress compression ratios")
    parser.add_argument("--modes", type=names, default=list(MODES))
    parser.add_argument("--methods", type=names, default=names("lava,ada-snapkv"), help="lavakv presets")
    parser.add_argument("--presses", type=names, default=names("snapkv,adakv-snapkv,expected-attention"))
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lavakv-quality-vs-kvpress"),
                        help="requests and kvpress answers (kvpress answers are resumed from here)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "quality_vs_kvpress.json")
    args = parser.parse_args()
    for mode in args.modes:
        if mode not in MODES:
            parser.error(f"--modes: unknown mode {mode!r}; choose from {', '.join(MODES)}")
    logging.basicConfig(level=logging.WARNING)
    from lavakv.eval.tasks import TaskOptions, build_tasks
    from lavakv.models import converted_dir, load_model

    started = time.perf_counter()
    model, tokenizer = load_model(args.model)
    tasks = build_tasks(args.tasks, tokenizer, TaskOptions(lengths=[args.length], samples=args.samples,
                                                           seed=args.seed))
    requests, samples = build_requests(tokenizer, model, tasks, args)
    args.work.mkdir(parents=True, exist_ok=True)
    ours = run_lavakv(model, tokenizer, requests, samples, args)
    del model  # the kvpress process loads its own copy
    gc.collect()
    theirs = run_kvpress(requests, args, converted_dir(args.model), args.work)
    rows = rows_from(requests, samples, ours, theirs, tokenizer)
    agree = [r for r in rows if r["method"] == "full"]
    from lavakv import method

    first = next(iter(theirs.values()))
    write_result(args.out, {
        "argv": sys.argv, "model": args.model, "tasks": [t.name for t in tasks], "length": args.length,
        "samples_per_task": args.samples, "seed": args.seed, "ratios": args.ratios, "modes": args.modes,
        "window": args.window, "score_names": {t.name: t.score_name for t in tasks},
        "task_settings": {t.name: t.identity() for t in tasks},
        "lavakv_methods": {name: method(name, budget=256, window=args.window).describe() for name in args.methods},
        "kvpress_presses": first["presses"],
        "kvpress": first["kvpress"], "wall_seconds": time.perf_counter() - started,
        "full_predictions_agree": _full_agreement(agree),
        "summary": summary(rows), "rows": rows,
    })
    print(f"wrote {args.out}")


def _full_agreement(rows: list[dict]) -> dict:
    """How often the two libraries' uncompressed answers are the same text (they should nearly always be)."""
    by_key: dict[str, dict[str, str]] = {}
    for r in rows:
        by_key.setdefault(r["key"], {})[r["library"]] = r["prediction"]
    same = sum(1 for v in by_key.values() if v.get("lavakv") == v.get("kvpress"))
    return {"same": same, "total": len(by_key)}


if __name__ == "__main__":
    main()
