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

from lavakv.cli.arguments import check_fits, check_model_request, check_out_dir, parse_csv, read_text_file
from lavakv.eval.specs import split_methods
from lavakv.eval.tasks import TASK_NAMES, TaskOptions, parse_task_spec
from lavakv.methods import DEFAULT_WINDOW

logger = logging.getLogger("lavakv")

DEFAULT_METHODS = "full,lava,ada-snapkv,snapkv"
DEFAULT_BUDGETS = "64,128,256"
DTYPES = ("float32", "bfloat16", "float16")


def _load(name: str, device: str, dtype: str):
    """``(model, tokenizer)`` by :func:`lavakv.models.load_model`, looked up at call time (tests patch it)."""
    import torch

    from lavakv.models import loading as models

    source = check_model_request(name, device, list(models.MODELS))
    return models.load_model(source, dtype=getattr(torch, dtype), device=device)


def config_from_args(args: argparse.Namespace):
    """An :class:`~lavakv.eval.runner.EvalConfig` from parsed ``lavakv eval`` arguments (validated)."""
    from lavakv.eval.runner import EvalConfig, plan_runs

    families = {family for family, _ in parse_task_spec(args.task)}
    lengths = parse_csv(args.lengths, int, "--lengths") or None
    depths = parse_csv(args.depths, float, "--depths") or None
    for value, flag in ((args.samples, "--samples"), (args.max_new_tokens, "--max-new-tokens")):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if lengths and min(lengths) < 1:
        raise ValueError(f"--lengths must be positive token counts, got {args.lengths!r}")
    if depths and not all(0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"--depths must be fractions in [0, 1] (0 = start, 1 = end), got {args.depths!r}")
    unread = [flag for flag, given, readers in (
        ("--depths", depths is not None, {"needle"}), ("--haystack-file", args.haystack_file is not None, {"needle"}),
        ("--data-dir", args.data_dir is not None, {"longbench"}),
        ("--continuation", args.continuation is not None, {"fidelity"}),
        ("--max-new-tokens", args.max_new_tokens is not None, set(TASK_NAMES) - {"fidelity"}),
    ) if given and not families & readers]
    if unread:
        raise ValueError(f"{', '.join(unread)} would change nothing: no task of --task {args.task!r} reads it "
                         "(--depths and --haystack-file: needle; --data-dir: longbench; --continuation: fidelity; "
                         "--max-new-tokens: every task but fidelity); drop it or add the task")
    continuation = 64 if args.continuation is None else args.continuation
    if "fidelity" in families and continuation < 2:
        raise ValueError(f"--continuation must be >= 2 tokens for fidelity, got {continuation}")
    only_full = all(spec.split("[")[0].strip() == "full" for spec in split_methods(args.methods))
    for flag, given in (("--budgets", args.budgets is not None), ("--window", args.window is not None)):
        if given and only_full:
            raise ValueError(f"{flag} would change nothing: every method in --methods is full (uncompressed); add a "
                             f"compressing method or drop {flag}")
    haystack_file = args.haystack_file
    if haystack_file is not None:
        read_text_file(haystack_file, "--haystack-file", "give a text file to use as haystack")
        haystack_file = str(Path(haystack_file).expanduser())  # unchanged unless it starts with ~
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        raise ValueError(f"--data-dir {args.data_dir}: no such directory; give the directory of the LongBench "
                         "<dataset>.jsonl files")
    out = check_out_dir(args.out, "--out")
    options = TaskOptions(lengths=lengths, depths=depths, samples=args.samples, seed=args.seed,
                          max_new_tokens=args.max_new_tokens, chat=not args.no_chat,
                          haystack_file=haystack_file, data_dir=args.data_dir, continuation=continuation)
    ratios = parse_csv(args.compression_ratios, float, "--compression-ratios")
    budgets = args.budgets if args.budgets is not None else (None if ratios else DEFAULT_BUDGETS)
    config = EvalConfig(
        task=args.task, methods=split_methods(args.methods), budgets=parse_csv(budgets, int, "--budgets"),
        compression_ratios=ratios,
        query_agnostic=args.query_agnostic, window=DEFAULT_WINDOW if args.window is None else args.window, out=out,
        options=options,
    )
    plan_runs(config)  # unknown methods or budgets fail here, before the model loads
    return config


