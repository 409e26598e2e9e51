#!/usr/bin/env bash
# Print the multiquestion tables for benchmarks/RESULTS-eval.md from the run directories (nothing typed in):
#   bash benchmarks/results/eval/multiquestion/render.sh > tables.md      (from the repository root)
set -eu
python=${PYTHON:-.venv/bin/python}
for dir in benchmarks/results/eval/multiquestion/*/; do
    [ -n "$(ls "$dir"*/metrics.json 2>/dev/null)" ] || continue
    "$python" benchmarks/multiquestion_tables.py "$dir"
done
