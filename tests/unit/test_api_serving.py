"""`canary api --workers N` keeps TCP_NODELAY on its connections (canary/cli/api_server.py).

uvicorn's own listener (``--workers`` > 1) leaves ``proto`` at 0, so asyncio does not set
TCP_NODELAY on accepted connections and each keep-alive answer waits ~40 ms for a delayed
ACK (with uvicorn 0.54's ``Config`` this test fails). The check is on the socket options
asyncio leaves on an accepted connection."""

from __future__ import annotations

import asyncio
import socket

from canary.cli.api_server import NoDelayConfig


async def _nodelay_of_accepted(listener: socket.socket) -> int:
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
    port = listener.getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(accepted, 10)
    finally:
        writer.close()
        server.close()


def test_connections_of_the_api_listener_get_tcp_nodelay() -> None:
    config = NoDelayConfig("gateway.http.app:create_app", factory=True, host="127.0.0.1", port=0)
    with config.bind_socket() as listener:  # what `canary api --workers N` serves on
        assert asyncio.run(_nodelay_of_accepted(listener)) == 1