def context_needs(config) -> list[tuple[str, int, int, str]]:
    """What each task of ``config`` puts in the model's positions, at least: ``(task, prompt tokens, tokens after
    the prompt, what those are)`` per length, from ``--lengths`` (or each task's default lengths) and
    ``--max-new-tokens`` (or each task's generation length). Chat templates and questions come on top (needle,
    code, longbench), so these are lower bounds; a RULER length already includes its generation."""
    from lavakv.eval.tasks import code, fidelity, longbench, multiquestion, needle, ruler

    options = config.options
    override = options.max_new_tokens
    needs: list[tuple[str, int, int, str]] = []

    def add(task: str, defaults: list[int], extra: int, what: str) -> None:
        needs.extend((task, length, extra, what) for length in options.lengths or defaults)

    new_tokens = "the generation (--max-new-tokens)" if override is not None else "the generation"
    for family, subs in parse_task_spec(config.task):
        if family == "needle":
            add("needle", needle.DEFAULT_LENGTHS, override or 16, new_tokens)
        elif family == "code":
            add("code", code.DEFAULT_LENGTHS, override or 64, new_tokens)
        elif family == "fidelity":
            add("fidelity", fidelity.DEFAULT_LENGTHS, options.continuation, "--continuation")
        elif family == "ruler":
            for sub in subs or ruler.SUBTASKS:
                kind = "niah" if sub.startswith("niah") else "qa" if sub.startswith("qa") else sub
                planned = ruler.TOKENS_TO_GENERATE.get(kind, 0)  # inside the length already
                add(f"ruler/{sub}", ruler.DEFAULT_LENGTHS, max(0, (override or planned) - planned),
                    "--max-new-tokens beyond RULER's planned generation")
        elif family == "multiquestion":  # each document is cut so its longest question and answer fit the length
            for sub in subs or multiquestion.SUBTASKS:
                add(f"multiquestion/{sub}", multiquestion.DEFAULT_LENGTHS, 0, "the generation (inside the length)")
        elif family == "longbench":
            datasets = subs or longbench.ENGLISH_16
            longest = max(longbench.MAX_NEW_TOKENS.get(d, 0) for d in datasets)
            add("longbench", [longbench.DEFAULT_MAX_LENGTH], override or longest, new_tokens)
    return needs


def check_context(config, model) -> None:
    """Reject lengths that do not fit the model's context length (right after loading, before any prefill)."""
    given = bool(config.options.lengths)
    for task, length, extra, what in context_needs(config):
        at = "at --lengths" if given else "at its default length (no --lengths given)"
        flag = "--continuation" if "--continuation" in what else "--max-new-tokens" if "--max" in what else None
        check_fits(model, length, extra, prompt=f"{task} {at} {length}", new=what,
                   fix=f"pass smaller --lengths{f' or {flag}' if flag else ''}, or a model with a longer context")


def eval_device(device: str, shard) -> str:
    """The device of this process: ``device`` as given for a single process; under ``torchrun`` (several ranks)
    ``--device cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per rank) and ``cpu`` stays ``cpu`` for every rank. An
    explicit ``cuda:N`` with several ranks -> ValueError (every rank would share one GPU)."""
    if not shard.distributed or not device.startswith("cuda"):
        return device
    if device != "cuda":
        raise ValueError(f"--device {device} under torchrun (WORLD_SIZE={shard.world_size}): give --device cuda, "
                         "and each rank uses cuda:LOCAL_RANK")
    import torch

    if torch.cuda.is_available() and shard.local_rank >= torch.cuda.device_count():
        raise ValueError(f"rank {shard.rank}: LOCAL_RANK={shard.local_rank} but this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s); start at most that many processes per node "
                         "(torchrun --nproc_per_node)")
    return f"cuda:{shard.local_rank}"


