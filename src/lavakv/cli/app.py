"""The ``lavakv`` command: ``methods``, ``generate``, ``demo``, ``bench``, ``eval`` and ``report``.

Results go to stdout; diagnostics go to the ``lavakv`` logger on stderr (``-v`` for progress notes, ``--debug`` for
debug messages and full tracebacks). Without ``--debug`` any error caused by the input (bad option, unknown model
or method, budget out of range, missing or empty file, model package not installed) ends the command with exit code
2 and one line ``lavakv: error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lavakv.cli.arguments import (
    apply_threads,
    check_fits,
    check_model_request,
    check_out_dir,
    check_threads,
    parse_csv,
    read_text_file,
)
from lavakv.generation import GenerationResult, generate, generate_many, prompt_ids
from lavakv.haystack import answer_correct, build_haystack
from lavakv.methods import DEFAULT_WINDOW, Method, describe, list_methods, method
from lavakv.models import MODELS, ModelNotInstalledError, default_model_name, load_model
from lavakv.options import describe_options

logger = logging.getLogger("lavakv")

MIB = 2**20
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEMO_METHODS = "lava,ada-snapkv,snapkv,streamingllm"
DEMO_BUDGETS = "64,256,512"
DEMO_FILES = ("demo_results.json", "demo_memory.png")
BENCH_METHODS = "lava,ada-snapkv,snapkv"
BENCH_BUDGETS = "128,1024"
BENCH_FILES = ("bench_results.json",)
#: Exceptions that mean "the input was wrong": exit code 2, one line, no traceback.
USER_ERRORS = (ValueError, TypeError, OSError, ImportError, ModelNotInstalledError)


class UsageError(Exception):
    """A command-line parsing error (unknown option, missing argument, bad number)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's usage + message
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# -- helpers --------------------------------------------------------------------------------------------------------
def _build_method(name: str, budget: int | None, ratio: float | None, window: int, budget_flag: str = "--budget",
                  *, decode_budget: int | None = None, decode_interval: int | None = None,
                  chunk_size: int | None = None) -> Method:
    """The method ``name``; bad settings -> ValueError whose fix names the command-line options."""
    if name == "full":
        if any(x is not None for x in (budget, ratio, decode_budget, decode_interval, chunk_size)):
            raise ValueError("method 'full' does not compress: drop --budget / --compression-ratio / --decode-budget "
                             "/ --decode-interval / --chunk-size")
        return method("full")  # no window: nothing is compressed
    if budget is None and ratio is None:
        raise ValueError(f"method {name!r} needs --budget N (tokens per KV head) or --compression-ratio R")
    try:
        return method(name, budget=budget, compression_ratio=ratio, window=window, decode_budget=decode_budget,
                      decode_interval=decode_interval, chunk_size=chunk_size)
    except ValueError as error:  # the library names its keyword arguments; say which options to change
        text = str(error)
        for keyword, flag in (("decode_budget", "--decode-budget"), ("decode_interval", "--decode-interval"),
                              ("chunk_size", "--chunk-size"),
                              ("compression_ratio=", "--compression-ratio"), ("budget=", budget_flag),
                              ("use budget ", f"use {budget_flag} "), ("window=", "--window")):
            text = text.replace(keyword, flag)
        raise ValueError(text) from None


def _load(name: str, device: str, dtype: str):
    """Check the model name and device, then load ``(model, tokenizer)``."""
    source = check_model_request(name, device, list(MODELS))
    logger.info("loading %s (%s, %s)", name, dtype, device)
    started = time.perf_counter()
    model, tokenizer = load_model(source, dtype=DTYPES[dtype], device=device)
    logger.info("loaded %s in %.1f s", name, time.perf_counter() - started)
    return model, tokenizer


def _read_context(path: str) -> str:
    return read_text_file(path, "context file", "give a file with the text to answer from")


def _check_positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{flag} must be >= 1, got {value}")


