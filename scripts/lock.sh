#!/usr/bin/env bash
# Write requirements-dev.lock: the exact versions scripts/setup.sh installs (the project's
# dependencies with its `test` extra) for CPython 3.11 on Linux x86_64. torch is left out:
# setup.sh installs the CPU build with pip first.
# `--check` writes nothing: it resolves pyproject.toml again within the lock's pins and
# fails if the result differs (a dependency added, removed or re-ranged without a new lock).
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
lock=requirements-dev.lock
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "torch==2.13.0+cpu" >"$work/torch.txt" # resolve torch as the CPU wheel, then omit it
args=(--extra test --quiet --no-header --annotation-style line
  --python-version 3.11 --python-platform x86_64-manylinux_2_28
  --find-links "${TORCH_WHEELS:-/opt/wheels}" --constraint "$work/torch.txt"
  --no-emit-package torch)
if [ "${1:-}" != "--check" ]; then
  "$UV" pip compile pyproject.toml "${args[@]}" --output-file "$lock"
  exit 0
fi
pins() { grep -v '^#' "$1" | sed 's/ *#.*//' | sort; }
grep -v '^#' "$lock" | sed 's/ *#.*//' >"$work/pins.txt"
if ! "$UV" pip compile pyproject.toml "${args[@]}" --constraint "$work/pins.txt" \
  --output-file "$work/again.lock" 2>"$work/err"; then
  echo "$lock no longer satisfies pyproject.toml; run scripts/lock.sh:" >&2
  cat "$work/err" >&2
  exit 1
fi
if ! diff <(pins "$lock") <(pins "$work/again.lock") >"$work/diff"; then
  echo "$lock is out of date with pyproject.toml; run scripts/lock.sh:" >&2
  cat "$work/diff" >&2
  exit 1
fi
