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
# per method and budget: mean over every record of kept entries / (L * H_kv * B), with L * H_kv from the full run's
# record of the same sample (all its entries / its prompt tokens); 1 = exactly the budget
import json, sys
from collections import defaultdict
from pathlib import Path
from lavakv.eval.report import method_label
from lavakv.eval.runner import load_records
ratios, per_entry = defaultdict(list), {}
runs = [(json.loads((p / "config.json").read_text()), p) for p in Path(sys.argv[1]).iterdir()
        if (p / "config.json").exists()]
for config, path in runs:
    if config["method"]["name"] == "full":
        for r in load_records(path):
            per_entry[(config["task"], r["id"])] = r["kept_entries"] / r["prompt_tokens"]
for config, path in runs:
    budget = config["method"].get("budget")
    if budget is None:
        continue
    for r in load_records(path):
        slots = per_entry.get((config["task"], r["id"]))
        if slots:
            ratios[(method_label(config), budget)].append(r["kept_entries"] / (slots * min(budget, r["prompt_tokens"])))
budgets = sorted({b for _, b in ratios})
print("kept entries / (L * H_kv * B), mean over every recorded sample of every task (1.000 = the budget exactly)\n")
print("| method | " + " | ".join(f"B={b}" for b in budgets) + " |")
print("|---" * (len(budgets) + 1) + "|")
for label in sorted({m for m, _ in ratios}):
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
