#!/usr/bin/env bash
# The alpha sweep of issue #12 as it was run: from the root of a clean checkout of the commit that added
# per-method options to --methods (the shared working tree held another engineer's uncommitted runtime edits), with
# that checkout's src first on the path, results written into this directory of the main tree:
#   cd CHECKOUT && PYTHONPATH=src PYTHON=/path/to/.venv/bin/python \
#       nohup bash run.sh /path/to/benchmarks/results/eval/alpha_sweep SMOLLM_DEADLINE DEADLINE > LOG 2>&1 &
# (deadlines in seconds since the epoch; results in <root>/<model>-<length>k). Steps run one after another at the
# lowest CPU priority; each extends the runs of the step before it with more samples (`--samples` N only computes
# the samples a run lacks), so a step cut short by its deadline (SIGINT, as Ctrl-C) loses only the sample in
# progress and a later call resumes it.
set -u
root=${1:?results root}
smollm_deadline=${2:?deadline of the smollm2 steps}
deadline=${3:?deadline of everything}
python=${PYTHON:-.venv/bin/python}
sweep='full,lava[alpha=0],lava[alpha=0.1],lava[alpha=0.2],lava[alpha=0.5],ada-snapkv[alpha=0],ada-snapkv[alpha=0.1],ada-snapkv[alpha=0.2],ada-snapkv[alpha=0.5]'

step() {  # until model length budgets samples methods
    local left=$(( $1 - $(date +%s) ))
    if (( left < 120 )); then echo "$(date -u +%T) skip $2 --samples $5: deadline"; return 1; fi
    echo "$(date -u +%T) start $2 --lengths $3 --budgets $4 --samples $5 (${left} s left)"
    local start=$(date +%s)
    # python with the default SIGINT handler (a background job starts with SIGINT ignored), so that timeout's
    # SIGINT ends the run like Ctrl-C: the sample in progress is dropped, the wall time is recorded
    timeout -s INT -k 60 "$left" nice -n 19 "$python" -c \
        'import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); from lavakv.cli import main; sys.exit(main())' \
        eval --model "$2" --task fidelity --methods "$6" --budgets "$4" --lengths "$3" \
        --samples "$5" --out "$root/$2-$(( $3 / 1024 ))k" --no-progress
    local rc=$?
    echo "$(date -u +%T) end $2 --samples $5: rc $rc after $(( $(date +%s) - start )) s"
    return $rc
}

for n in 8 12 16 24 32; do step "$smollm_deadline" smollm2-135m 4096 128,256,512 "$n" "$sweep" || break; done
for n in 2 4 6 8 12 16; do step "$deadline" qwen2.5-coder-1.5b 2048 128,256 "$n" "$sweep" || break; done
