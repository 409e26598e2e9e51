"""Decode-time eviction (``decode_budget`` / ``decode_interval``): long-output fidelity, memory and speed.

Subcommands (each writes one JSON under ``benchmarks/results/decode_eviction/`` with the command line and the
environment, ``benchmarks/common.py``):

* ``fidelity``: teacher-forced continuations of real code (Python standard-library sources, each sample a
  different file: its first ``--prompt`` tokens are the prompt, the next ``--continuation`` tokens are fed as the
  model's own output). Every method x decode budget gets its own cache from ONE exact prefill of the batch; the
  uncompressed cache ("full") is fed the same tokens. Per position: KL(full || method) over the vocabulary and
  top-1 agreement with full; stored per sample and per ``--bucket`` positions.
* ``memory``: one sequence, the continuation fed one token per forward call (exactly as decoding does) to caches
  with and without ``decode_budget``, the steps alternated across caches (a busy machine slows them alike):
  ms per step, resident KV bytes + slack, ``held_per_head`` after every step (the bound check), and the eviction's
  share of decode time (``decode_eviction_seconds`` over the cache's summed step time).
* ``verify``: the equivalence ``fidelity`` relies on (below), measured: one-token steps vs aligned chunks.
* ``steptime``: seconds of one forward call (1 token, ``--interval`` tokens) of the plain model: what sized the
  other parts on this machine.
* ``render``: prints the markdown of RESULTS.md's "Decode-time eviction" section from the result files.
* ``plot``: ``benchmarks/plots/decode_eviction_*.png`` from the result files.

How ``fidelity`` feeds the continuation. Decode-time eviction runs after a forward call once a row would pass
``decode_budget``; fed one token per call, a row evicts right after the call where its held entries per head
first exceed ``decode_budget - 1``. ``fidelity`` feeds tokens in chunks (``Session.extending``) whose length is the
number of tokens until the first row of the batch reaches that point (never more than the tokens left in the
bucket), so every eviction happens after the same token as with one-token calls, scored from the same last
``window`` queries, and no chunk ever attends to more than ``decode_budget`` entries per head. The chunked result
equals one-token decoding up to float rounding; ``verify`` measures the difference.

    python benchmarks/decode_eviction.py fidelity --model smollm2-135m --samples 8 --batch 4
    python benchmarks/decode_eviction.py memory --model smollm2-135m --generate 2048
    python benchmarks/decode_eviction.py verify --model smollm2-135m
    python benchmarks/decode_eviction.py plot && python benchmarks/decode_eviction.py render
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import sysconfig
import time
import warnings
from pathlib import Path

import torch
from common import write_result

import lavakv
from lavakv.compat import cache_kwargs
from lavakv.eval.intervals import bootstrap_interval

RESULTS = Path("benchmarks/results/decode_eviction")
PLOTS = Path("benchmarks/plots")
MIB = 2**20

# Sample sources: one file per sample, none of them in prompts.SOURCES (the other benchmarks' prompt), fixed order.
SAMPLE_SOURCES = (
    "ast.py", "calendar.py", "csv.py", "pickle.py", "tokenize.py", "traceback.py", "gzip.py", "smtplib.py",
    "ftplib.py", "imaplib.py", "mailbox.py", "optparse.py", "pdb.py", "pydoc.py", "random.py", "fractions.py",
    "bdb.py", "cmd.py", "doctest.py", "locale.py", "socket.py", "ssl.py", "heapq.py", "datetime.py",
)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


# -- samples ---------------------------------------------------------------------------------------------------------
def sample_ids(tokenizer, count: int, tokens: int) -> tuple[torch.Tensor, list[str]]:
    """``[count, tokens]`` ids: the first ``tokens`` tokens of each of the first ``count`` long-enough files."""
    root = Path(sysconfig.get_paths()["stdlib"])
    rows, names = [], []
    for name in SAMPLE_SOURCES:
        path = root / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")[: 12 * tokens]  # >= 2 characters per token
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
        if len(ids) < tokens:
            continue
        rows.append(ids[:tokens])
        names.append(name)
        if len(rows) == count:
            return torch.stack(rows), names
    raise ValueError(f"only {len(rows)} standard-library files give {tokens} tokens; {count} asked")


def prompt_budget(decode_budget: int, interval: int) -> int:
    """The prompt budget B paired with a decode budget D: D - interval, the largest B the bound allows (the cache
    starts at the decode bound's steady-state size, so memory never steps up during the answer)."""
    return decode_budget - interval


def labelled_methods(names: list[str], decode_budgets: list[int], interval: int, window: int
                     ) -> list[tuple[str, lavakv.Method]]:
    out = []
    for name in names:
        for d in decode_budgets:
            out.append((f"{name}@D{d}", lavakv.method(name, budget=prompt_budget(d, interval), window=window,
                                                       decode_budget=d, decode_interval=interval)))
    return out


# -- teacher forcing -------------------------------------------------------------------------------------------------
def steps_to_eviction(held: list[float] | None, decode_budget: int | None) -> int | None:
    """Tokens until the first row's eviction when fed one per call: a row evicts after the call that makes its held
    entries per head exceed ``decode_budget - 1`` (None: no bound)."""
    if decode_budget is None or held is None:
        return None
    return max(1, min(math.floor(decode_budget - 1 - h + 1e-9) + 1 for h in held))


def feed(model, session, cache, ids: torch.Tensor, decode_budget: int | None) -> torch.Tensor:
    """Feed ``ids [batch, n]`` through ``cache`` in eviction-aligned chunks; float32 logits ``[batch, n, vocab]``."""
    out, at = [], 0
    while at < ids.shape[1]:
        room = steps_to_eviction(session.stats(cache).held_per_head if decode_budget else None, decode_budget)
        n = ids.shape[1] - at if room is None else min(room, ids.shape[1] - at)
        chunk = ids[:, at:at + n]
        mask = torch.ones(ids.shape[0], cache.get_seq_length() + n, dtype=torch.long)
        with session.extending(cache), torch.no_grad():
            logits = model(chunk, attention_mask=mask, **cache_kwargs(cache), logits_to_keep=n).logits
        out.append(logits.float())
        at += n
    return torch.cat(out, dim=1)


def compare(full: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position ``[batch, n]``: KL(full || other) in nats and whether the argmax tokens agree."""
    lp_full = torch.log_softmax(full, dim=-1)
    lp_other = torch.log_softmax(other, dim=-1)
    kl = (lp_full.exp() * (lp_full - lp_other)).sum(-1).clamp_min(0)
    return kl, full.argmax(-1) == other.argmax(-1)


def run_fidelity(model, tokenizer, args) -> dict:
    ids_all, files = sample_ids(tokenizer, args.samples, args.prompt + args.continuation)
    labelled = labelled_methods(args.methods, args.decode_budgets, args.interval, args.window)
    buckets = list(range(0, args.continuation, args.bucket))
    per: dict[str, dict] = {label: {"kl": [], "top1": [], "max_held": 0.0, "evictions": [], "eviction_s": 0.0,
                                    "feed_s": 0.0} for label, _ in labelled}
    full_s = 0.0
    started = time.perf_counter()
    with lavakv.method("full").attach(model) as session:
        for first in range(0, len(files), args.batch):
            batch = ids_all[first:first + args.batch]
            prompt, cont = batch[:, :args.prompt], batch[:, args.prompt:]
            methods = [lavakv.method("full")] + [m for _, m in labelled]
            with torch.no_grad():
                caches, logits0 = session.prefill(prompt, None, methods)
            full_cache, caches = caches[0], caches[1:]
            kl = {label: torch.zeros(len(batch), len(buckets), dtype=torch.float64) for label, _ in labelled}
            top1 = {label: torch.zeros(len(batch), len(buckets), dtype=torch.float64) for label, _ in labelled}
            for k, start in enumerate(buckets):
                # predictions for continuation positions start..end-1: inputs are the tokens before them
                end = min(start + args.bucket, args.continuation)
                lo = max(start - 1, 0)
                inputs = cont[:, lo:end - 1]
                t = time.perf_counter()
                ref = feed(model, session, full_cache, inputs, None)
                full_s += time.perf_counter() - t
                if start == 0:
                    ref = torch.cat([logits0.float()[:, None], ref], dim=1)
                for (label, m), cache in zip(labelled, caches, strict=True):
                    t = time.perf_counter()
                    got = feed(model, session, cache, inputs, m.decode_budget)
                    per[label]["feed_s"] += time.perf_counter() - t
                    if start == 0:
                        got = torch.cat([logits0.float()[:, None], got], dim=1)
                    d, agree = compare(ref, got)
                    kl[label][:, k] = d.double().mean(1)
                    top1[label][:, k] = agree.double().mean(1)
                    held = session.stats(cache).held_per_head
                    per[label]["max_held"] = max(per[label]["max_held"], max(held))
                done = first + len(batch)
                print(f"[fidelity] samples {first}-{done - 1}: position {end}/{args.continuation} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
                if first == 0 and end < args.continuation:  # first batch: a partial result after every bucket
                    partial = {label: {**v, "kl": kl[label][:, :k + 1].tolist(),
                                       "top1": top1[label][:, :k + 1].tolist(),
                                       "evictions": [session.stats(c).decode_evictions]}
                               for (label, v), c in zip(per.items(), caches, strict=True)}
                    write_result(args.out, fidelity_payload(args, files[:done], buckets[:k + 1], partial, full_s,
                                                            time.perf_counter() - started, partial=True, reached=end))
            for (label, _), cache in zip(labelled, caches, strict=True):
                st = session.stats(cache)
                per[label]["kl"] += kl[label].tolist()
                per[label]["top1"] += top1[label].tolist()
                per[label]["evictions"].append(st.decode_evictions)
                per[label]["eviction_s"] += st.decode_eviction_seconds
            del caches, full_cache
            payload = fidelity_payload(args, files[:done], buckets, per, full_s, time.perf_counter() - started,
                                       partial=done < len(files), reached=args.continuation)
            write_result(args.out, payload)
            print(f"[fidelity] wrote {args.out} ({done}/{len(files)} samples)", flush=True)
    return payload


def fidelity_payload(args, files, buckets, per, full_s, wall_s, partial, reached) -> dict:
    """The fidelity result; ``partial``: the run stopped early (``reached``: continuation positions done)."""
    return {
        "kind": "fidelity", "argv": sys.argv, "model": args.model, "samples": len(files), "files": files,
        "prompt_tokens": args.prompt, "continuation_tokens": reached, "planned_continuation_tokens": args.continuation,
        "bucket": args.bucket,
        "buckets": buckets, "interval": args.interval, "window": args.window, "decode_budgets": args.decode_budgets,
        "prompt_budget_rule": "B = D - interval", "methods": args.methods, "full_feed_s": full_s,
        "wall_s": wall_s, "partial": partial,
        "results": {label: {**v, "method": label.split("@")[0], "decode_budget": int(label.split("@D")[1]),
                            "prompt_budget": prompt_budget(int(label.split("@D")[1]), args.interval)}
                    for label, v in per.items()},
    }


# -- one-token decoding: memory, speed, bound ------------------------------------------------------------------------
def run_memory(model, tokenizer, args) -> dict:
    ids, files = sample_ids(tokenizer, 1, args.prompt + args.generate)
    prompt, cont = ids[:, :args.prompt], ids[:, args.prompt:]
    variants = [("full", lavakv.method("full")),
                (f"{args.method}@{args.budget}", lavakv.method(args.method, budget=args.budget, window=args.window))]
    for d in args.decode_budgets:
        variants.append((f"{args.method}@{args.budget},D{d}",
                         lavakv.method(args.method, budget=args.budget, window=args.window, decode_budget=d,
                                       decode_interval=args.interval)))
    variants = [(label, m) for label, m in variants if label != "full" or not args.no_full]
    labels = [label for label, _ in variants]
    step_s = {label: [] for label in labels}
    trace = {label: [] for label in labels}
    max_held = dict.fromkeys(labels, 0.0)
    started = time.perf_counter()
    with lavakv.method("full").attach(model) as session:
        with torch.no_grad():
            session.prefill(prompt[:, :256], None, [m for _, m in variants])  # warm-up: one-time costs
            caches, _ = session.prefill(prompt, None, [m for _, m in variants])
            for step in range(args.generate):
                token = cont[:, step:step + 1]
                for label, cache in zip(labels, caches, strict=True):
                    mask = torch.ones(1, cache.get_seq_length() + 1, dtype=torch.long)
                    t = time.perf_counter()
                    model(token, attention_mask=mask, **cache_kwargs(cache), logits_to_keep=1)
                    step_s[label].append(time.perf_counter() - t)
                    st = session.stats(cache)
                    if st.held_per_head is not None:
                        max_held[label] = max(max_held[label], max(st.held_per_head))
                    generated = step + 1
                    if generated % args.record_every == 0 or generated == args.generate:
                        trace[label].append({"generated": generated, "resident_kv_bytes": st.resident_kv_bytes,
                                             "slack_kv_bytes": st.slack_kv_bytes,
                                             "held_per_head": st.held_per_head,
                                             "decode_evictions": st.decode_evictions,
                                             "decode_eviction_seconds": st.decode_eviction_seconds,
                                             "step_seconds_so_far": sum(step_s[label])})
                if (step + 1) % 256 == 0:
                    print(f"[memory] {step + 1}/{args.generate} tokens ({time.perf_counter() - started:.0f} s)",
                          flush=True)
            final = {label: session.stats(c) for label, c in zip(labels, caches, strict=True)}
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    entry_bytes = 2 * head_dim * next(model.parameters()).element_size()
    rows = {}
    for label, m in variants:
        st = final[label]
        total = sum(step_s[label])
        rows[label] = {
            "method": m.name, "budget": m.budget, "decode_budget": m.decode_budget,
            "decode_interval": m.decode_interval, "step_ms": [1e3 * s for s in step_s[label]],
            "total_decode_s": total, "decode_evictions": st.decode_evictions,
            "decode_eviction_seconds": st.decode_eviction_seconds,
            "eviction_share": st.decode_eviction_seconds / total if total else None,
            "max_held_per_head": max_held[label] if m.decode_budget or m.budget else None,
            "bound_bytes": (m.decode_budget * cfg.num_hidden_layers * cfg.num_key_value_heads * entry_bytes
                            if m.decode_budget else None),
            "trace": trace[label],
        }
    payload = {"kind": "memory", "argv": sys.argv, "model": args.model, "files": files, "prompt_tokens": args.prompt,
               "generated_tokens": args.generate, "window": args.window, "interval": args.interval,
               "entry_bytes": entry_bytes, "layers": cfg.num_hidden_layers, "kv_heads": cfg.num_key_value_heads,
               "wall_s": time.perf_counter() - started, "variants": rows}
    write_result(args.out, payload)
    print(f"[memory] wrote {args.out}", flush=True)
    return payload


def run_verify(model, tokenizer, args) -> dict:
    """One-token calls vs eviction-aligned chunks on the same cache configuration (batch of ``--batch`` files)."""
    ids, files = sample_ids(tokenizer, args.batch, args.prompt + args.continuation)
    prompt, cont = ids[:, :args.prompt], ids[:, args.prompt:]
    d = args.decode_budgets[0]
    m = lavakv.method(args.methods[0], budget=prompt_budget(d, args.interval), window=args.window,
                      decode_budget=d, decode_interval=args.interval)
    with lavakv.method("full").attach(model) as session:
        with torch.no_grad():
            (one, chunked), _ = session.prefill(prompt, None, [m, m])
            steps = []
            for t in range(cont.shape[1]):
                mask = torch.ones(len(files), one.get_seq_length() + 1, dtype=torch.long)
                steps.append(model(cont[:, t:t + 1], attention_mask=mask, **cache_kwargs(one)).logits[:, -1].float())
            a = torch.stack(steps, dim=1)
        b = feed(model, session, chunked, cont, d)
        kl, agree = compare(a, b)
        sa, sb = session.stats(one), session.stats(chunked)
    payload = {"kind": "verify", "argv": sys.argv, "model": args.model, "files": files, "method": m.name,
               "budget": m.budget, "decode_budget": d, "interval": args.interval, "prompt_tokens": args.prompt,
               "tokens": int(cont.shape[1]), "max_abs_logit_diff": float((a - b).abs().max()),
               "max_kl": float(kl.max()), "top1_agreement": float(agree.double().mean()),
               "evictions": [sa.decode_evictions, sb.decode_evictions],
               "held_per_head": [sa.held_per_head, sb.held_per_head]}
    write_result(args.out, payload)
    print(json.dumps({k: v for k, v in payload.items() if k != "argv"}, indent=1))
    return payload


def run_steptime(model, tokenizer, args) -> dict:
    """Seconds of one forward call over a ``--prompt``-token cache: 1 token and ``--interval`` tokens, ``--batch``
    rows (plain model, no compression): the cost that sizes the other parts on this machine."""
    ids, files = sample_ids(tokenizer, args.batch, args.prompt + args.interval)
    times: dict[str, list[float]] = {"1": [], str(args.interval): []}
    with torch.no_grad():
        cache = model(ids[:, :args.prompt], use_cache=True, logits_to_keep=1).past_key_values
        for _ in range(args.repeats):
            for n in (1, args.interval):
                t = time.perf_counter()
                model(ids[:, args.prompt:args.prompt + n], past_key_values=cache, logits_to_keep=n)
                times[str(n)].append(time.perf_counter() - t)
                cache.crop(-n)  # back to the prompt
    payload = {"kind": "steptime", "argv": sys.argv, "model": args.model, "files": files, "batch": args.batch,
               "prompt_tokens": args.prompt, "seconds": times}
    write_result(args.out, payload)
    print(json.dumps(times))
    return payload


# -- rendering -------------------------------------------------------------------------------------------------------
def load_results(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def interval_text(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    from lavakv.eval.intervals import bootstrap_interval

    iv = bootstrap_interval(values).scaled(scale)
    if not iv.resolved:
        return f"{iv.mean:.{digits}f} (n = {iv.n})"
    return f"{iv.mean:.{digits}f} [{iv.low:.{digits}f}, {iv.high:.{digits}f}]"


def render_fidelity(res: dict) -> list[str]:
    env = res["environment"]
    buckets, size = res["buckets"], res["bucket"]
    last = f"{buckets[-1]}-{min(buckets[-1] + size, res['continuation_tokens']) - 1}"
    lines = [
        f"**Fidelity, `{res['model']}`**: `{env['command']}` ({env['date']}, git `{env['git_commit']}`, "
        f"{res['wall_s'] / 60:.1f} min{', PARTIAL' if res['partial'] else ''}). {res['samples']} samples "
        f"({', '.join(res['files'])}), prompt {res['prompt_tokens']} tokens, continuation "
        f"{res['continuation_tokens']} tokens teacher-forced, decode interval {res['interval']}, window "
        f"{res['window']}, prompt budget B = D - interval.",
        "",
        f"At the last bucket (generated positions {last}) and over the whole continuation; mean over samples with a "
        "95 % bootstrap interval over samples. KL(full || method) in nats per token; top-1: share of positions whose "
        "argmax token equals the uncompressed model's.",
        "",
        f"| method | D | B | KL, positions {last} | top-1, positions {last} | KL, all positions | "
        "top-1, all positions | evictions per run | max held per head |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = sorted(res["results"].values(), key=lambda r: (r["decode_budget"], r["method"]))
    for r in rows:
        kl_last = [s[-1] for s in r["kl"]]
        top_last = [s[-1] for s in r["top1"]]
        kl_all = [sum(s) / len(s) for s in r["kl"]]
        top_all = [sum(s) / len(s) for s in r["top1"]]
        ev = sum(r["evictions"]) / len(r["evictions"])
        lines.append(f"| {r['method']} | {r['decode_budget']} | {r['prompt_budget']} | {interval_text(kl_last)} | "
                     f"{interval_text(top_last, 100, 1)} % | {interval_text(kl_all)} | "
                     f"{interval_text(top_all, 100, 1)} % | {ev:.0f} | {r['max_held']:.1f} |")
    step = max(1, len(buckets) // 8)
    shown = list(range(0, len(buckets), step))
    if shown[-1] != len(buckets) - 1:
        shown.append(len(buckets) - 1)
    lines += ["", "KL(full || method) by generated position (bucket start; mean over samples):", "",
              "| method@D | " + " | ".join(str(buckets[k]) for k in shown) + " |",
              "|---|" + "---|" * len(shown)]
    for r in rows:
        means = [sum(s[k] for s in r["kl"]) / len(r["kl"]) for k in shown]
        lines.append(f"| {r['method']}@{r['decode_budget']} | " + " | ".join(f"{v:.3f}" for v in means) + " |")
    return lines


def render_memory(res: dict) -> list[str]:
    env = res["environment"]
    marks = [g for g in (256, 512, 1024, 2048, res["generated_tokens"]) if g <= res["generated_tokens"]]
    marks = sorted(set(marks))
    lines = [
        f"**Memory and speed, `{res['model']}`**: `{env['command']}` ({env['date']}, git `{env['git_commit']}`, "
        f"{res['wall_s'] / 60:.1f} min, {env['torch_threads']} torch thread; {env['cores']} cores shared with other "
        "jobs' test suites, so absolute ms are inflated and only the ratios between caches hold: their steps "
        "alternate). One sequence "
        f"({res['files'][0]}), prompt {res['prompt_tokens']} tokens, then {res['generated_tokens']} tokens fed one "
        "per forward call.",
        "",
        "Resident KV MiB (+ slack MiB allocated ahead for decoded tokens) after N generated tokens:",
        "",
        "| cache | " + " | ".join(f"N = {g}" for g in marks) +
        " | max over all steps (max held per head x layers x KV heads x entry bytes) | bound (D x the same) |",
        "|---|" + "---|" * (len(marks) + 2),
    ]
    for label, v in res["variants"].items():
        cells = []
        for g in marks:
            point = next((p for p in v["trace"] if p["generated"] == g), None)
            cells.append("—" if point is None else
                         f"{point['resident_kv_bytes'] / MIB:.2f} (+{point['slack_kv_bytes'] / MIB:.2f})")
        bound = f"{v['bound_bytes'] / MIB:.2f}" if v["bound_bytes"] else "—"
        held = v["max_held_per_head"]
        peak = "—" if held is None else f"{held * res['layers'] * res['kv_heads'] * res['entry_bytes'] / MIB:.2f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {peak} | {bound} |")
    lines += ["", "The trace is recorded every 32 generated tokens, which with B = D - interval falls right after an "
              "eviction (the low point); the peak column is the largest held_per_head seen after any step.", "",
              "Decode ms per token (median of the steps in each window of generated positions) and the "
              "eviction's share of the cache's decode time:", ""]
    windows = [(max(0, g - 128), g) for g in marks]
    lines += ["| cache | " + " | ".join(f"{a}-{b}" for a, b in windows) +
              " | evictions | eviction s / decode s | max held per head |",
              "|---|" + "---|" * (len(windows) + 3)]
    for label, v in res["variants"].items():
        cells = []
        for a, b in windows:
            part = sorted(v["step_ms"][a:b])
            cells.append(f"{part[len(part) // 2]:.1f}" if part else "—")
        share = "—" if not v["decode_evictions"] else (
            f"{v['decode_eviction_seconds']:.2f} / {v['total_decode_s']:.1f} = {100 * v['eviction_share']:.1f} %")
        held = f"{v['max_held_per_head']:.2f}" if v["max_held_per_head"] is not None else "—"
        bound = f" (D = {v['decode_budget']})" if v["decode_budget"] else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {v['decode_evictions']} | {share} | {held}{bound} |")
    return lines


def render_verify(res: dict) -> list[str]:
    env = res["environment"]
    return [
        f"**Chunked teacher forcing = one-token decoding** (`{env['command']}`, {env['date']}): {res['method']} "
        f"B = {res['budget']}, D = {res['decode_budget']}, interval {res['interval']}, {len(res['files'])} sequences, "
        f"prompt {res['prompt_tokens']}, {res['tokens']} tokens: evictions {res['evictions'][0]} (one-token) vs "
        f"{res['evictions'][1]} (chunked), max |logit difference| {res['max_abs_logit_diff']:.2e}, max KL "
        f"{res['max_kl']:.2e} nats, top-1 agreement {100 * res['top1_agreement']:.2f} %.",
    ]


def render_steptime(res: dict) -> list[str]:
    env = res["environment"]
    parts = ", ".join(f"{n} token{'s' if n != '1' else ''} {min(v):.2f} s (of {len(v)})"
                      for n, v in res["seconds"].items())
    return [f"**Step cost, `{res['model']}`** (`{env['command']}`, {env['date']}): one forward call over a "
            f"{res['prompt_tokens']}-token cache, batch {res['batch']}, fastest of the repeats: {parts}."]


def render(folder: Path) -> str:
    out = []
    results = load_results(folder)
    from decode_task import render as render_task

    for kind, fn in (("verify", render_verify), ("fidelity", render_fidelity), ("memory", render_memory),
                     ("decode_task", render_task), ("steptime", render_steptime)):
        for res in results:
            if res.get("kind") == kind:
                out += fn(res) + [""]
    return "\n".join(out)


def plot(folder: Path, plots: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for res in load_results(folder):
        if res.get("kind") == "fidelity":
            budgets = res["decode_budgets"]
            fig, axes = plt.subplots(1, len(budgets), figsize=(4.5 * len(budgets), 3.6), sharey=True, squeeze=False)
            centres = [b + res["bucket"] / 2 for b in res["buckets"]]
            for ax, d in zip(axes[0], budgets, strict=True):
                for r in res["results"].values():
                    if r["decode_budget"] != d:
                        continue
                    # per bucket, the mean over samples with its 95 % bootstrap interval
                    intervals = [bootstrap_interval([s[k] for s in r["kl"]]) for k in range(len(centres))]
                    means = [i.mean for i in intervals]
                    spread = [[max(i.mean - i.low, 0.0) if i.low == i.low else 0.0 for i in intervals],
                              [max(i.high - i.mean, 0.0) if i.high == i.high else 0.0 for i in intervals]]
                    ax.errorbar(centres, means, yerr=spread, marker="o", ms=3, capsize=2, label=r["method"])
                ax.set_title(f"D = {d} (B = {d - res['interval']})")
                ax.set_xlabel("generated position")
                ax.set_yscale("log")
                ax.grid(alpha=0.3)
            axes[0][0].set_ylabel("KL(full || method), nats")
            axes[0][-1].legend(fontsize=8)
            fig.suptitle(f"{res['model']}: teacher-forced continuation, {res['samples']} samples (95 % intervals)",
                         fontsize=10)
            fig.tight_layout()
            path = plots / f"decode_eviction_fidelity_{res['model']}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
        elif res.get("kind") == "memory":
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
            for label, v in res["variants"].items():
                xs = [p["generated"] for p in v["trace"]]
                ax1.plot(xs, [(p["resident_kv_bytes"] + p["slack_kv_bytes"]) / MIB for p in v["trace"]], label=label)
                ms = v["step_ms"]
                size = 64
                centres = list(range(size // 2, len(ms), size))
                med = [sorted(ms[c - size // 2:c + size // 2])[size // 2] for c in centres
                       if c + size // 2 <= len(ms)]
                ax2.plot(centres[:len(med)], med, label=label)
            ax1.set_xlabel("generated tokens")
            ax1.set_ylabel("resident KV + slack, MiB")
            ax1.set_yscale("log")
            ax2.set_xlabel("generated tokens")
            ax2.set_ylabel("decode ms / token (median of 64)")
            for ax in (ax1, ax2):
                ax.grid(alpha=0.3)
            ax1.legend(fontsize=8)
            fig.suptitle(f"{res['model']}: prompt {res['prompt_tokens']} tokens, steps alternated across caches",
                         fontsize=10)
            fig.tight_layout()
            path = plots / f"decode_eviction_memory_{res['model']}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["fidelity", "memory", "verify", "steptime", "render", "plot"])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4, help="samples per forward (fidelity, verify)")
    parser.add_argument("--prompt", type=int, default=1024)
    parser.add_argument("--continuation", type=int, default=2048)
    parser.add_argument("--bucket", type=int, default=128)
    parser.add_argument("--methods", default="lava,snapkv,h2o,streamingllm")
    parser.add_argument("--decode-budgets", type=ints, default=ints("128,256,512"))
    parser.add_argument("--interval", type=int, default=32)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--method", default="lava", help="memory: the method run with and without decode_budget")
    parser.add_argument("--budget", type=int, default=224, help="memory: prompt budget B")
    parser.add_argument("--generate", type=int, default=2048, help="memory: tokens fed one per call")
    parser.add_argument("--record-every", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="steptime: repeats")
    parser.add_argument("--no-full", action="store_true", help="memory: leave out the uncompressed cache")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared machine, two threads that wait for each "
                             "other at every small matmul are several times slower than one)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--plots", type=Path, default=PLOTS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    if args.part == "render":
        print(render(args.results))
        return
    if args.part == "plot":
        args.plots.mkdir(parents=True, exist_ok=True)
        for path in plot(args.results, args.plots):
            print(f"wrote {path}")
        return
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    from lavakv.models import load_model

    hf_logging.disable_progress_bar()
    model, tokenizer = load_model(args.model)
    args.out = args.out or args.results / f"{args.part}_{args.model}.json"
    parts = {"fidelity": run_fidelity, "memory": run_memory, "verify": run_verify, "steptime": run_steptime}
    parts[args.part](model, tokenizer, args)


if __name__ == "__main__":
    main()