def _percent(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "n/a"


def report_line(result: GenerationResult) -> str:
    """One line of what a generation kept, held and took."""
    decode = result.decode_ms_per_token
    decode_text = f"{decode:.1f} ms/token" if decode is not None else "n/a"
    return (
        f"prompt {result.prompt_tokens} tokens | kept {result.kept_entries} KV entries | resident KV "
        f"{result.resident_kv_bytes / MIB:.2f} MiB of {result.uncompressed_kv_bytes / MIB:.2f} MiB uncompressed "
        f"({_percent(result.resident_kv_bytes, result.uncompressed_kv_bytes)}) | prefill "
        f"{result.prefill_seconds:.2f} s | decode {decode_text} ({result.new_tokens} tokens)"
    ) + (
        f" | {result.decode_evictions} decode-time evictions, resident KV at the end "
        f"{result.end_resident_kv_bytes / MIB:.2f} MiB" if result.decode_evictions else ""
    )


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with left-aligned columns."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- commands -------------------------------------------------------------------------------------------------------
def cmd_methods(args: argparse.Namespace) -> int:
    """Print the presets with their components and default parameters."""
    rows = []
    for name in list_methods():
        info = describe(name)
        params = ", ".join(f"{k}={v}" for k, v in sorted(info["params"].items())) or "-"
        rows.append([name, info["scorer"] or "-", info["layers"] or "-", info["heads"] or "-", params])
    print(format_table(["method", "scorer", "layers", "heads", "parameters"], rows))
    return 0


METHOD_SETTINGS = ("decode_budget", "decode_interval", "chunk_size")  # per-method settings that are not options


def cmd_describe(args: argparse.Namespace) -> int:
    """Print each method's components and every option with its value, default, meaning and source."""
    from lavakv.eval.specs import parse_method, split_methods

    blocks = []
    for entry in split_methods(",".join(args.method)):
        spec = parse_method(entry)
        if spec.name == "full":
            blocks.append("full: no compression; no components, no options")
            continue
        params = dict(spec.params)
        settings = {k: params.pop(k) for k in METHOD_SETTINGS if k in params}  # they need the run's budget
        resolved = method(spec.name, budget=10**9, window=1, **params)  # refuses unknown options and values
        lines = [f"{spec.label}: scorer {resolved.scorer}, layer allocation {resolved.layers}, head allocation "
                 f"{resolved.heads}; observation window w = {DEFAULT_WINDOW} by default (set per run: --window, or "
                 "window= in Python)"]
        lines += [f"  {k} = {v!r}  (method setting, checked against the run's budget when it runs)"
                  for k, v in settings.items()]
        for option in describe_options(resolved.scorer, resolved.layers, resolved.heads, resolved.params):
            changed = "" if option.value == option.default else f", preset default {option.default!r}"
            lines.append(f"  {option.name} = {option.value!r}  ({option.component}{changed}; default from "
                         f"{option.source})")
            lines.append(f"      {option.meaning}")
        if len(lines) == 1:
            lines.append("  (no options)")
        blocks.append("\n".join(lines))
    print("\n\n".join(blocks))
    print("\nThe formulas and the sources of every option: docs/methods.md in the lavakv repository.")
    return 0


def _window(args: argparse.Namespace) -> int:
    """``--window``, or the default when it was not given."""
    return DEFAULT_WINDOW if args.window is None else args.window


def cmd_generate(args: argparse.Namespace) -> int:
    """Answer a question about a context (or continue it) with one method; print the answer and a report."""
    if args.method == "full" and args.window is not None:
        raise ValueError("method 'full' does not compress, so it has no observation window: drop --window")
    m = _build_method(args.method, args.budget, args.compression_ratio, _window(args),
                      decode_budget=args.decode_budget, decode_interval=args.decode_interval,
                      chunk_size=args.chunk_size)
    context = _read_context(args.context_file) if args.context_file is not None else args.prompt
    if not context.strip():
        raise ValueError("--prompt is empty: give the text to answer from")
    if args.question is not None and not args.question.strip():
        raise ValueError("--question is empty")
    if args.query_agnostic and args.question is None:
        raise ValueError("--query-agnostic needs --question (the context is compressed before the question)")
    _check_positive(args.max_new_tokens, "--max-new-tokens")
    model, tokenizer = _load(args.model, args.device, args.dtype)
    whole, context_ids, rest_ids = prompt_ids(tokenizer, context, args.question, answer_prefix=args.answer_prefix,
                                              chat=not args.no_chat)
    prompt_tokens = len(context_ids) + len(rest_ids) if args.query_agnostic else len(whole)
    check_fits(model, prompt_tokens, args.max_new_tokens, prompt="the prompt", new="--max-new-tokens",
               fix="shorten the context or lower --max-new-tokens")
    result = generate(
        model, tokenizer, context, question=args.question, method=m, max_new_tokens=args.max_new_tokens,
        query_agnostic=args.query_agnostic, chat=not args.no_chat, answer_prefix=args.answer_prefix,
    )
    print(result.text)
    print(report_line(result))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Needle in a haystack: uncompressed vs each method at each budget; table, PNG chart and JSON."""
    names = [n for n in parse_csv(args.methods, str, "--methods") if n != "full"]
    budgets = parse_csv(args.budgets, int, "--budgets")
    runs: list[tuple[str, int | None, Method]] = [("full", None, method("full"))]
    runs += [(n, b, _build_method(n, b, None, _window(args), "--budgets")) for n in names for b in budgets]
    _check_positive(args.tokens, "--tokens")
    _check_positive(args.max_new_tokens, "--max-new-tokens")
    if not 0.0 <= args.depth <= 1.0:
        raise ValueError(f"--depth must be a fraction in [0, 1] (0 = start, 1 = end), got {args.depth}")
    check_out_dir(args.out, "--out", DEMO_FILES)
    started = time.perf_counter()
    model, tokenizer = _load(args.model, args.device, args.dtype)
    fix = "lower --tokens or --max-new-tokens"
    check_fits(model, args.tokens, args.max_new_tokens, prompt="the haystack (--tokens)", new="--max-new-tokens",
               fix=fix)
    try:
        hay = build_haystack(tokenizer, args.tokens, depth=args.depth, seed=args.seed)
    except ValueError as error:  # too short for the needle: say it in the option's name
        raise ValueError(str(error).replace("target_tokens=", "--tokens ")) from None
    whole, context_ids, rest_ids = prompt_ids(tokenizer, hay.context, hay.question, answer_prefix=hay.answer_prefix)
    check_fits(model, len(context_ids) + len(rest_ids) if args.query_agnostic else len(whole), args.max_new_tokens,
               prompt="the prompt (haystack, question and template)", new="--max-new-tokens", fix=fix)
    logger.info("haystack: %d tokens, needle at depth %.2f, answer %s", hay.tokens, hay.depth, hay.answer)
    with torch.no_grad():  # warm-up, so the first timed run does not pay one-time costs
        warm = tokenizer(hay.context[:200], return_tensors="pt")["input_ids"][:, :32].to(model.device)
        model(input_ids=warm)

    rows: list[dict[str, Any]] = []
    # one exact prefill serves every method (identical caches to separate runs); decoding is per method
    results = generate_many(
        model, tokenizer, hay.context, question=hay.question, methods=[m for _, _, m in runs],
        max_new_tokens=args.max_new_tokens, query_agnostic=args.query_agnostic, answer_prefix=hay.answer_prefix,
        progress=True,
    )
    full_logits = results[0].first_token_logits
    for (name, budget, _), result in zip(runs, results, strict=True):
        logits = result.first_token_logits
        diff = float((logits - full_logits).abs().max())
        rows.append({
            "label": name if budget is None else f"{name}@{budget}", "method": name, "budget": budget,
            "correct": answer_correct(result.text, hay.answer), "prediction": result.text,
            "prompt_tokens": result.prompt_tokens, "kept_entries": result.kept_entries,
            "resident_kv_bytes": result.resident_kv_bytes, "uncompressed_kv_bytes": result.uncompressed_kv_bytes,
            "prefill_seconds": result.prefill_seconds, "decode_seconds": result.decode_seconds,
            "new_tokens": result.new_tokens, "decode_ms_per_token": result.decode_ms_per_token,
            "first_token_logits_equal_full": bool(torch.equal(logits, full_logits)),
            "first_token_logits_max_abs_diff": diff,
        })
    wall = time.perf_counter() - started

    mode = "query-agnostic" if args.query_agnostic else "query-aware"
    print(f"model {args.model} | haystack {hay.tokens} tokens, prompt {rows[0]['prompt_tokens']} tokens | needle "
          f"at depth {hay.depth:.2f} | {mode} | expected answer {hay.answer}")
    table = []
    for r in rows:
        ms = r["decode_ms_per_token"]
        diff = r["first_token_logits_max_abs_diff"]
        same = "identical" if r["first_token_logits_equal_full"] else f"max diff {diff:.1e}"
        table.append([
            r["method"], r["budget"] if r["budget"] is not None else "-", "yes" if r["correct"] else "no",
            r["kept_entries"], f"{r['resident_kv_bytes'] / MIB:.2f}",
            _percent(r["resident_kv_bytes"], rows[0]["resident_kv_bytes"]), f"{r['prefill_seconds']:.2f}",
            f"{ms:.1f}" if ms is not None else "-", same, repr(r["prediction"][:28]),
        ])
    print(format_table(["method", "budget", "correct", "kept entries", "KV MiB", "of full", "prefill s",
                        "decode ms/tok", "1st-token logits vs full", "answer"], table))

    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "model": args.model, "mode": mode, "haystack_tokens": hay.tokens, "depth": hay.depth, "seed": args.seed,
        "question": hay.question, "answer": hay.answer, "window": _window(args), "max_new_tokens": args.max_new_tokens,
        "wall_seconds": wall, "runs": rows,
        "environment": {
            "torch": torch.__version__, "transformers": _version("transformers"), "device": str(model.device),
            "dtype": args.dtype, "threads": torch.get_num_threads(), "platform": platform.platform(),
        },
    }
    json_path = out / "demo_results.json"
    json_path.write_text(json.dumps(results, indent=2))
    print(f"results: {json_path}")
    try:
        from lavakv.plotting import plot_demo_memory

        title = f"{args.model}: resident KV cache, needle in {hay.tokens}-token haystack ({mode})"
        print(f"chart: {plot_demo_memory(rows, out / 'demo_memory.png', title=title)}")
    except ImportError as error:
        logger.warning("no chart: %s", error)
    print(f"wall time {wall:.1f} s")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Resident KV, compression time and decode time per token of each method x budget at each prompt length."""
    from lavakv.attention.native import cpu_model
    from lavakv.bench import check_shared, measure

    lengths = parse_csv(args.tokens, int, "--tokens")
    if any(n < 1 for n in lengths):
        raise ValueError(f"--tokens must be positive token counts, got {args.tokens!r}")
    names = [n for n in parse_csv(args.methods, str, "--methods") if n != "full"]
    budgets = parse_csv(args.budgets, int, "--budgets")
    methods = [_build_method(n, b, None, _window(args), "--budgets") for n in names for b in budgets]  # validate first
    check_shared(methods)
    _check_positive(args.decode_steps, "--decode-steps")
    check_threads(args.threads)
    check_out_dir(args.out, "--out", BENCH_FILES)
    apply_threads(args.threads)
    model, tokenizer = _load(args.model, args.device, args.dtype)
    # each cache holds the prompt, then 2 untimed and --decode-steps timed decode tokens
    check_fits(model, max(lengths), args.decode_steps + 2, prompt="the longest --tokens prompt",
               new="decoding (--decode-steps + 2 warm-up steps)", fix="lower --tokens or --decode-steps")
    # natural text, cut to each length below (at least 512 tokens, so a haystack holds its needle however short the
    # prompts; a prompt within its budget is simply not compressed)
    hay = build_haystack(tokenizer, max(max(lengths) + 64, 512), seed=args.seed)
    all_ids = tokenizer(hay.context, return_tensors="pt", add_special_tokens=False)["input_ids"].to(model.device)
    if all_ids.shape[1] < max(lengths):
        raise ValueError(f"could not build a {max(lengths)}-token prompt (got {all_ids.shape[1]} tokens)")
    rows: list[dict[str, Any]] = []
    for n in lengths:
        logger.info("bench: %d tokens, %d caches", n, len(methods) + 1)
        rows += measure(model, all_ids[:, :n], methods, decode_steps=args.decode_steps, progress=True)
    table = []
    for r in rows:
        full = next(x for x in rows if x["tokens"] == r["tokens"] and x["method"] == "full")
        table.append([
            r["tokens"], r["label"], f"{r['kept_entries']:,}", f"{r['resident_kv_bytes'] / MIB:.2f}",
            _percent(r["resident_kv_bytes"], full["resident_kv_bytes"]),
            f"{100 * r['compression_s'] / r['prefill_s']:.1f}%" if r["method"] != "full" else "-",
            f"{r['decode_ms_median']:.1f} ({r['decode_ms_p10']:.1f}-{r['decode_ms_p90']:.1f})",
            f"{r['decode_ms_median'] / full['decode_ms_median']:.2f}",
        ])
    print(f"model {args.model} | {args.dtype} on {args.device}, {torch.get_num_threads()} torch threads | "
          f"{args.decode_steps} decode steps per cache, alternated across caches")
    print(format_table(["tokens", "cache", "kept entries", "KV MiB", "of full", "compression / prefill",
                        "decode ms/tok (p10-p90)", "decode vs full"], table))
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench_results.json"
    path.write_text(json.dumps({
        "model": args.model, "command": "lavakv " + " ".join(sys.argv[1:]), "window": _window(args), "rows": rows,
        "environment": {
            "torch": torch.__version__, "transformers": _version("transformers"), "device": str(model.device),
            "dtype": args.dtype, "threads": torch.get_num_threads(), "platform": platform.platform(),
            "cpu": cpu_model(), "cores": os.cpu_count(),
        },
    }, indent=2))
    print(f"results: {path}")
    return 0


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


# -- parser ---------------------------------------------------------------------------------------------------------
def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=default_model_name(),
                   help=f"model name ({', '.join(MODELS)}), local directory or .gguf file (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="parameter dtype (default: %(default)s)")
    p.add_argument("--window", type=int, default=None,
                   help=f"observation window, always kept (default: {DEFAULT_WINDOW})")


def _add_query_agnostic(p: argparse.ArgumentParser) -> None:
    p.add_argument("--query-agnostic", action="store_true",
                   help="compress the context before the question is seen, then feed the question")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lavakv`` command."""
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging and full tracebacks on errors")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log progress notes on stderr")
    parser = _Parser(prog="lavakv", description="KV-cache compression (LAVa and baselines) for Hugging Face LMs.",
                     parents=[common])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("methods", parents=[common], help="list the method presets",
                       description="List the method presets with their components and default parameters.")
    p.set_defaults(run=cmd_methods)

    p = sub.add_parser("describe", parents=[common], help="one method's components and options, explained",
                       description="Print a method's components and each of its options with its value, its "
                                   "default, what it does and where the default comes from (the baseline's own "
                                   "code, the paper, or lavakv).")
    p.add_argument("method", nargs="+", metavar="METHOD",
                   help="a preset, optionally with options as in `lavakv eval --methods` (e.g. lava, "
                        "'lava[alpha=0.2,floor=lava-reference]', snapkv)")
    p.set_defaults(run=cmd_describe)

    p = sub.add_parser("generate", parents=[common], help="answer a question with a compressed KV cache",
                       description="Answer a question about a context (or continue it) with one method; prints the "
                                   "answer and one line of kept entries, resident KV bytes and timings.")
    _add_model_options(p)
    p.add_argument("--method", default="lava", help="method preset, see `lavakv methods` (default: %(default)s)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--budget", type=int, help="tokens kept per KV head per layer on average, window included")
    size.add_argument("--compression-ratio", type=float, help="fraction of prompt entries removed, in [0, 1)")
    text = p.add_mutually_exclusive_group(required=True)
    text.add_argument("--context-file", help="UTF-8 file with the context")
    text.add_argument("--prompt", help="the context as text")
    p.add_argument("--question", help="question asked after the context")
    p.add_argument("--answer-prefix", default="", help="text the answer starts with")
    p.add_argument("--max-new-tokens", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--decode-budget", type=int, default=None,
                   help="bound the cache while generating: at most this many entries per KV head per layer on "
                        "average, window included (decode-time eviction; must exceed --budget)")
    p.add_argument("--decode-interval", type=int, default=None,
                   help="generated tokens between decode-time evictions (default: min(32, decode budget - budget), "
                        "with a ratio min(32, decode budget - window))")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="prefill the prompt in chunks of this many tokens, compressing after each (bounded prefill "
                        "memory; at least --window)")
    p.add_argument("--no-chat", action="store_true", help="do not use the tokenizer's chat template")
    _add_query_agnostic(p)
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("demo", parents=[common], help="needle-in-a-haystack demo: memory, speed, answers",
                       description="Build one needle-in-a-haystack prompt, answer it uncompressed and with each "
                                   "method at each budget; print a table, write a PNG chart and a JSON of results.")
    _add_model_options(p)
    p.add_argument("--tokens", type=int, default=3000, help="haystack length in tokens (default: %(default)s)")
    p.add_argument("--depth", type=float, default=0.5, help="needle depth, 0 = start .. 1 = end (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="haystack seed (default: %(default)s)")
    p.add_argument("--methods", default=DEMO_METHODS, help="comma-separated presets (default: %(default)s)")
    p.add_argument("--budgets", default=DEMO_BUDGETS, help="comma-separated budgets (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="(default: %(default)s)")
    p.add_argument("--out", default="demo_out", help="output directory (default: %(default)s)")
    _add_query_agnostic(p)
    p.set_defaults(run=cmd_demo)
    p = sub.add_parser("bench", parents=[common], help="memory and speed of methods x budgets on a model",
                       description="For each prompt length, one exact prefill fills the uncompressed cache and one "
                                   "cache per method x budget; print and save their kept entries, resident KV, "
                                   "compression time (vs the uncompressed prefill of the same run) and decode time "
                                   "per token (steps alternated across the caches in one process).")
    _add_model_options(p)
    p.add_argument("--tokens", default="2048,4096", help="comma-separated prompt lengths (default: %(default)s)")
    p.add_argument("--methods", default=BENCH_METHODS, help="comma-separated presets (default: %(default)s)")
    p.add_argument("--budgets", default=BENCH_BUDGETS, help="comma-separated budgets (default: %(default)s)")
    p.add_argument("--decode-steps", type=int, default=10, help="timed decode steps per cache (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads, >= 1 (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="prompt text seed (default: %(default)s)")
    p.add_argument("--out", default="bench_out", help="output directory (default: %(default)s)")
    p.set_defaults(run=cmd_bench)
    from lavakv.eval.commands import add_subcommands

    add_subcommands(sub, parents=[common])  # `lavakv eval` and `lavakv report`
    return parser


def _configure_logging(debug: bool, verbose: bool) -> None:
    for handler in list(logger.handlers):
        if getattr(handler, "_lavakv_cli", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._lavakv_cli = True
    handler.setFormatter(logging.Formatter("lavakv: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    if not (debug or verbose):
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()


def _fail(error: BaseException, code: int) -> int:
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"lavakv: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lavakv`` command; returns the exit code (0 ok, 1 internal error, 2 bad input, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as error:
        return _fail(error, 2)
    debug = getattr(args, "debug", False)
    _configure_logging(debug, getattr(args, "verbose", False))
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("lavakv: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if debug:
            raise
        if isinstance(error, USER_ERRORS):
            return _fail(error, 2)
        return _fail(RuntimeError(f"internal error ({type(error).__name__}: {error}); rerun with --debug for the "
                                  "traceback"), 1)


if __name__ == "__main__":
    sys.exit(main())
