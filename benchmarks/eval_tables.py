"""Render evaluation result directories (``lavakv eval --out``) as markdown tables for benchmarks/RESULTS-eval.md.

    python benchmarks/eval_tables.py benchmarks/results/eval/fidelity_smollm2_4k > table.md
    python benchmarks/eval_tables.py --by-task benchmarks/results/eval/qwen_ruler_code_4k   # tasks as columns
    python benchmarks/eval_tables.py --against 'lava[alpha=0]' DIR    # paired differences within one preset
    python benchmarks/eval_tables.py --by-depth DIR    # needle: found / prompts per depth, per method and budget
    python benchmarks/eval_tables.py --versus 'lava[alpha=0]' 'snapkv;cake' DIR   # paired grid, tasks x budgets
    (labels in a list are separated by ';', as labels may hold commas)

Every number comes from the runs' metrics.json files; nothing is typed by hand. A method is named by its label
(``lava``, ``lava[alpha=0.2]``: ``lavakv eval --methods`` entries with options), read from the run's config.json by
``lavakv.eval.report.method_label``, as ``lavakv report`` names it.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path

from lavakv.eval.intervals import bootstrap_interval, paired_comparison, stratified_interval, verdict
from lavakv.eval.report import _group_key, find_runs, higher_is_better, load_run, method_label, metric_scale
from lavakv.eval.specs import normalise_label


def load(dirs: list[str]) -> list[dict]:
    """The metrics of every run under ``dirs``, each with ``method`` replaced by the run's method label."""
    rows = []
    for d in dirs:
        for path in sorted(Path(d).glob("*/metrics.json")):
            row = json.loads(path.read_text())
            config = path.parent / "config.json"
            if config.exists():
                row["method"] = method_label(json.loads(config.read_text()))
            rows.append(row)
    return rows


def label_order(label: str) -> tuple:
    """Row order: full first, then labels alphabetically with an option list ending before a longer value
    (``lava[alpha=0]`` before ``lava[alpha=0.1]``)."""
    return label != "full", label.replace("]", "\x00").replace(",", "\x01")


def pivot(rows: list[dict], metric: str) -> str:
    """Methods as rows, budgets as columns, one metric (full shown once)."""
    budgets = sorted({r["budget"] for r in rows if r.get("budget") is not None})
    table: dict[str, dict] = defaultdict(dict)
    for r in rows:
        table[r["method"]][r.get("budget")] = r.get(metric)
    head = "| method | " + " | ".join(f"B={b}" for b in budgets) + " |"
    lines = [head, "|---" * (len(budgets) + 1) + "|"]
    for method in sorted(table, key=label_order):
        cells = table[method]
        if method == "full":
            value = cells.get(None)
            lines.append("| full | " + " | ".join(_fmt(value) for _ in budgets) + " |")
        else:
            lines.append(f"| {method} | " + " | ".join(_fmt(cells.get(b)) for b in budgets) + " |")
    return "\n".join(lines)


def score_runs(dirs: list[str], option: str) -> dict[tuple, tuple[str, dict]]:
    """The finished runs under ``dirs`` (searched recursively) by (label, budget, task) -> (score name, sample id ->
    score on the reported scale); ``full`` under budget None, a ratio run under ("ratio", r). Runs of several models
    or query modes, or two runs with one key (another window or task setting) -> SystemExit naming ``option``."""
    by_key: dict[tuple, tuple[str, dict]] = {}
    runs = [run for run in map(load_run, find_runs(dirs)) if run["metrics"] is not None]
    kinds = {(r["config"]["model"], r["config"]["query_mode"]) for r in runs}
    if len(kinds) > 1:
        raise SystemExit(f"{option}: the directories mix models / query modes {sorted(kinds)}; give one kind")
    for run in runs:
        config = run["config"]
        method = config["method"]
        budget = method.get("budget") if method.get("budget") is not None else (
            ("ratio", method["compression_ratio"]) if method.get("compression_ratio") is not None else None)
        key = (method_label(config), budget, config["task"])
        if key in by_key:
            raise SystemExit(f"{option}: two finished runs of {key[0]} at budget {key[1]} on {key[2]} (another "
                             "window, model or task setting?): give the directories of one setting")
        name = run["metrics"].get("score_name")
        by_key[key] = (name, run["scores"].get(name, {}))
    return by_key


