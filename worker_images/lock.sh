#!/bin/sh
# Re-lock the worker image's dependencies: worker_images/requirements.lock, every package
# pinned with its hashes, for the image's platform (CPython 3.11, linux x86_64, glibc 2.28+).
# torch comes from PyPI: its linux x86_64 wheels there are the CUDA builds (the CUDA
# runtime arrives as nvidia-* wheels), so the image needs no CUDA base and no extra index.
# Usage: worker_images/lock.sh [OUTPUT]   (uv is in the project's [test] extra)
set -eu
cd "$(dirname "$0")/.."
exec "${UV:-uv}" pip compile pyproject.toml --extra gpu \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --index-url https://pypi.org/simple --generate-hashes --quiet \
    --custom-compile-command "worker_images/lock.sh" \
    --output-file "${1:-worker_images/requirements.lock}"
