#!/usr/bin/env bash
# The fidelity runs of issue #12: the adaptive-head floor alpha in {0, 0.1, 0.2, 0.5} for lava and ada-snapkv,
# LAVa's value-norm range, and the quality run's methods (the authors' LAVa configuration, the LAVa ablations and
# the baselines) on the fidelity task (KL to the uncompressed model, top-1 agreement, attention-output error), all
# with one shared exact prefill per sample. From the repository root:
#   bash benchmarks/results/eval/alpha_sweep/run.sh                 # one process
#   RANK=r WORLD_SIZE=2 bash benchmarks/results/eval/alpha_sweep/run.sh   # r = 0 and 1 side by side (or torchrun)
# SAMPLES (default 32) samples per run: smollm2-135m at 4K tokens, budgets 128/256/512, then qwen2.5-coder-1.5b at 2K,
# budgets 128/256. Resumable: a run directory only computes the samples it lacks, so a rerun (or a larger SAMPLES)
# extends the sweep. Every alpha is pinned in its label (0.2 is lavakv's default, 0 the default before), so the runs
# keep their meaning. (The first 8 smollm2 and 6 qwen samples of the alpha entries were run by an earlier form of
# this script, stepwise with deadlines: log.txt; the baselines joined later and start from sample 0.)
set -euo pipefail
cd "$(dirname "$0")/../../../.."
SAMPLES=${SAMPLES:-32}
here=benchmarks/results/eval/alpha_sweep
sweep='full,lava[alpha=0],lava[alpha=0.1],lava[alpha=0.2],lava[alpha=0.5],ada-snapkv[alpha=0],ada-snapkv[alpha=0.1]'
sweep+=',ada-snapkv[alpha=0.2],ada-snapkv[alpha=0.5]'
sweep+=',lava[alpha=0,value_norm_range=prefix],lava[alpha=0.2,value_norm_range=prefix]'
sweep+=',lava[alpha=0.2,floor=lava-reference,value_norm_range=prefix],lava-uniform-layer[alpha=0],lava-uniform-head'
sweep+=',snapkv,pyramidkv,cake,streamingllm'
lavakv eval --model smollm2-135m --task fidelity --methods "$sweep" --budgets 128,256,512 --lengths 4096 \
  --samples "$SAMPLES" --out "$here/smollm2-135m-4k"
lavakv eval --model qwen2.5-coder-1.5b --task fidelity --methods "$sweep" --budgets 128,256 --lengths 2048 \
  --samples "$SAMPLES" --out "$here/qwen2.5-coder-1.5b-2k"