def _budgets(by_key: dict[tuple, tuple]) -> list[int]:
    return sorted({b for _, b, _ in by_key if isinstance(b, int)})


def _lookup(by_key: dict[tuple, tuple], label: str, budget: int, task: str) -> tuple[str, dict] | None:
    """A run's (score name, scores) at ``budget``; ``full`` has no budget and serves every one."""
    return by_key.get((label, None if label == "full" else budget, task))


def task_matrix(dirs: list[str], budget: int) -> str:
    """Methods as rows, tasks as columns (then the RULER mean when there are several RULER tasks, and the mean of
    all tasks when there are others too) at one budget, full shown on every table. A cell is the task's score with
    its 95 % bootstrap interval over samples; a mean column is the unweighted mean of the tasks' means with the
    stratified interval (each task resampled on its own). Finished runs only."""
    by_key = score_runs(dirs, "--by-task")
    table: dict[str, dict] = defaultdict(dict)
    for label, _, task in by_key:
        found = _lookup(by_key, label, budget, task)
        if found is not None:
            table[label][task] = [v for v in found[1].values() if not math.isnan(v)]
    tasks = sorted({task for cells in table.values() for task in cells})
    ruler = [t for t in tasks if t.startswith("ruler/")]
    means = ([("RULER mean", ruler)] if len(ruler) > 1 else []) + ([("mean of tasks", tasks)] if len(ruler) < len(
        tasks) and len(tasks) > 1 else [])
    columns = [t.removeprefix("ruler/") for t in tasks] + [name for name, _ in means]
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for method in sorted(table, key=label_order):
        cells = table[method]
        intervals = [bootstrap_interval(cells[t]) if t in cells else None for t in tasks]
        intervals += [stratified_interval([cells[t] for t in members]) if all(t in cells for t in members) else None
                      for _, members in means]
        lines.append(f"| {method} | " + " | ".join(_interval_text(i) for i in intervals) + " |")
    return "\n".join(lines)


def _interval_text(interval, sign: str = "", digits: str = ".1f") -> str:
    """``mean [low, high]``; the mean alone (with "too few") when there is no interval; "-" for None."""
    if interval is None:
        return "-"
    if math.isnan(interval.low):
        return f"{interval.mean:{sign}{digits}} (too few)"
    return f"{interval.mean:{sign}{digits}} [{interval.low:{sign}{digits}}, {interval.high:{sign}{digits}}]"


def paired_tables(dirs: list[str], against: str, metrics: tuple[str, ...]) -> str:
    """Per metric, a table of every run of ``against``'s preset (``lava[alpha=0.2]`` for ``lava[alpha=0]``) against
    that run at the same budget on the same samples (``lavakv report --against``'s pairing and bootstrap): the mean
    paired difference (method - reference) with its 95 % interval (3 significant digits), and the verdict (+ the
    method leads, - it trails, ~ no difference resolved; lower is better for kl, ppl_ratio and attention_error), and
    the samples where the method is better / equal / worse (W/T/L)."""
    against = normalise_label(against)
    preset = against.partition("[")[0]
    runs = [run for run in map(load_run, find_runs(dirs)) if run["metrics"] is not None]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[_group_key(run)].append(run)
    out = []
    mark = {"leads": "+", "trails": "-"}
    for metric in metrics:
        for key, members in sorted(groups.items(), key=lambda item: [str(k) for k in item[0]]):
            references = {r["config"]["method"].get("budget"): r for r in members
                          if method_label(r["config"]) == against}
            labels = sorted({method_label(r["config"]) for r in members
                             if method_label(r["config"]).partition("[")[0] == preset} - {against}, key=label_order)
            budgets = sorted(b for b in references if b is not None)
            if not labels or not budgets:
                continue
            cells: dict[str, dict] = defaultdict(dict)
            pairs = set()
            for run in members:
                label, budget = method_label(run["config"]), run["config"]["method"].get("budget")
                if label not in labels or budget not in references:
                    continue
                base = references[budget]["scores"].get(metric)
                values = run["scores"].get(metric)
                if base is None or values is None:
                    continue
                result = paired_comparison(values, base, higher_is_better=higher_is_better(metric))
                d = result.difference
                pairs.add(d.n)
                cells[label][budget] = (f"{d.mean:+.3g} [{d.low:+.3g}, {d.high:+.3g}] "
                                        f"{mark.get(result.verdict, '~')} {result.wins}/{result.ties}/{result.losses}")
            task, model, mode = key[:3]
            out.append(f"**{metric}**: {model}, {task}, {mode}; paired against {against}, pairs per cell: "
                       f"{sorted(pairs)}; cell: mean difference [95 % CI] verdict W/T/L\n")
            out.append("| method | " + " | ".join(f"B={b}" for b in budgets) + " |")
            out.append("|---" * (len(budgets) + 1) + "|")
            for label in labels:
                out.append(f"| {label} | " + " | ".join(cells[label].get(b, "-") for b in budgets) + " |")
            out.append("")
    return "\n".join(out)


