#!/usr/bin/env bash
# Tools some tests need from Debian's packages (idempotent):
# - chromium at /usr/bin/chromium for the browser tests (tests/browser), driven through
#   Playwright's Python API (never `playwright install`);
# - docker-compose (the Python v1 client; no Docker engine needed) to validate compose.yaml;
# - promtool (Debian's prometheus package) to check and unit-test monitoring/alerts.yaml.
# Without them those tests skip, unless CI is set: then they fail, and so does this script.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

missing=()
[ -x "$CHROMIUM" ] || missing+=(chromium)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v promtool >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
if command -v docker-compose >/dev/null; then
  echo "docker-compose: $(docker-compose version --short 2>/dev/null || echo present)"
elif [ -n "${CI:-}" ]; then
  echo "docker-compose: missing and could not be installed; CI is set, so failing" >&2
  exit 1
fi

if command -v promtool >/dev/null; then
  echo "promtool: $(promtool --version 2>&1 | head -n 1)"
elif [ -n "${CI:-}" ]; then
  echo "promtool: missing and could not be installed; CI is set, so failing" >&2
  exit 1
fi

if [ -x "$CHROMIUM" ]; then
  # Debian's wrapper script may print shell noise on stderr; keep only the version line.
  version=$("$CHROMIUM" --version 2>/dev/null | head -n 1 || true)
  echo "chromium: $CHROMIUM (${version:-version unknown})"
elif [ -n "${CI:-}" ]; then
  echo "chromium: missing at $CHROMIUM and could not be installed; CI is set, so failing" >&2
  exit 1
else
  echo "chromium: missing at $CHROMIUM (no apt-get); the browser tests will be skipped"
fi
