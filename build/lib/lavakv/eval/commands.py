"""The ``lavakv eval`` and ``lavakv report`` subcommands; ``cli.py`` adds them with :func:`add_subcommands`.

Each subparser sets ``func`` (and ``run``, which ``cli.main`` calls) to a function ``(args) -> exit code``; bad
input raises ``ValueError`` with a message that names the fix, which the CLI prints as one line.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from lavakv.cli_support import check_model_request, parse_csv
from lavakv.eval.tasks import TASK_NAMES, TaskOptions, parse_task_spec

logger = logging.getLogger("lavakv")

DEFAULT_METHODS = "full,lava,ada-snapkv,snapkv"
DEFAULT_BUDGETS = "64,128,256"
DTYPES = ("float32", "bfloat16", "float16")


def _load(name: str, device: str, dtype: str):
    """``(model, tokenizer)`` by :func:`lavakv.models.load_model`, looked up at call time (tests patch it)."""
    import torch

    from lavakv import models

    check_model_request(name, device, list(models.MODELS))
    return models.load_model(name, dtype=getattr(torch, dtype), device=device)


def config_from_args(args: argparse.Namespace):
    """An :class:`~lavakv.eval.runner.EvalConfig` from parsed ``lavakv eval`` arguments (validated)."""
    from lavakv.eval.runner import EvalConfig, plan_runs

    parse_task_spec(args.task)
    lengths = parse_csv(args.lengths, int, "--lengths") or None
    depths = parse_csv(args.depths, float, "--depths") or None
    for value, flag in ((args.samples, "--samples"), (args.max_new_tokens, "--max-new-tokens")):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if lengths and min(lengths) < 1:
        raise ValueError(f"--lengths must be positive token counts, got {args.lengths!r}")
    options = TaskOptions(lengths=lengths, depths=depths, samples=args.samples, seed=args.seed,
                          max_new_tokens=args.max_new_tokens, chat=not args.no_chat,
                          haystack_file=args.haystack_file, data_dir=args.data_dir, continuation=args.continuation)
    ratios = parse_csv(args.compression_ratios, float, "--compression-ratios")
    budgets = args.budgets if args.budgets is not None else (None if ratios else DEFAULT_BUDGETS)
    config = EvalConfig(
        task=args.task, methods=parse_csv(args.methods, str, "--methods"), budgets=parse_csv(budgets, int, "--budgets"),
        compression_ratios=ratios,
        query_agnostic=args.query_agnostic, window=args.window, out=args.out, options=options,
    )
    plan_runs(config)  # unknown methods or budgets fail here, before the model loads
    return config


def cmd_eval(args: argparse.Namespace) -> int:
    """Run (or resume) an evaluation; print where the results are and a summary table."""
    from lavakv.eval.report import load_run, table
    from lavakv.eval.runner import run_eval

    config = config_from_args(args)
    started = time.perf_counter()
    model, tokenizer = _load(args.model, args.device, args.dtype)
    results = run_eval(model, tokenizer, config, model_id=args.model, progress=not args.no_progress)
    wall = time.perf_counter() - started
    done = sum(r.status == "finished" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    print(table([load_run(r.directory) for r in results]))
    print(f"results: {Path(config.out)} ({done} run(s) finished, {skipped} skipped as finished before); "
          f"wall time {wall:.1f} s")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Print the summary table of result directories and write the plots."""
    from lavakv.eval.report import report

    text, written = report(args.dirs, plots=args.plots)
    print(text)
    for path in written:
        print(f"plot: {path}")
    return 0


def add_subcommands(subparsers, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Add ``eval`` and ``report`` to ``subparsers`` (from ``parser.add_subparsers()``); ``parents`` are shared
    option parsers (e.g. ``--debug``) to include."""
    from lavakv.models import default_model_name

    p = subparsers.add_parser(
        "eval", parents=list(parents), help="evaluate methods x budgets on a task, resumably",
        description="Evaluate each method at each budget on a task (needle, ruler, code, fidelity, longbench). One "
                    "exact prefill per sample serves every method x budget. Each run gets a results directory "
                    "(predictions.jsonl, metrics.json, config.json, provenance.json) under --out; finished runs "
                    "are skipped and interrupted ones resume where they stopped.",
    )
    p.add_argument("--model", default=default_model_name(),
                   help="model name, local directory, .gguf file or hub id (default: %(default)s)")
    p.add_argument("--task", required=True,
                   help=f"task(s): {', '.join(TASK_NAMES)}; subtasks as ruler:vt,cwe or longbench:hotpotqa,lcc; "
                        "several joined with + (e.g. needle+ruler)")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated presets, see `lavakv methods` (default: %(default)s)")
    p.add_argument("--budgets", default=None,
                   help=f"comma-separated budgets, tokens per KV head, window included (default: {DEFAULT_BUDGETS}, "
                        "none when --compression-ratios is given)")
    p.add_argument("--compression-ratios", default=None,
                   help="comma-separated fractions of prompt entries removed (with --budgets: both are run)")
    p.add_argument("--query-agnostic", action="store_true",
                   help="compress the context alone, then feed the question (default: query-aware)")
    p.add_argument("--samples", type=int, default=None,
                   help="samples per length (needle: per depth x length cell; longbench: first N records); "
                        "default: each task's own")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated samples (default: %(default)s)")
    p.add_argument("--out", default="eval_out", help="results root directory (default: %(default)s)")
    p.add_argument("--lengths", default=None,
                   help="comma-separated token lengths: needle haystacks / ruler prompts / code context cap / "
                        "fidelity prompt / longbench truncation length (defaults: 1024,2048,4096 / 4096 / 4096 / "
                        "2048 / 3500)")
    p.add_argument("--depths", default=None, help="needle depths in [0, 1] (default: 0,0.25,0.5,0.75,1)")
    p.add_argument("--haystack-file", default=None, help="needle: UTF-8 text file to use as haystack")
    p.add_argument("--data-dir", default=None,
                   help="longbench: directory of the official <dataset>.jsonl files (else the datasets cache)")
    p.add_argument("--continuation", type=int, default=64,
                   help="fidelity: teacher-forced tokens after the prompt (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="override each task's generation length")
    p.add_argument("--window", type=int, default=32, help="observation window, always kept (default: %(default)s)")
    p.add_argument("--no-chat", action="store_true", help="never use the tokenizer's chat template")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="parameter dtype (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval, run=cmd_eval)

    p = subparsers.add_parser(
        "report", parents=list(parents), help="summarise result directories: table and plots",
        description="Print a table of the runs under the given directories (score, samples, resident KV bytes, "
                    "RULER and LongBench aggregates) and write PNG plots: score vs budget, resident KV bytes vs "
                    "budget, needle heatmaps.",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="`lavakv eval --out` directories or run directories")
    p.add_argument("--plots", default=None, help="where to write the PNGs (default: <first DIR>/plots)")
    p.set_defaults(func=cmd_report, run=cmd_report)