def versus_tables(dirs: list[str], candidates: list[str], baselines: list[str]) -> str:
    """Per budget, one table of paired score differences: a row per (candidate, baseline) pair, a column per task
    and a last column for the unweighted mean over the tasks. A task cell is ``lavakv report --against``'s pairing
    and bootstrap on the task's own score (mean of candidate - baseline per sample, 95 % interval, verdict in the
    score's direction: lower is better for kl); the mean column is the mean of the tasks' mean differences with the
    stratified bootstrap (each task resampled on its own, as the RULER mean), and its W/T/L counts every pair. The
    mean is left out ("-") when the tasks' scores differ in direction or scale. ``full`` (no budget) is compared
    at every budget. Finished runs only."""
    candidates = [normalise_label(c) for c in candidates]
    baselines = [normalise_label(b) for b in baselines]
    by_key = score_runs(dirs, "--versus")
    tasks = sorted({task for _, _, task in by_key})
    names = {task: name for (_, _, task), (name, _) in by_key.items()}
    kinds = {(higher_is_better(names[t]), metric_scale(t)) for t in tasks}
    poolable = len(kinds) == 1
    scale = {metric_scale(t) for t in tasks}
    unit = "x 100" if scale == {100.0} else "on each task's scale"
    mark = {"leads": "+", "trails": "-"}
    out = []
    for budget in _budgets(by_key):
        pairs_seen = set()
        lines = ["| method - baseline | " + " | ".join(t.removeprefix("ruler/") for t in tasks) + " | mean of tasks |",
                 "|---" * (len(tasks) + 2) + "|"]
        for candidate in candidates:
            for baseline in baselines:
                cells, groups, counts = [], [], [0, 0, 0]
                for task in tasks:
                    mine, theirs = _lookup(by_key, candidate, budget, task), _lookup(by_key, baseline, budget, task)
                    if mine is None or theirs is None:
                        cells.append("-")
                        continue
                    (name, values), (_, base) = mine, theirs
                    better = higher_is_better(name)
                    digits = ".1f" if metric_scale(task) == 100.0 else ".3g"
                    result = paired_comparison(values, base, higher_is_better=better)
                    pairs_seen.add(result.difference.n)
                    counts = [counts[0] + result.wins, counts[1] + result.ties, counts[2] + result.losses]
                    groups.append([values[i] - base[i] for i in base
                                   if i in values and not math.isnan(values[i] - base[i])])
                    cells.append(f"{_interval_text(result.difference, '+', digits)} {mark.get(result.verdict, '~')}")
                if poolable and groups and len(groups) == len(tasks):
                    better, task_scale = next(iter(kinds))
                    d = stratified_interval(groups)
                    flag = mark.get(verdict(d, better), "~")
                    digits = ".1f" if task_scale == 100.0 else ".3g"
                    cells.append(f"{_interval_text(d, '+', digits)} {flag} {'/'.join(map(str, counts))}")
                else:
                    cells.append("-")
                lines.append(f"| {candidate} - {baseline} | " + " | ".join(cells) + " |")
        out.append(f"**B = {budget}**: paired score differences {unit} (method - baseline) [95 % CI], + the method "
                   f"leads, - it trails, ~ not resolved; pairs per task: {sorted(pairs_seen)}; W/T/L over all "
                   "pairs in the last column\n")
        out.extend(lines)
        out.append("")
    return "\n".join(out)


