#!/usr/bin/env bash
# Create .venv and install the project with its test tools. Idempotent.
# torch is installed first, pinned to the CPU build this machine kind keeps on disk, so
# that nothing later pulls a multi-GB CUDA build (set TORCH_SPEC to override on GPU hosts).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "$TORCH_SPEC"
python -m pip install -q -e ".[test]"
