#!/usr/bin/env bash
# Print the tables of the fidelity runs of #12 (alpha sweep, value-norm range and the quality run's methods) for
# benchmarks/RESULTS-eval.md, from the run directories (nothing typed in):
#   bash benchmarks/results/eval/alpha_sweep/render.sh > tables.md      (from the repository root)
# Per model: the mean tables of the runs with the most samples (benchmarks/eval_tables.py), then the paired
# differences against lava[alpha=0], ada-snapkv[alpha=0] and lava[alpha=0.2] (eval_tables.py --against) over every
# finished run, each cell over the samples both runs have (pairs per cell says how many); once the baselines ran,
# paired KL grids of lava[alpha=0.2] against them and of the LAVa variants against lava[alpha=0] (--versus).
set -eu
here=${1:-benchmarks/results/eval/alpha_sweep}
python=${PYTHON:-.venv/bin/python}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for dir in "$here"/*/; do
    [ -n "$(ls "$dir"*/metrics.json 2>/dev/null)" ] || continue
    name=$(basename "$dir")
    echo "#### $name"
    echo
    mkdir "$scratch/$name"
    "$python" - "$dir" "$scratch/$name" <<'PY'
import json, sys
from pathlib import Path
from lavakv.eval.report import method_label
runs = [p for p in sorted(Path(sys.argv[1]).iterdir()) if (p / "config.json").exists()]
finished = {p: json.loads((p / "metrics.json").read_text())["samples"] for p in runs if (p / "metrics.json").exists()}
most = max(finished.values())
short = sorted({f"{method_label(json.loads((p / 'config.json').read_text()))} ({n})" for p, n in finished.items()
                if n < most})
unfinished = sorted({method_label(json.loads((p / "config.json").read_text())) for p in runs if p not in finished})
wall = max(json.loads((p / "provenance.json").read_text()).get("wall_seconds", 0.0) for p in runs)
commits = sorted({json.loads((p / "provenance.json").read_text())["git"]["commit"][:7] for p in runs})
for p, n in finished.items():
    if n == most:
        (Path(sys.argv[2]) / p.name).symlink_to(p.resolve())
print(f"{len(finished)} finished runs, {most} samples each" + (f" except {', '.join(short)}" if short else "")
      + f"; model time of the shared sessions (provenance wall_seconds, the longest run): {wall / 60:.1f} min; "
      f"code at commit {', '.join(commits)}"
      + (f"; unfinished (not shown): {', '.join(unfinished)}" if unfinished else "") + ".\n")
PY
    "$python" benchmarks/eval_tables.py "$scratch/$name"
    for reference in 'lava[alpha=0]' 'ada-snapkv[alpha=0]' 'lava[alpha=0.2]'; do
        "$python" benchmarks/eval_tables.py --against "$reference" "$dir"
    done
    "$python" - "$dir" <<'PY'
# value_norm_range: the largest change of one sample's KL, prefix against all, at alpha 0 and 0.2 over the budgets
import sys
from lavakv.eval.report import find_runs, load_run, method_label
from lavakv.eval.runner import load_records
kl = {}
for run in map(load_run, find_runs([sys.argv[1]])):
    kl[(method_label(run["config"]), run["config"]["method"]["budget"])] = {
        r["id"]: r["scores"]["kl"] for r in load_records(run["directory"])}
changes = [abs(prefix[i] - plain[i]) / plain[i]
           for (label, budget), plain in kl.items() if label in ("lava[alpha=0]", "lava[alpha=0.2]")
           for prefix in [kl.get((label[:-1] + ",value_norm_range=prefix]", budget), {})] for i in prefix]
if changes:
    print(f"value_norm_range=prefix against all (lava, alpha 0 and 0.2, every budget): one sample's KL changes by at "
          f"most {100 * max(changes):.2f} % ({len(changes)} pairs).\n")
PY
    if [ -n "$(ls -d "$dir"fidelity__*__snapkv-b*/ 2>/dev/null)" ]; then  # the quality run's methods, once they ran
        echo "##### LAVa (alpha 0.2, the default) against the baselines, and the LAVa variants against lava[alpha=0]"
        echo
        "$python" benchmarks/eval_tables.py --versus 'lava[alpha=0.2]' \
            'snapkv;ada-snapkv[alpha=0.2];cake;pyramidkv;streamingllm' "$dir"
        "$python" benchmarks/eval_tables.py --versus \
            'lava-uniform-layer[alpha=0];lava-uniform-head;lava[alpha=0.2,floor=lava-reference,value_norm_range=prefix]' \
            'lava[alpha=0]' "$dir"
    fi
done