def depth_table(dirs: list[str]) -> str:
    """Needle runs: per method and budget, the prompts answered exactly at each depth (``meta.depth`` of every
    record), and the total."""
    cells: dict[tuple, dict] = defaultdict(lambda: defaultdict(list))
    for d in dirs:
        for path in sorted(Path(d).glob("*/predictions.jsonl")):
            config = json.loads((path.parent / "config.json").read_text())
            if config["task"] != "needle":
                continue
            key = (method_label(config), config["method"].get("budget"))
            for line in path.read_text().splitlines():
                record = json.loads(line)
                cells[key][record["meta"]["depth"]].append(record["scores"]["exact"])
    depths = sorted({depth for row in cells.values() for depth in row})
    lines = ["| method | budget | " + " | ".join(f"depth {d:g}" for d in depths) + " | all |",
             "|---" * (len(depths) + 3) + "|"]
    for (label, budget), row in sorted(cells.items(), key=lambda item: (label_order(item[0][0]), item[0][1] or 0)):
        found = [f"{int(sum(row[d]))}/{len(row[d])}" if d in row else "-" for d in depths]
        total = [v for d in depths for v in row.get(d, [])]
        lines.append(f"| {label} | {budget if budget is not None else '-'} | " + " | ".join(found)
                     + f" | {int(sum(total))}/{len(total)} |")
    return "\n".join(lines)


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def main() -> None:
    if sys.argv[1:2] == ["--against"]:  # paired differences against one label, within its preset
        print(paired_tables(sys.argv[3:], sys.argv[2], ("kl", "top1_agreement", "attention_error")))
        return
    if sys.argv[1:2] == ["--versus"]:  # candidates against baselines, tasks x budgets
        print(versus_tables(sys.argv[4:], sys.argv[2].split(";"), sys.argv[3].split(";")))
        return
    if sys.argv[1:2] == ["--by-depth"]:
        print(depth_table(sys.argv[2:]))
        return
    if sys.argv[1:2] == ["--by-task"]:  # one score table per budget, tasks as columns
        by_key = score_runs(sys.argv[2:], "--by-task")
        tasks = sorted({task for _, _, task in by_key})
        samples = {t: min(len(v) for (_, _, task), (_, v) in by_key.items() if task == t) for t in tasks}
        counts = ", ".join(f"{t.removeprefix('ruler/')} {n}" for t, n in samples.items())
        for budget in _budgets(by_key):
            print(f"**B = {budget}** (score [95 % CI]; samples per task, fewest of any run: {counts})\n")
            print(task_matrix(sys.argv[2:], budget))
            print()
        return
    rows = load(sys.argv[1:])
    by_task = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    for task, task_rows in sorted(by_task.items()):
        metrics = [k for k in ("score", "kl", "top1_agreement", "ppl_ratio", "attention_error", "resident_kv_bytes")
                   if any(k in r for r in task_rows)]
        if task_rows[0].get("score_name") in metrics:
            metrics.remove("score")  # the task's score is one of the named metrics
        samples = sorted({r.get("samples") for r in task_rows})
        print(f"### {task} ({task_rows[0]['model']}, {task_rows[0]['query_mode']}, samples per run: {samples})\n")
        for metric in metrics:
            if metric == "resident_kv_bytes":
                for r in task_rows:
                    r["resident_kv_MiB"] = r["resident_kv_bytes"] / 2**20
                metric = "resident_kv_MiB"
            print(f"**{metric}**\n")
            print(pivot(task_rows, metric))
            print()


if __name__ == "__main__":
    main()
