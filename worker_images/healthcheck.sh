#!/bin/sh
# The image's HEALTHCHECK. A render worker (MODEL_VERSION set) is healthy when it answers
# the broker under its node name render-<version>-<device>@<host>, as `canary worker`
# names it; other processes of the stack (API, Flower) have their own checks in compose.yaml.
set -eu
[ -n "${MODEL_VERSION:-}" ] || exit 0
node="render-${MODEL_VERSION}-$(printf '%s' "${DEVICE}" | tr -d :)@$(hostname)"
exec celery -A tasks inspect ping --timeout 5 --destination "$node"
