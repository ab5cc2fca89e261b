"""Running an app under uvicorn with keep-alive connections that are not held back by Nagle.

With ``--workers N`` (N > 1) uvicorn binds the listening socket itself and leaves its
``proto`` at 0; accepted connections inherit it, and asyncio only sets ``TCP_NODELAY``
on a socket whose ``proto`` is ``IPPROTO_TCP``. Nagle's algorithm then holds each small
response until the client's delayed ACK: every keep-alive request after the first took
about 44 ms on Linux, whatever the app did (uvicorn issue #3149, measured with
``benchmarks.http_submit``). :class:`NoDelayConfig` hands uvicorn a listener that says it
is TCP, so every worker's connections get ``TCP_NODELAY``.
"""

from __future__ import annotations

import socket

import uvicorn
from uvicorn.supervisors import Multiprocess


class NoDelayConfig(uvicorn.Config):
    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.proto:
            return sock
        tcp = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
        tcp.set_inheritable(True)
        return tcp


def serve_app(factory: str, host: str, port: int, workers: int) -> None:
    """Serve the app that ``factory`` (``module:function``) builds, as ``uvicorn.run`` with
    ``factory=True`` does, on a listener with ``TCP_NODELAY`` for every connection."""
    config = NoDelayConfig(factory, factory=True, host=host, port=port, workers=workers)
    if workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        uvicorn.Server(config).run()  # asyncio binds it, with proto IPPROTO_TCP
