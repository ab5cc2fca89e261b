#!/usr/bin/env bash
# Make sure Debian's chromium is at /usr/bin/chromium for the browser tests (tests/browser),
# which drive it through Playwright's Python API (never `playwright install`). Idempotent.
# Without chromium the browser tests skip, unless CI is set: then they fail, and so does this.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ ! -x "$CHROMIUM" ] && command -v apt-get >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
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
