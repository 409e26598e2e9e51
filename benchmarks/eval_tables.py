"""Render evaluation result directories (``lavakv eval --out``) as markdown tables for benchmarks/RESULTS-eval.md.

    python benchmarks/eval_tables.py benchmarks/results/eval/fidelity_smollm2_4k > table.md
    python benchmarks/eval_tables.py --by-task benchmarks/results/eval/qwen_ruler_code_4k   # tasks as columns

Every number comes from the runs' metrics.json files; nothing is typed by hand.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def load(dirs: list[str]) -> list[dict]:
    rows = []
    for d in dirs:
        for path in sorted(Path(d).glob("*/metrics.json")):
            rows.append(json.loads(path.read_text()))
    return rows


def pivot(rows: list[dict], metric: str) -> str:
    """Methods as rows, budgets as columns, one metric (full shown once)."""
    budgets = sorted({r["budget"] for r in rows if r.get("budget") is not None})
    table: dict[str, dict] = defaultdict(dict)
    for r in rows:
        table[r["method"]][r.get("budget")] = r.get(metric)
    head = "| method | " + " | ".join(f"B={b}" for b in budgets) + " |"
    lines = [head, "|---" * (len(budgets) + 1) + "|"]
    for method in sorted(table, key=lambda m: (m != "full", m)):
        cells = table[method]
        if method == "full":
            value = cells.get(None)
            lines.append("| full | " + " | ".join(_fmt(value) for _ in budgets) + " |")
        else:
            lines.append(f"| {method} | " + " | ".join(_fmt(cells.get(b)) for b in budgets) + " |")
    return "\n".join(lines)


def task_matrix(rows: list[dict], budget: int) -> str:
    """Methods as rows, tasks as columns (plus the RULER mean) at one budget; full shown on every table."""
    kinds = {(r["model"], r["query_mode"]) for r in rows}
    if len(kinds) > 1:
        raise SystemExit(f"--by-task: the directories mix models / query modes {sorted(kinds)}; give one kind")
    tasks = sorted({r["task"] for r in rows})
    ruler = [t for t in tasks if t.startswith("ruler/")]
    table: dict[str, dict] = defaultdict(dict)
    for r in rows:
        if r["method"] == "full" or r.get("budget") == budget:
            table[r["method"]][r["task"]] = r.get("score")
    columns = [t.removeprefix("ruler/") for t in tasks] + (["RULER mean"] if len(ruler) > 1 else [])
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for method in sorted(table, key=lambda m: (m != "full", m)):
        cells = table[method]
        values = [cells.get(t) for t in tasks]
        if len(ruler) > 1:
            scores = [cells.get(t) for t in ruler]
            values.append(None if None in scores else sum(scores) / len(scores))
        lines.append(f"| {method} | " + " | ".join(_fmt(v, 1) for v in values) + " |")
    return "\n".join(lines)


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def main() -> None:
    if sys.argv[1:2] == ["--by-task"]:  # one score table per budget, tasks as columns
        rows = load(sys.argv[2:])
        for budget in sorted({r["budget"] for r in rows if r.get("budget") is not None}):
            tasks = sorted({r["task"] for r in rows})
            samples = {t: min(r.get("samples", 0) for r in rows if r["task"] == t) for t in tasks}
            counts = ", ".join(f"{t.removeprefix('ruler/')} {n}" for t, n in samples.items())
            print(f"**B = {budget}** (score x 100; samples per task: {counts})\n")
            print(task_matrix(rows, budget))
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
