#!/usr/bin/env bash
# Issue #14, several questions from one compressed context (task multiquestion, docs/evaluation.md).
# Query-aware: snapkv and lava compress the context for the first question; expected-attention and kvzip (and
# their LAVa-budget presets) compress it alone. Ratios 0.75 and 0.9 keep 25 % and 10 % of the context.
# TASK=multiquestion:niah_multiquery runs RULER's essays instead of the generated keys (run directories are named
# after the subtask, so both share one directory). Resumable: rerun with a larger --samples to extend every run.
# The runs recorded here were made while the adaptive-head floor defaulted to alpha = 0 (each config.json says so);
# since #12 it is 0.2, so `lavakv eval` refuses to add runs under the same plain labels here. To extend these runs
# pin the old value in every adaptive entry (lava[alpha=0], ...), which writes new run directories, or use another
# --out for runs with today's defaults.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
MODEL=${MODEL:-smollm2-135m}
LENGTH=${LENGTH:-2048}
SAMPLES=${SAMPLES:-10}
TASK=${TASK:-multiquestion}
lavakv eval --model "$MODEL" --task "$TASK" \
  --methods full,snapkv,lava,expected-attention,lava-ea,kvzip,lava-kvzip \
  --compression-ratios 0.75,0.9 --lengths "$LENGTH" --samples "$SAMPLES" \
  --out "benchmarks/results/eval/multiquestion/${MODEL}_${LENGTH}"
