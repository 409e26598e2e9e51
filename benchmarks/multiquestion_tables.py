"""Render ``lavakv eval --task multiquestion`` result directories as markdown tables for benchmarks/RESULTS-eval.md.

    python benchmarks/multiquestion_tables.py benchmarks/results/eval/multiquestion/qwen2.5-coder-1.5b_4096

Per subtask and kept fraction: each method's ``first`` (the question a query-aware method compressed for),
``later`` (the mean over the other questions) and ``all`` scores with 95 % bootstrap intervals over documents; the
paired ``later - first`` within the method (what the other questions lose); and ``all`` paired against each other
method (``lavakv report --against``'s pairing and bootstrap). Every number comes from the runs' files; nothing is
typed by hand. Every recorded document is read (finished runs or not, shards of a spread run included), over
the documents every run of the subtask has.
"""

from __future__ import annotations

import sys
from collections import defaultdict

from lavakv.eval.intervals import bootstrap_interval, paired_comparison
from lavakv.eval.report import _sample_scores, find_runs, load_run, method_label, read_records
from lavakv.eval.runner import prediction_files


def _cell(interval) -> str:
    if interval.n == 0:
        return "-"
    if not interval.resolved:
        return f"{interval.mean:.1f}"
    return f"{interval.mean:.1f} [{interval.low:.1f}, {interval.high:.1f}]"


def _paired(candidate: dict, reference: dict) -> str:
    result = paired_comparison(candidate, reference)
    d = result.difference
    mark = {"leads": "+", "trails": "-"}.get(result.verdict, "~")
    if not d.resolved:
        return f"{d.mean:+.1f} {result.wins}/{result.ties}/{result.losses}"
    return f"{d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}] {mark} {result.wins}/{result.ties}/{result.losses}"


def tables(dirs: list[str]) -> str:
    runs = []
    for directory in find_runs(dirs):  # finished or not: every sample recorded so far (shards of a spread run too)
        run = load_run(directory)
        records = [r for path in prediction_files(directory) for r in read_records(path)]
        run["scores"] = _sample_scores(directory, run["config"], None, records)[1]
        if run["scores"]:
            runs.append(run)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        config = run["config"]
        groups[(config["task"], config["model"], config["query_mode"])].append(run)
    out = []
    for (task, model, mode), members in sorted(groups.items()):
        common = set.intersection(*(set(r["scores"]["all"]) for r in members))
        fractions = sorted({r["config"]["method"].get("compression_ratio") for r in members} - {None})
        out.append(f"### {task}, {model}, {mode}: {len(common)} documents in every run\n")
        full = [r for r in members if method_label(r["config"]) == "full"]
        for ratio in fractions:
            rows = [r for r in members if r["config"]["method"].get("compression_ratio") == ratio]
            rows.sort(key=lambda r: method_label(r["config"]))
            out.append(f"**{100 * (1 - ratio):.0f} % of the context kept** (compression ratio {ratio}); score x 100, "
                       "mean [95 % CI] over documents; later - first: paired within the method, W/T/L = documents "
                       "where later is better / equal / worse\n")
            out.append("| method | first | later | all | later - first |")
            out.append("|---|---|---|---|---|")
            for r in full + rows:
                scores = {k: {i: v for i, v in r["scores"][k].items() if i in common}
                          for k in ("first", "later", "all")}
                cells = [_cell(bootstrap_interval(list(scores[k].values()))) for k in ("first", "later", "all")]
                out.append(f"| {method_label(r['config'])} | " + " | ".join(cells) + " | "
                           + _paired(scores["later"], scores["first"]) + " |")
            out.append("")
            labels = [method_label(r["config"]) for r in rows]
            out.append(f"`all`, row - column, paired over documents (mean [95 % CI] verdict W/T/L), {ratio}:\n")
            out.append("| method | " + " | ".join(labels) + " |")
            out.append("|---" * (len(labels) + 1) + "|")
            by_label = {method_label(r["config"]): {i: v for i, v in r["scores"]["all"].items() if i in common}
                        for r in rows}
            for a in labels:
                out.append(f"| {a} | " + " | ".join("" if a == b else _paired(by_label[a], by_label[b])
                                                      for b in labels) + " |")
            out.append("")
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print(tables(sys.argv[1:]))


if __name__ == "__main__":
    main()