def cmd_eval(args: argparse.Namespace) -> int:
    """Run (or resume) an evaluation; print where the results are and a summary table.

    One ``lavakv eval`` at a time may write to an ``--out`` directory (:func:`lavakv.eval.lock.eval_lock`); a second
    one is refused before it loads the model. Under ``torchrun`` each rank evaluates its share of the samples
    (:class:`lavakv.eval.runner.Shard`); the rank that finishes a run last merges it, and the table is printed by
    the rank that finds every run finished.
    """
    from lavakv.cli.arguments import apply_threads, check_threads
    from lavakv.eval.lock import eval_lock
    from lavakv.eval.report import load_run, table
    from lavakv.eval.runner import run_eval, shard_from_env

    shard = shard_from_env()
    config = config_from_args(args)
    check_threads(args.threads)
    device = eval_device(args.device, shard)
    started = time.perf_counter()
    with eval_lock(config.out, rank=shard.rank, world_size=shard.world_size):
        apply_threads(args.threads)
        if device.startswith("cuda:"):
            import torch

            if torch.cuda.is_available():
                torch.cuda.set_device(device)
        model, tokenizer = _load(args.model, device, args.dtype)
        check_context(config, model)
        results = run_eval(model, tokenizer, config, model_id=args.model, progress=not args.no_progress,
                           shard=shard)
    wall = time.perf_counter() - started
    done = sum(r.status == "finished" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    runs = [load_run(r.directory) for r in results]
    who = f"rank {shard.rank} of {shard.world_size}: " if shard.distributed else ""
    waiting = sum(run["metrics"] is None for run in runs)
    if shard.distributed and waiting:
        print(f"{who}this rank's share is done; {waiting} run(s) wait for other ranks, and the rank that finishes a "
              f"run last merges it ({done} finished here, {skipped} skipped as finished before); wall time "
              f"{wall:.1f} s")
        return 0
    print(table(runs))
    print(f"results: {Path(config.out)} ({who}{done} run(s) finished, {skipped} skipped as finished before); "
          f"wall time {wall:.1f} s")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Print the summary tables of result directories (95 % intervals; paired comparison with ``--against``) and
    write the plots."""
    from lavakv.eval.report import report

    if args.plots is not None:
        check_out_dir(args.plots, "--plots")
    text, written = report(args.dirs, plots=args.plots, against=args.against, resamples=args.resamples)
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
                   help=f"task(s): {', '.join(TASK_NAMES)}; subtasks as ruler:vt,cwe, longbench:hotpotqa,lcc or "
                        "multiquestion:keys,niah_multiquery; "
                        "several joined with + (e.g. needle+ruler)")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated presets, see `lavakv methods`, each optionally with options in brackets "
                        "that override the preset's defaults, e.g. 'full,lava,lava[alpha=0],ada-snapkv[alpha=0.1,"
                        "floor=exact]' (quote it for the shell); each entry is named by its label, the entry as "
                        "written with options sorted, in result directories and reports (default: %(default)s)")
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
    p.add_argument("--continuation", type=int, default=None,
                   help="fidelity: teacher-forced tokens after the prompt (default: 64)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="override each task's generation length")
    p.add_argument("--window", type=int, default=None,
                   help=f"observation window, always kept (default: {DEFAULT_WINDOW})")
    p.add_argument("--no-chat", action="store_true", help="never use the tokenizer's chat template")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="parameter dtype (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process, >= 1 (default: torch's choice; under torchrun set it so ranks x "
                        "threads fits the cores); recorded in each run's provenance.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval, run=cmd_eval)

    p = subparsers.add_parser(
        "report", parents=list(parents), help="summarise result directories: table and plots",
        description="Print a table of the runs under the given directories (score with its 95 % bootstrap interval "
                    "over samples, samples, resident KV bytes, RULER and LongBench aggregates), every metric with "
                    "its interval, and with --against a paired per-sample comparison of every method with that "
                    "one; write PNG plots: score vs budget (95 % error bars), resident KV bytes vs budget, needle "
                    "heatmaps.",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="`lavakv eval --out` directories or run directories")
    p.add_argument("--plots", default=None, help="where to write the PNGs (default: <first DIR>/plots)")
    p.add_argument("--against", default=None, metavar="METHOD",
                   help="compare every other method with METHOD (e.g. snapkv, full, or a label such as "
                        "'lava[alpha=0.2]' as given to eval --methods) at the same task, model, "
                        "mode and budget, paired by sample id: mean difference with its 95%% interval, wins / ties "
                        "/ losses, and whether it leads, trails or no difference is resolved")
    p.add_argument("--resamples", type=int, default=10_000,
                   help="bootstrap resamples of every interval (fixed seed; default: %(default)s)")
    p.set_defaults(func=cmd_report, run=cmd_report)
