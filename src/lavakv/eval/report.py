"""``lavakv report``: read result directories, print a summary table, write the plots.

Rows: one per run (task, model, query mode, method, budget), with the headline score, samples done, and the mean
resident KV bytes after prefill next to the uncompressed bytes. Added rows: the RULER mean over the subtasks
present, and LongBench's 16-task mean, category means and extraction / generation split. Plots (PNG): score vs
budget and resident KV MiB vs budget per task, model and mode (one line per method, uncompressed dashed), and a
needle heatmap per needle run.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from lavakv.eval.runner import CONFIG, METRICS, PREDICTIONS, PROVENANCE, slug
from lavakv.eval.tasks.longbench import summarize
from lavakv.plotting import MIB, plot_heatmap, plot_lines


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


def _damaged(path: Path, problem: str) -> ValueError:
    return ValueError(f"{path}: damaged results file ({problem}); fix or delete it, or delete the run directory "
                      f"{path.parent} and rerun `lavakv eval` to redo that run")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise _damaged(path, f"not UTF-8 text: byte 0x{error.object[error.start]:02x} at offset {error.start}"
                       ) from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read it ({error.strerror or error}); check its permissions") from None


def _read_json(path: Path, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON object in ``path``; unparsable, not an object, or without one of ``keys`` -> ValueError naming it."""
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise _damaged(path, f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    if not isinstance(data, dict):
        raise _damaged(path, f"a JSON {type(data).__name__}, not an object")
    missing = [key for key in keys if key not in data]
    if missing:
        raise _damaged(path, f"no {', '.join(repr(k) for k in missing)}")
    return data


def count_predictions(path: Path) -> int:
    """The number of records in a predictions file, read only (a torn last line, from a run being written or
    interrupted, is not counted); a line that is not a JSON object before the last -> ValueError naming it."""
    if not path.exists():
        return 0
    lines = _read_text(path).splitlines()
    count = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise _damaged(path, f"line {number} is not JSON: {error.msg}") from None
        if not isinstance(record, dict):
            raise _damaged(path, f"line {number} is a JSON {type(record).__name__}, not an object")
        count += 1
    return count


def load_run(directory: Path) -> dict[str, Any]:
    """A run's config, metrics (None while unfinished), provenance and number of predictions; a results file that
    cannot be parsed -> ValueError naming it."""
    config = _read_json(directory / CONFIG, ("task", "model", "query_mode", "method"))
    if not isinstance(config["method"], dict) or "name" not in config["method"]:
        raise _damaged(directory / CONFIG, "'method' has no 'name'")
    metrics_path = directory / METRICS
    provenance_path = directory / PROVENANCE
    return {
        "directory": directory,
        "config": config,
        "metrics": _read_json(metrics_path, ("samples",)) if metrics_path.exists() else None,
        "provenance": _read_json(provenance_path) if provenance_path.exists() else {},
        "predictions": count_predictions(directory / PREDICTIONS),
    }


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
    return c["task"], c["model"], c["query_mode"], method["name"] != "full", method["name"], size


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


def table(runs: list[dict[str, Any]]) -> str:
    """The summary table of ``runs`` (from :func:`load_run`), with the RULER and LongBench aggregate rows."""
    headers = ["task", "model", "mode", "method", "budget", "samples", "score", "metric", "KV MiB", "of full",
               "status"]
    rows = []
    ordered = sorted(runs, key=_order)
    for run in ordered:
        config, metrics = run["config"], run["metrics"]
        if metrics is None:
            rows.append([config["task"], config["model"], config["query_mode"], config["method"]["name"],
                         _budget_text(config), run["predictions"], "-", "-", "-", "-", "unfinished"])
            continue
        resident, full = metrics.get("resident_kv_bytes"), metrics.get("uncompressed_kv_bytes")
        share = f"{100 * resident / full:.1f}%" if resident and full else "-"
        rows.append([config["task"], config["model"], config["query_mode"], config["method"]["name"],
                     _budget_text(config), metrics["samples"], _fmt(metrics.get("score"), 3 if
                                                                    metrics.get("score_name") == "kl" else 2),
                     metrics.get("score_name"), _fmt(resident / MIB if resident else None, 3), share, "done"])
    rows += _aggregate_rows(runs)
    return format_table(headers, rows)


def _aggregate_rows(runs: list[dict[str, Any]]) -> list[list[Any]]:
    groups: dict[tuple, dict[str, float]] = defaultdict(dict)
    for run in runs:
        config, metrics = run["config"], run["metrics"]
        if metrics is None or metrics.get("score") is None:
            continue
        family, _, sub = config["task"].partition("/")
        if family in ("ruler", "longbench") and sub:
            key = (family, config["model"], config["query_mode"], config["method"]["name"], _budget_text(config))
            groups[key][sub] = metrics["score"]
    rows = []
    for (family, model, mode, name, budget), scores in sorted(groups.items()):
        if family == "ruler":
            rows.append([f"ruler/mean({len(scores)})", model, mode, name, budget, "", _fmt(statistics.fmean(
                scores.values())), "string_match_all", "", "", ""])
            continue
        summary = summarize(scores)
        parts = [f"mean16 {_fmt(summary['mean16'])}", f"extraction {_fmt(summary['extraction'])}",
                 f"generation {_fmt(summary['generation'])}"]
        parts += [f"{cat} {_fmt(v)}" for cat, v in summary["categories"].items() if v is not None]
        rows.append([f"longbench/summary({summary['datasets']} of 16)", model, mode, name, budget, "",
                     "; ".join(parts), "", "", "", ""])
    return rows


def write_plots(runs: list[dict[str, Any]], out: Path) -> list[Path]:
    """Score vs budget and resident KV MiB vs budget per (task, model, mode), and needle heatmaps; returns paths."""
    written: list[Path] = []
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if run["metrics"] is not None:
            c = run["config"]
            groups[(c["task"], c["model"], c["query_mode"])].append(run)
    for (task, model, mode), members in sorted(groups.items()):
        scores: dict[str, list[tuple[float, float]]] = defaultdict(list)
        memory: dict[str, list[tuple[float, float]]] = defaultdict(list)
        references_score: dict[str, float] = {}
        references_memory: dict[str, float] = {}
        score_name = members[0]["metrics"].get("score_name", "score")
        for run in members:
            method, metrics = run["config"]["method"], run["metrics"]
            if metrics.get("score") is None or (isinstance(metrics["score"], float) and math.isnan(metrics["score"])):
                continue
            if method["name"] == "full":
                references_score["full (uncompressed)"] = metrics["score"]
                if metrics.get("resident_kv_bytes"):
                    references_memory["full (uncompressed)"] = metrics["resident_kv_bytes"] / MIB
            elif method.get("budget") is not None:
                scores[method["name"]].append((method["budget"], metrics["score"]))
                if metrics.get("resident_kv_bytes"):
                    memory[method["name"]].append((method["budget"], metrics["resident_kv_bytes"] / MIB))
        stem = f"{slug(task)}__{slug(model)}__{mode}"
        title = f"{task} | {model} | {mode}"
        if scores or references_score:
            written.append(plot_lines(scores, out / f"{stem}__score_vs_budget.png", title=title,
                                      xlabel="budget (tokens per KV head)", ylabel=score_name,
                                      references=references_score))
        if memory or references_memory:
            written.append(plot_lines(memory, out / f"{stem}__kv_bytes_vs_budget.png", title=title,
                                      xlabel="budget (tokens per KV head)", ylabel="resident KV cache (MiB)",
                                      references=references_memory))
        for run in members:
            grid = run["metrics"].get("grid")
            if grid:
                label = run["config"]["label"]
                written.append(plot_heatmap(grid, out / f"{stem}__{slug(label)}__heatmap.png",
                                            title=f"needle | {model} | {label} | {mode}"))
    return written


def report(paths: list[str | Path], plots: str | Path | None = None) -> tuple[str, list[Path]]:
    """The summary table of the runs under ``paths`` and the plots written to ``plots`` (default:
    ``<first path>/plots``)."""
    runs = [load_run(d) for d in find_runs(paths)]
    out = Path(plots) if plots is not None else Path(paths[0]) / "plots"
    return table(runs), write_plots(runs, out)
