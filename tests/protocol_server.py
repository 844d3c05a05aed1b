"""A uvicorn server with modelhost's HTTP protocol on a free loopback port, for tests that
talk raw HTTP to it (header/body deadlines, limits, aborted responses)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from modelhost.gateway.http_protocol import HttpProtocol


@asynccontextmanager
async def protocol_server(app: Any, *, keep_alive_s: int = 5, **limits: Any) -> AsyncIterator[int]:
    """Serve `app` with `HttpProtocol.configured(**limits)`; yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        http=HttpProtocol.configured(**limits),
        ws="none",
        lifespan="off",
        log_level="critical",
        timeout_keep_alive=keep_alive_s,
        date_header=False,
        access_log=False,
    )
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    while not srv.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        srv.should_exit = True
        await task
