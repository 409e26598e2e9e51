"""``lavakv report``: read result directories, print summary tables with 95 % intervals, write the plots.

Rows: one per run (task, model, query mode, method, budget), with the headline score and its 95 % bootstrap interval
over samples, samples done, and the mean resident KV bytes after prefill next to the uncompressed bytes. A method
is named by its label everywhere (:func:`method_label`: ``lava``, ``lava[alpha=0.2]``).
Added rows: the RULER mean over the subtasks present, and LongBench's 16-task mean, category means and extraction /
generation split (each with an interval that resamples every sub-task on its own). Below it: every metric of every
finished run with its interval, and, with ``against``, the paired comparison of every other method with that
reference method in each (task, model, mode, budget) group, matched by sample id (:mod:`lavakv.eval.intervals`).
Plots (PNG): score vs budget (95 % error bars) and resident KV MiB vs budget per task, model and mode (one line per
method, uncompressed dashed), and a needle heatmap per needle run.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from lavakv.eval.distinct import check_distinct
from lavakv.eval.intervals import (
    CONFIDENCE,
    RESAMPLES,
    SEED,
    Interval,
    bootstrap_interval,
    paired_comparison,
    stratified_interval,
)
from lavakv.eval.runner import (
    CONFIG,
    METRICS,
    PREDICTIONS,
    PROVENANCE,
    damaged_file,
    parse_records,
    shard_files,
    slug,
)
from lavakv.eval.specs import label_slug, normalise_label
from lavakv.eval.tasks.longbench import CATEGORIES, ENGLISH_16, GENERATION, summarize
from lavakv.plotting import MIB, plot_heatmap, plot_lines

# metrics where lower is better (fidelity's divergence and error measures); every other metric: higher is better
LOWER_IS_BETTER = frozenset({"kl", "ppl_ratio", "attention_error"})
# task families whose metrics.json holds per-sample means as they are; every other family reports 100 x the mean
UNSCALED_FAMILIES = frozenset({"fidelity"})


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories (holding ``config.json``) given directly or found below the given directories."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise ValueError(f"{path}: not a directory (give `lavakv eval --out` directories or run directories)")
        if (path / CONFIG).is_file():
            found.append(path)
        else:
            found.extend(sorted(p.parent for p in path.rglob(CONFIG)))
    if not found:
        raise ValueError(f"no result directories (with {CONFIG}) under: {', '.join(map(str, paths))}")
    return sorted(set(found))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise damaged_file(path, f"not UTF-8 text: byte 0x{error.object[error.start]:02x} at offset {error.start}"
                       ) from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read it ({error.strerror or error}); check its permissions") from None


def _read_json(path: Path, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON object in ``path``; unparsable, not an object, or without one of ``keys`` -> ValueError naming it."""
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise damaged_file(path, f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    if not isinstance(data, dict):
        raise damaged_file(path, f"a JSON {type(data).__name__}, not an object")
    missing = [key for key in keys if key not in data]
    if missing:
        raise damaged_file(path, f"no {', '.join(repr(k) for k in missing)}")
    return data


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a predictions file, read only (see :func:`lavakv.eval.runner.parse_records`)."""
    return parse_records(path, _read_text(path))[0] if path.exists() else []


def count_predictions(path: Path) -> int:
    """The number of records in a predictions file, read only (see :func:`read_records`)."""
    return len(read_records(path))


def metric_scale(task: str) -> float:
    """The factor from per-sample scores to the task's reported metrics: 100 (scores in [0, 1] reported 0-100),
    or 1 for fidelity (KL, agreement, perplexity ratio and error reported as they are)."""
    return 1.0 if task.partition("/")[0] in UNSCALED_FAMILIES else 100.0


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (False for KL, perplexity ratio and attention error)."""
    return metric not in LOWER_IS_BETTER


def _sample_scores(directory: Path, config: dict[str, Any], metrics: dict[str, Any] | None,
                   records: list[dict[str, Any]]) -> tuple[list[str], dict[str, dict[str, float]]]:
    """The sample ids a finished run covers (``metrics.json``'s ``sample_ids``, else every record) and, per metric,
    sample id -> score on the reported scale (NaN where the sample has none)."""
    by_id: dict[str, dict[str, Any]] = {}
    for record in records:
        if "id" in record:
            by_id.setdefault(str(record["id"]), record)
    ids = [str(i) for i in metrics.get("sample_ids") or []] if metrics else []
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise damaged_file(directory / PREDICTIONS, f"{METRICS} lists {len(missing)} sample(s) with no record here: "
                                                    f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    ids = ids or list(by_id)
    names: list[str] = []
    for i in ids:
        scores = by_id.get(i, {}).get("scores")
        if isinstance(scores, dict):
            names += [n for n in scores if n not in names]
    scale = metric_scale(config["task"])
    out: dict[str, dict[str, float]] = {}
    for name in names:
        values: dict[str, float] = {}
        for i in ids:
            scores = by_id.get(i, {}).get("scores")
            if not isinstance(scores, dict) or name not in scores:
                continue
            value = scores[name]
            if value is None:
                value = math.nan
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise damaged_file(directory / PREDICTIONS, f"sample {i}: score {name!r} is {value!r}, not a number")
            values[i] = scale * float(value)
        out[name] = values
    return ids, out


def load_run(directory: Path) -> dict[str, Any]:
    """A run's config, metrics (None while unfinished), provenance, number of predictions (``predictions.jsonl``
    and the shards of a distributed run, one per sample id) and, when finished, its per-sample scores
    (``sample_ids``; ``scores``: metric -> sample id -> score on the reported scale); a results file that cannot be
    parsed -> ValueError naming it."""
    config = _read_json(directory / CONFIG, ("task", "model", "query_mode", "method"))
    if not isinstance(config["method"], dict) or "name" not in config["method"]:
        raise damaged_file(directory / CONFIG, "'method' has no 'name'")
    metrics_path = directory / METRICS
    provenance_path = directory / PROVENANCE
    metrics = _read_json(metrics_path, ("samples",)) if metrics_path.exists() else None
    records = [r for path in [directory / PREDICTIONS, *shard_files(directory)] for r in read_records(path)]
    ids, scores = _sample_scores(directory, config, metrics, records) if metrics is not None else ([], {})
    return {
        "directory": directory,
        "config": config,
        "metrics": metrics,
        "provenance": _read_json(provenance_path) if provenance_path.exists() else {},
        "predictions": len({r.get("id", n) for n, r in enumerate(records)}),
        "sample_ids": ids,
        "scores": scores,
    }


def method_label(config: dict[str, Any]) -> str:
    """The label that names a run's method in every table, comparison and plot: ``config.json``'s
    ``method_label`` (``lava``, ``lava[alpha=0.2]``; see :mod:`lavakv.eval.specs`), or for runs written before
    labels were recorded, the preset name."""
    return config.get("method_label") or config["method"]["name"]


def _finite(values: dict[str, float]) -> list[float]:
    return [v for v in values.values() if not math.isnan(v)]


def run_interval(run: dict[str, Any], metric: str, resamples: int = RESAMPLES) -> Interval | None:
    """The mean of ``metric`` over a finished run's samples with its 95 % bootstrap interval; None when the run has
    no per-sample values of it."""
    values = _finite(run.get("scores", {}).get(metric, {}))
    return bootstrap_interval(values, resamples=resamples) if values else None


def _ci_text(interval: Interval | None, digits: int) -> str:
    if interval is None or not interval.resolved:
        return "-"
    return f"[{interval.low:.{digits}f}, {interval.high:.{digits}f}]"


def _digits(metric: str | None, task: str) -> int:
    return 4 if metric_scale(task) == 1.0 else 2


def _budget_text(config: dict[str, Any]) -> str:
    method = config["method"]
    if method.get("budget") is not None:
        return str(method["budget"])
    if method.get("compression_ratio") is not None:
        return f"r={method['compression_ratio']:g}"
    return "-"


def _order(run: dict[str, Any]) -> tuple:
    c = run["config"]
    method = c["method"]
    size = (method.get("budget") or 0, method.get("compression_ratio") or 0.0)
    return c["task"], c["model"], c["query_mode"], method["name"] != "full", method_label(c), size


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table with left-aligned columns."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table(runs: list[dict[str, Any]], resamples: int = RESAMPLES) -> str:
    """The summary table of ``runs`` (from :func:`load_run`), with the headline score's 95 % bootstrap interval over
    samples, and the RULER and LongBench aggregate rows. Runs the table could not tell apart (same task, model,
    mode, method and budget, another setting) are refused (:func:`lavakv.eval.distinct.check_distinct`)."""
    check_distinct(runs, method_label, _budget_text)
    headers = ["task", "model", "mode", "method", "budget", "samples", "score", "95% CI", "metric", "KV MiB",
               "of full", "status"]
    rows = []
    ordered = sorted(runs, key=_order)
    for run in ordered:
        config, metrics = run["config"], run["metrics"]
        if metrics is None:
            rows.append([config["task"], config["model"], config["query_mode"], method_label(config),
                         _budget_text(config), run["predictions"], "-", "-", "-", "-", "-", "unfinished"])
            continue
        resident, full = metrics.get("resident_kv_bytes"), metrics.get("uncompressed_kv_bytes")
        share = f"{100 * resident / full:.1f}%" if resident and full else "-"
        digits = 3 if metrics.get("score_name") == "kl" else 2
        interval = run_interval(run, metrics.get("score_name"), resamples) if metrics.get("score_name") else None
        rows.append([config["task"], config["model"], config["query_mode"], method_label(config),
                     _budget_text(config), metrics["samples"], _fmt(metrics.get("score"), digits),
                     _ci_text(interval, digits), metrics.get("score_name"),
                     _fmt(resident / MIB if resident else None, 3), share, "done"])
    rows += _aggregate_rows(runs, resamples)
    return format_table(headers, rows)


def _aggregate_rows(runs: list[dict[str, Any]], resamples: int = RESAMPLES) -> list[list[Any]]:
    groups: dict[tuple, dict[str, float]] = defaultdict(dict)
    samples: dict[tuple, dict[str, list[float]]] = defaultdict(dict)
    for run in runs:
        config, metrics = run["config"], run["metrics"]
        if metrics is None or metrics.get("score") is None:
            continue
        family, _, sub = config["task"].partition("/")
        if family in ("ruler", "longbench") and sub:
            key = (family, config["model"], config["query_mode"], method_label(config), _budget_text(config))
            groups[key][sub] = metrics["score"]
            samples[key][sub] = _finite(run.get("scores", {}).get(metrics.get("score_name"), {}))

    def interval(key: tuple, subs: list[str]) -> Interval | None:
        present = [samples[key][s] for s in subs if s in samples[key]]
        if not present or any(not values for values in present):
            return None
        return stratified_interval(present, resamples=resamples)

    rows = []
    for key, scores in sorted(groups.items()):
        family, model, mode, name, budget = key
        if family == "ruler":
            rows.append([f"ruler/mean({len(scores)})", model, mode, name, budget, "", _fmt(statistics.fmean(
                scores.values())), _ci_text(interval(key, list(scores)), 2), "string_match_all", "", "", ""])
            continue
        summary = summarize(scores)

        def part(label: str, value: float | None, subs: list[str], key: tuple = key) -> str:
            ci = _ci_text(interval(key, subs), 1) if value is not None else "-"
            return f"{label} {_fmt(value)} {ci}" if ci != "-" else f"{label} {_fmt(value)}"

        extraction = [n for n in ENGLISH_16 if n not in GENERATION]
        generation = [n for n in ENGLISH_16 if n in GENERATION]
        parts = [part("mean16", summary["mean16"], ENGLISH_16), part("extraction", summary["extraction"], extraction),
                 part("generation", summary["generation"], generation)]
        parts += [part(cat, v, CATEGORIES[cat]) for cat, v in summary["categories"].items() if v is not None]
        rows.append([f"longbench/summary({summary['datasets']} of 16)", model, mode, name, budget, "",
                     "; ".join(parts), "", "", "", "", ""])
    return rows


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def metric_table(runs: list[dict[str, Any]], resamples: int = RESAMPLES) -> str:
    """Every metric of every finished run: mean over samples with its 95 % bootstrap interval (indented, below a
    title line); empty when no run has per-sample scores."""
    headers = ["task", "model", "mode", "method", "budget", "metric", "n", "mean", "95% CI"]
    rows = []
    for run in sorted(runs, key=_order):
        config = run["config"]
        for metric in run.get("scores") or {}:
            interval = run_interval(run, metric, resamples)
            if interval is None:
                continue
            digits = _digits(metric, config["task"])
            rows.append([config["task"], config["model"], config["query_mode"], method_label(config),
                         _budget_text(config), metric, interval.n, _fmt(interval.mean, digits),
                         _ci_text(interval, digits)])
    if not rows:
        return ""
    title = (f"Every metric: mean over samples, {100 * CONFIDENCE:g} % percentile-bootstrap interval "
             f"({resamples} resamples, seed {SEED}):")
    return title + "\n" + _indent(format_table(headers, rows))


def _group_key(run: dict[str, Any]) -> tuple:
    """Runs that saw the same samples: same task (and task settings), model, dtype and query mode."""
    c = run["config"]
    settings = json.dumps(c.get("task_settings"), sort_keys=True, default=str)
    return c["task"], c["model"], c["query_mode"], c.get("dtype"), settings


def comparison_table(runs: list[dict[str, Any]], against: str, resamples: int = RESAMPLES) -> str:
    """Every finished run against the run of method ``against`` at the same budget in its (task, model, mode)
    group (the same task settings and dtype: the same samples), metric by metric, matched by sample id: mean
    difference (run - reference) with its 95 % bootstrap interval, win / tie / loss counts and the verdict.
    ``full`` (no budget) is compared with the reference at every budget; ``against="full"`` compares every run with
    ``full``. Runs whose sample ids differ are compared over the ids both have and marked.

    ``against`` is a method label (``snapkv``, ``lava[alpha=0.2]``), normalised as ``lavakv eval --methods`` does
    (``lava[ alpha=0.20 ]`` is ``lava[alpha=0.2]``).

    Raises ValueError when ``against`` is malformed, when no finished run has method ``against``, or when a group
    holds two such runs at one budget (e.g. two windows: pass the directories of one setting).
    """
    try:
        against = normalise_label(against)
    except ValueError as error:
        raise ValueError(f"--against: {error}".replace("--methods entry ", "")) from None
    finished = [r for r in runs if r["metrics"] is not None]
    names = sorted({method_label(r["config"]) for r in finished})
    if against not in names:
        raise ValueError(f"--against {against}: no finished run of method {against!r}; methods here: "
                         f"{', '.join(names) or 'none'}")
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for run in finished:
        groups[_group_key(run)].append(run)
    rows, notes, mismatched = [], [], False
    for key, members in sorted(groups.items(), key=lambda item: [str(k) for k in item[0]]):
        task, model, mode = key[:3]
        references: dict[str, dict[str, Any]] = {}
        for run in members:
            if method_label(run["config"]) != against:
                continue
            budget = _budget_text(run["config"])
            if budget in references:
                raise ValueError(f"--against {against}: two {against} runs at budget {budget} for {task} | {model} | "
                                 f"{mode} ({references[budget]['directory']}, {run['directory']}); they differ in "
                                 "a setting such as --window: give `lavakv report` the directories of one setting")
            references[budget] = run
        if not references:
            notes.append(f"no {against} run for {task} | {model} | {mode}: its "
                         f"{len(members)} run(s) not compared")
            continue
        for run in sorted(members, key=_order):
            config = run["config"]
            if method_label(config) == against:
                continue
            budget = _budget_text(config)
            if budget in references:
                matched = [references[budget]]
            elif budget == "-" or "-" in references:  # full against every budget, or every run against full
                matched = [references[b] for b in sorted(references, key=_budget_sort)] if budget == "-" \
                    else [references["-"]]
            else:
                notes.append(f"no {against} run at budget {budget} for {task} | {model} | {mode}: "
                             f"{method_label(config)} not compared")
                continue
            for reference in matched:
                for metric, values in (run.get("scores") or {}).items():
                    base = (reference.get("scores") or {}).get(metric)
                    if base is None:
                        continue
                    result = paired_comparison(values, base, higher_is_better=higher_is_better(metric),
                                               resamples=resamples)
                    digits = _digits(metric, task)
                    note = ""
                    if not result.ids_match:
                        mismatched = True
                        note = (f"ids differ: {result.difference.n} paired, {len(result.only_candidate)} only here, "
                                f"{len(result.only_reference)} only in {against}")
                    rows.append([task, model, mode, budget, method_label(config),
                                 reference["config"].get("label", against), metric, result.difference.n,
                                 _fmt(result.difference.mean, digits), _ci_text(result.difference, digits),
                                 f"{result.wins}/{result.ties}/{result.losses}", result.verdict, note])
    headers = ["task", "model", "mode", "budget", "method", "against", "metric", "pairs", "mean diff", "95% CI",
               "W/T/L", "verdict", "note"]
    title = (f"Paired against {against}: same task, model, mode and budget, matched by sample id; mean of (method - "
             f"{against}) per sample with its {100 * CONFIDENCE:g} % percentile-bootstrap interval ({resamples} "
             f"resamples, seed {SEED}).\nW/T/L: samples where the method is better / equal / worse. leads / trails: "
             "the interval excludes zero (lower is better for kl, ppl_ratio and attention_error).")
    lines = [title, _indent(format_table(headers, rows)) if rows else "  (no other finished run to compare)"]
    if mismatched:
        lines.append("  ids differ: the runs do not cover the same samples (e.g. one was extended with more "
                     "--samples); they are compared over the samples both have. Rerun `lavakv eval` with the same "
                     "--samples for every method to compare them all.")
    lines += [f"  note: {n}" for n in notes]
    return "\n".join(lines)


def _budget_sort(budget: str) -> tuple:
    if budget.isdigit():
        return 0, float(budget), ""
    return (1, float(budget[2:]), "") if budget.startswith("r=") else (2, 0.0, budget)


def write_plots(runs: list[dict[str, Any]], out: Path, resamples: int = RESAMPLES) -> list[Path]:
    """Score vs budget (with 95 % bootstrap error bars; a grey band for uncompressed) and resident KV MiB vs budget
    per (task, model, mode), and needle heatmaps; returns the paths written."""
    written: list[Path] = []
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if run["metrics"] is not None:
            groups[_group_key(run)].append(run)  # runs that saw the same samples share a figure
    settings_of: dict[tuple, list[tuple]] = defaultdict(list)
    for key in sorted(groups, key=lambda k: [str(v) for v in k]):
        settings_of[key[:3]].append(key)
    for key, members in sorted(groups.items(), key=lambda item: [str(v) for v in item[0]]):
        task, model, mode = key[:3]
        same = settings_of[key[:3]]
        scores: dict[str, list[tuple[float, ...]]] = defaultdict(list)
        memory: dict[str, list[tuple[float, float]]] = defaultdict(list)
        references_score: dict[str, float | tuple[float, float, float]] = {}
        references_memory: dict[str, float] = {}
        score_name = members[0]["metrics"].get("score_name", "score")
        for run in members:
            method, metrics, name = run["config"]["method"], run["metrics"], method_label(run["config"])
            if metrics.get("score") is None or (isinstance(metrics["score"], float) and math.isnan(metrics["score"])):
                continue
            interval = run_interval(run, metrics.get("score_name"), resamples) if metrics.get("score_name") else None
            bounds = (interval.low, interval.high) if interval is not None and interval.resolved else None
            if method["name"] == "full":
                references_score["full (uncompressed)"] = (metrics["score"], *bounds) if bounds else metrics["score"]
                if metrics.get("resident_kv_bytes"):
                    references_memory["full (uncompressed)"] = metrics["resident_kv_bytes"] / MIB
            elif method.get("budget") is not None:
                scores[name].append((method["budget"], metrics["score"], *bounds) if bounds
                                              else (method["budget"], metrics["score"]))
                if metrics.get("resident_kv_bytes"):
                    memory[name].append((method["budget"], metrics["resident_kv_bytes"] / MIB))
        stem = f"{slug(task)}__{slug(model)}__{mode}"
        title = f"{task} | {model} | {mode}"
        if len(same) > 1:  # several settings (dtype, lengths, ...) of one task: one figure each
            stem += f"__setting{same.index(key) + 1}"
            title += f" | {key[3]} | setting {same.index(key) + 1} of {len(same)}"
        if scores or references_score:
            written.append(plot_lines(scores, out / f"{stem}__score_vs_budget.png", title=title,
                                      xlabel="budget (tokens per KV head)",
                                      ylabel=f"{score_name} (95% CI over samples)", references=references_score))
        if memory or references_memory:
            written.append(plot_lines(memory, out / f"{stem}__kv_bytes_vs_budget.png", title=title,
                                      xlabel="budget (tokens per KV head)", ylabel="resident KV cache (MiB)",
                                      references=references_memory))
        for run in members:
            grid = run["metrics"].get("grid")
            if grid:
                label = run["config"]["label"]
                written.append(plot_heatmap(grid, out / f"{stem}__{label_slug(label)}__heatmap.png",
                                            title=f"needle | {model} | {label} | {mode}"))
    return written


def report(paths: list[str | Path], plots: str | Path | None = None, *, against: str | None = None,
           resamples: int = RESAMPLES) -> tuple[str, list[Path]]:
    """The summary table of the runs under ``paths``, every metric with its interval, the paired comparison
    against method ``against`` (when given), and the plots written to ``plots`` (default: ``<first path>/plots``).
    """
    if resamples < 100:
        raise ValueError(f"--resamples must be >= 100 for a stable 95 % interval, got {resamples}")
    runs = [load_run(d) for d in find_runs(paths)]
    sections = [table(runs, resamples)]
    comparison = comparison_table(runs, against, resamples) if against is not None else ""
    per_metric = metric_table(runs, resamples)
    sections += [text for text in (per_metric, comparison) if text]
    out = Path(plots) if plots is not None else Path(paths[0]) / "plots"
    return "\n\n".join(sections), write_plots(runs, out, resamples)
