"""A real HTTP webhook receiver in a thread, for notification tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Receiver:
    url: str
    fail_first: int = 0  # answer 503 to this many requests before accepting
    requests: list[dict[str, Any]] = field(default_factory=list)  # every POST body, in order
    accepted: list[dict[str, Any]] = field(default_factory=list)  # those answered 200

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        import time

        deadline = time.monotonic() + timeout
        while len(self.accepted) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.accepted


@contextmanager
def webhook_receiver(fail_first: int = 0) -> Iterator[Receiver]:
    """Serve on a free loopback port until the block ends."""
    lock = threading.Lock()
    receiver = Receiver(url="", fail_first=fail_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                receiver.requests.append(body)
                failing = len(receiver.requests) <= receiver.fail_first
                if not failing:
                    receiver.accepted.append(body)
            self.send_response(503 if failing else 200)
            self.end_headers()
            self.wfile.write(b"busy" if failing else b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
