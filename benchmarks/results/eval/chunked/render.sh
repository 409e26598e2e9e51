#!/usr/bin/env bash
# Print the chunked-prefill tables for benchmarks/RESULTS-eval.md from the run directories (nothing typed in):
#   bash benchmarks/results/eval/chunked/render.sh > tables.md      (from the repository root)
# Needle found per depth (eval_tables.py --by-depth), then every run's means with intervals and the chunked runs
# paired against exact prefill at the same budget (lavakv report --against lava).
set -eu
python=${PYTHON:-.venv/bin/python}
lavakv=${LAVAKV:-.venv/bin/lavakv}
for dir in benchmarks/results/eval/chunked/*/; do
    [ -n "$(ls "$dir"*/metrics.json 2>/dev/null)" ] || continue
    echo "#### $(basename "$dir")"
    echo
    "$python" benchmarks/eval_tables.py --by-depth "$dir"
    echo
    echo '```'
    "$lavakv" report "$dir" --against lava
    echo '```'
    echo
done
