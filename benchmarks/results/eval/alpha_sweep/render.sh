#!/usr/bin/env bash
# Print the tables of the alpha sweep for benchmarks/RESULTS-eval.md, from the run directories (nothing typed in):
#   bash benchmarks/results/eval/alpha_sweep/render.sh > tables.md      (from the repository root)
set -eu
here=${1:-benchmarks/results/eval/alpha_sweep}
python=${PYTHON:-.venv/bin/python}
for dir in "$here"/*/; do
    [ -n "$(ls "$dir"*/metrics.json 2>/dev/null)" ] || continue
    name=$(basename "$dir")
    echo "#### $name"
    echo
    "$python" - "$dir" <<'PY'
import json, sys
from pathlib import Path
from lavakv.eval.report import method_label
runs = [p for p in sorted(Path(sys.argv[1]).iterdir()) if (p / "config.json").exists()]
finished = [p for p in runs if (p / "metrics.json").exists()]
samples = sorted({json.loads((p / "metrics.json").read_text())["samples"] for p in finished})
unfinished = sorted({method_label(json.loads((p / "config.json").read_text())) for p in runs if p not in finished})
wall = max(json.loads((p / "provenance.json").read_text()).get("wall_seconds", 0.0) for p in runs)
commits = sorted({json.loads((p / "provenance.json").read_text())["git"]["commit"][:7] for p in runs})
print(f"{len(finished)} finished runs, samples per finished run: {samples}; model time of the shared sessions "
      f"(provenance wall_seconds, the longest run): {wall / 60:.1f} min; commit {', '.join(commits)}"
      + (f"; unfinished (not in the tables): {', '.join(unfinished)}" if unfinished else "") + "\n")
PY
    "$python" benchmarks/eval_tables.py "$dir"
    for reference in 'lava[alpha=0]' 'ada-snapkv[alpha=0]'; do
        "$python" benchmarks/eval_tables.py --against "$reference" "$dir"
    done
done
