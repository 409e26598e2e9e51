#!/usr/bin/env bash
# Print the tables of the #12 quality run for benchmarks/RESULTS-eval.md, from the run directories (nothing typed in):
#   bash benchmarks/results/eval/quality_qwen_4k/render.sh > tables.md      (from the repository root)
# The state of the run (finished runs, samples recorded per task), the scores with their 95 % intervals per budget
# (benchmarks/eval_tables.py --by-task), then paired differences (eval_tables.py --versus): LAVa against every
# baseline, and the LAVa variants against each other. Only finished runs are tabulated.
set -eu
here=${1:-benchmarks/results/eval/quality_qwen_4k}
python=${PYTHON:-.venv/bin/python}
"$python" - "$here" <<'PY'
import json, sys
from collections import Counter
from pathlib import Path
from lavakv.eval.report import load_run, find_runs
runs = [load_run(p) for p in find_runs([sys.argv[1]])]
finished = [r for r in runs if r["metrics"] is not None]
recorded = Counter()
for r in runs:
    recorded[r["config"]["task"]] = max(recorded[r["config"]["task"]], r["predictions"])
commits = sorted({r["provenance"].get("git", {}).get("commit", "?")[:7] for r in runs})
print(f"{len(finished)} of {len(runs)} runs finished; samples recorded per task (most of any run): "
      + ", ".join(f"{t.removeprefix('ruler/')} {n}" for t, n in sorted(recorded.items()))
      + f"; code at commit {', '.join(commits)}.\n")
PY
"$python" benchmarks/eval_tables.py --by-task "$here"
echo "#### Entries kept against the nominal budget"
echo
"$python" - "$here" <<'PY'
# per method and budget, over the finished runs: the mean over their records of kept entries / (L * H_kv * B), with
# L * H_kv from the full run's record of the same sample (all its entries / the tokens it holds); 1 = the budget
import sys
from collections import defaultdict
sys.path.insert(0, "benchmarks")
from eval_tables import label_order
from lavakv.eval.report import find_runs, load_run, method_label
from lavakv.eval.runner import load_records
runs = [run for run in map(load_run, find_runs([sys.argv[1]])) if run["metrics"] is not None]
ratios, slots = defaultdict(list), {}
for run in runs:
    if run["config"]["method"]["name"] == "full":
        for r in load_records(run["directory"]):
            slots[(run["config"]["task"], r["id"])] = r["kept_entries"] / r["compressed_tokens"]
for run in runs:
    budget = run["config"]["method"].get("budget")
    if budget is None:
        continue
    for r in load_records(run["directory"]):
        per_token = slots.get((run["config"]["task"], r["id"]))
        if per_token:
            nominal = per_token * min(budget, r["compressed_tokens"])
            ratios[(method_label(run["config"]), budget)].append(r["kept_entries"] / nominal)
budgets = sorted({b for _, b in ratios})
print("kept entries / (L * H_kv * B), mean over every sample of the finished runs (1.000 = the budget exactly)\n")
print("| method | " + " | ".join(f"B={b}" for b in budgets) + " |")
print("|---" * (len(budgets) + 1) + "|")
for label in sorted({m for m, _ in ratios}, key=label_order):
    cells = [ratios.get((label, b)) for b in budgets]
    print(f"| {label} | " + " | ".join(f"{sum(c) / len(c):.3f}" if c else "-" for c in cells) + " |")
print()
PY
baselines='snapkv;ada-snapkv[alpha=0];ada-snapkv[alpha=0.2];cake;pyramidkv;streamingllm'
echo "#### LAVa against the baselines"
echo
"$python" benchmarks/eval_tables.py --versus 'lava[alpha=0];lava[alpha=0.2]' "$baselines" "$here"
echo "#### The LAVa variants"
echo
"$python" benchmarks/eval_tables.py --versus \
    'lava[alpha=0.2];lava-uniform-layer[alpha=0];lava-uniform-head;lava[alpha=0.2,floor=lava-reference,value_norm_range=prefix]' \
    'lava[alpha=0]' "$here"
