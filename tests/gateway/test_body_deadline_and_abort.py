"""The gateway's HTTP protocol in-process over raw sockets: a stalled request body gets 408
(MODELHOST_BODY_TIMEOUT_S, counted between body bytes, so a slow but steady body is fine),
and the ABORT message ends a streamed response without its terminating chunk."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from modelhost.gateway.http_protocol import ABORT
from protocol_server import protocol_server

pytestmark = pytest.mark.anyio

BODY_TIMEOUT_S = 0.5
seen: list[str] = []  # what the app observed, per request


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/abort":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"piece", "more_body": True})
        await send(ABORT)
        await send({"type": "http.response.body", "body": b"dropped"})  # a no-op now
        seen.append("aborted")
        return
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            seen.append("disconnect")
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    seen.clear()
    async with protocol_server(
        app,
        max_header_bytes=4096,
        header_timeout_s=5,
        max_connections=0,
        body_timeout_s=BODY_TIMEOUT_S,
    ) as bound:
        yield bound


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _all(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes (a reset keeps what came before it)."""
    out = b""
    while True:
        try:
            data = await asyncio.wait_for(reader.read(65536), 10)
        except ConnectionError:
            return out
        if not data:
            return out
        out += data


def _post(length: int) -> bytes:
    return f"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: {length}\r\n\r\n".encode()


async def test_a_stalled_body_gets_408_and_the_app_sees_the_client_gone(port: int) -> None:
    reader, writer = await _open(port)
    writer.write(_post(100) + b"{}")  # 2 of the 100 bytes announced, then nothing
    answer = await _all(reader)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in answer and b"MODELHOST_BODY_TIMEOUT_S" in answer, answer
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.01)
    assert seen == ["disconnect"]
    writer.close()


async def test_a_slow_but_steady_body_is_read_whole(port: int) -> None:
    reader, writer = await _open(port)
    pieces = 6  # over three times the deadline in all, each gap well under it
    writer.write(_post(pieces))
    for _ in range(pieces):
        await asyncio.sleep(BODY_TIMEOUT_S / 2)
        writer.write(b"x")
        await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert await reader.readexactly(pieces) == b"x" * pieces
    writer.close()


async def test_a_request_without_a_body_is_not_timed(port: int) -> None:
    reader, writer = await _open(port)
    writer.write(_post(0))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    await asyncio.sleep(BODY_TIMEOUT_S * 3)  # idle on keep-alive: no 408 comes
    writer.write(_post(2) + b"ok")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert await reader.readexactly(2) == b"ok"
    writer.close()


async def test_abort_ends_the_stream_without_its_last_chunk(port: int) -> None:
    reader, writer = await _open(port)
    writer.write(b"GET /abort HTTP/1.1\r\nhost: t\r\n\r\n")
    answer = await _all(reader)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head
    assert body == b"5\r\npiece\r\n", body  # what was sent, and no "0\r\n\r\n"
    assert seen == ["aborted"]
    writer.close()


async def test_a_client_gone_before_or_while_its_body_is_read_is_not_an_empty_body() -> None:
    from modelhost.gateway import body as bodies

    gone = {"type": "http.disconnect"}
    with pytest.raises(bodies.ClientDisconnected):
        bodies.first_part(gone, 100, None)  # not b"": predict must not run on it

    async def receive() -> dict[str, Any]:
        return gone

    first = {"type": "http.request", "body": b"{", "more_body": True}
    assert bodies.first_part(first, 100, 100) is None
    with pytest.raises(bodies.ClientDisconnected):
        await bodies.read_rest(receive, first, 100)
