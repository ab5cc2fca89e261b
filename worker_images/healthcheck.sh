#!/bin/sh
# The image's HEALTHCHECK. A render worker (MODEL_VERSION set) is healthy when it answers
# the broker under a node name render-<version>-<device>[-<suffix>]@<host>, as `canary
# worker` names it (the default carries a unique suffix, tasks/nodes.py); other processes
# of the stack (API, Flower) have their own checks in compose.yaml.
set -eu
[ -n "${MODEL_VERSION:-}" ] || exit 0
prefix="render-${MODEL_VERSION}-$(printf '%s' "${DEVICE}" | tr -d :)"
host="$(hostname)"
celery -A tasks.app inspect ping --timeout 5 | grep -Eq -- "-> +${prefix}(-[^@ ]+)?@${host}: OK"
