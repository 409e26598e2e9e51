#!/usr/bin/env bash
# Create (idempotently) the benchmark-only virtual environment that runs NVIDIA kvpress beside lavakv.
#
# kvpress 0.5.5 needs transformers <5.3 while lavakv is pinned to 5.24, so kvpress lives in its own venv at
# benchmarks/.kvpress-venv (gitignored). It never imports lavakv: it loads the same converted model directory
# with plain `from_pretrained`. kvpress is a benchmark dependency only, never a runtime one.
#
#   bash benchmarks/kvpress_env.sh            # prints the venv's python on its last line
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${KVPRESS_VENV:-$HERE/.kvpress-venv}"
PYTHON="${PYTHON:-python3}"
KVPRESS_VERSION="0.5.5"
TRANSFORMERS_VERSION="5.2.0"  # kvpress 0.5.5: transformers>=4.56,<5.3
TORCH_VERSION="2.13.0"        # the CPU build these machines carry; any other spec may pull a multi-GB CUDA build
STAMP="$VENV/.installed-kvpress-$KVPRESS_VERSION-transformers-$TRANSFORMERS_VERSION-torch-$TORCH_VERSION"

if [[ -f "$STAMP" ]]; then
    echo "$VENV/bin/python"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet)
# torch first and pinned: kvpress only asks for torch<3, which would otherwise resolve to a CUDA wheel
"${PIP[@]}" "torch==$TORCH_VERSION"
"${PIP[@]}" "torch==$TORCH_VERSION" "kvpress==$KVPRESS_VERSION" "transformers==$TRANSFORMERS_VERSION" safetensors psutil
"$VENV/bin/python" - <<'EOF'
import torch, transformers, kvpress  # noqa: E401
from importlib.metadata import version
assert torch.__version__.startswith("2.13.0"), torch.__version__
print(f"kvpress {version('kvpress')} / transformers {transformers.__version__} / torch {torch.__version__}")
EOF
touch "$STAMP"
echo "$VENV/bin/python"
