#!/usr/bin/env bash
# Create .venv and install the project with its test tools from requirements-dev.lock
# (exact versions, written by scripts/lock.sh). Idempotent: a second run takes a second.
# torch is installed first with pip, pinned to the CPU build this machine kind keeps on
# disk (pip looks there; uv does not), so nothing later pulls a multi-GB CUDA build (set
# TORCH_SPEC to override on GPU hosts). uv then installs the rest: the lock leaves torch
# out, so uv never replaces it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -c "import torch" 2>/dev/null || python -m pip install -q "$TORCH_SPEC"
# bootstrap uv with pip, at the version the lock pins
[ -x .venv/bin/uv ] || python -m pip install -q "$(grep -o '^uv==[^ ]*' requirements-dev.lock)"
uv pip install -q -r requirements-dev.lock
uv pip install -q --no-deps -e .
