#!/usr/bin/env bash
# Issue #14, chunked prefill vs exact prefill at the same final budget: needle by depth and fidelity (KL over a
# teacher-forced continuation), smollm2-135m at 7.5K tokens (its context is 8K; 16K needs a longer-context model,
# e.g. MODEL=qwen2.5-coder-1.5b LENGTH=16000). BUDGET (default 256) is the final budget per head of every method.
# DEPTHS (default 0,0.25,0.5,0.75,1) are the needle depths. Resumable: rerun with a larger --samples to extend
# every run; runs at another BUDGET land beside the others. RANK/WORLD_SIZE split the samples over processes.
# The runs recorded here were made while the adaptive-head floor defaulted to alpha = 0 (each config.json says so);
# since #12 it is 0.2, so `lavakv eval` refuses to add runs under the same plain labels here. To extend these runs
# pin the old value in every adaptive entry (lava[alpha=0], ...), which writes new run directories, or use another
# --out for runs with today's defaults.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
MODEL=${MODEL:-smollm2-135m}
LENGTH=${LENGTH:-7680}
SAMPLES=${SAMPLES:-1}
BUDGET=${BUDGET:-256}
DEPTHS=${DEPTHS:-0,0.25,0.5,0.75,1}
METHODS='full,lava,lava[chunk_size=512],lava[chunk_size=2048]'
OUT="benchmarks/results/eval/chunked/${MODEL}_${LENGTH}"
lavakv eval --model "$MODEL" --task needle --methods "$METHODS" --budgets "$BUDGET" --lengths "$LENGTH" \
  --depths "$DEPTHS" --samples "$SAMPLES" --out "$OUT"
lavakv eval --model "$MODEL" --task fidelity --methods "$METHODS" --budgets "$BUDGET" --lengths "$LENGTH" \
  --continuation 256 --samples "$((SAMPLES * 2))" --out "$OUT"
