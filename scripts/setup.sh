#!/usr/bin/env bash
# Create .venv and install the project with its test tools from requirements-dev.lock
# (exact versions, written by scripts/lock.sh). Idempotent: a second run takes two seconds.
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
# Byte-compile the installed packages once per lock, and this checkout's code: where
# PYTHONDONTWRITEBYTECODE is set (as on this machine kind), Python would otherwise compile
# torch, diffusers, celery... from source again in every process it starts. Measured: a
# render worker's start-up 11.1 -> 6.3 CPU-s, beat 8.1 -> 0.8, `canary --help` 1.8 -> 0.7 s.
# A few files in third-party packages are not Python 3 (templates, py2 examples):
# compileall reports them and fails, which is expected and ignored.
purelib=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
stamp=.venv/.bytecode-compiled
lock_hash=$(sha256sum requirements-dev.lock | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_hash" ]; then
  python -m compileall -q -j 0 "$purelib" >/dev/null 2>&1 || true
  echo "$lock_hash" >"$stamp"
fi
python -m compileall -q -j 0 analysis benchmarks canary gateway scheduler storage tasks \
  celeryconfig.py >/dev/null
