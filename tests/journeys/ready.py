"""Wait until a service a journey started is ready: ``python -m tests.journeys.ready stack|api``.

`stack`: a render worker of every version answers a ping on the local stack's broker
(``CANARY_LOCAL_BROKER_PORT``); `api`: ``/healthz`` answers on ``CANARY_API_URL``
(default http://localhost:8000). Exits 1 with a message after the timeout.
"""

from __future__ import annotations

import os
import sys
import time

import httpx

STACK_TIMEOUT_S = 180.0
API_TIMEOUT_S = 60.0
VERSIONS = ("v1", "v2")


def stack_ready(broker_port: str, timeout: float = STACK_TIMEOUT_S) -> bool:
    from celery import Celery

    app = Celery(broker=f"redis://127.0.0.1:{broker_port}/0")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                replies = app.control.ping(timeout=1.0) or []
            except Exception:  # the broker is not up yet
                replies = []
                time.sleep(0.5)
            names = [node.split("@")[0] for reply in replies for node in reply]
            # default node names carry a unique suffix: render-v1-cpu-<suffix>@host
            if all(any(n.startswith(f"render-{v}-cpu") for n in names) for v in VERSIONS):
                return True
        return False
    finally:
        app.close()


def api_ready(url: str, timeout: float = API_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


def main(what: str) -> int:
    if what == "stack":
        ok = stack_ready(os.environ.get("CANARY_LOCAL_BROKER_PORT", "6390"))
    else:
        ok = api_ready(os.environ.get("CANARY_API_URL", "http://localhost:8000"))
    if not ok:
        print(f"{what} not ready in time", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
