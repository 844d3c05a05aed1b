"""The gateway's HTTP protocol limits in-process, over raw sockets: the header size cap (and
that the parser is never fed past it), the header deadline (new, keep-alive and dripping
connections) and the connection limit."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelhost.gateway.http_protocol import HttpProtocol
from protocol_server import protocol_server

pytestmark = pytest.mark.anyio

CAP = 1024
HEADER_TIMEOUT_S = 0.5
MAX_CONNECTIONS = 2
KEEP_ALIVE_S = 5


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    body = body or b"ok"
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async with protocol_server(
        app,
        keep_alive_s=KEEP_ALIVE_S,
        max_header_bytes=CAP,
        header_timeout_s=HEADER_TIMEOUT_S,
        max_connections=MAX_CONNECTIONS,
    ) as bound:
        yield bound


class Conn:
    """A raw client connection. Reads keep what arrived before a reset: a server that
    closes with unread input resets the connection, and its answer is still readable."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.closed = False

    @classmethod
    async def open(cls, port: int) -> Conn:
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return cls(sock)

    async def send(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionError):
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def _recv(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), timeout)
        except ConnectionError:
            data = b""
        self.buffer += data
        self.closed = not data

    async def until_closed(self, timeout: float = 10) -> bytes:
        while not self.closed:
            await self._recv(timeout)
        return self.buffer

    async def response(self, timeout: float = 5) -> tuple[bytes, bytes]:
        while b"\r\n\r\n" not in self.buffer:
            assert not self.closed, self.buffer
            await self._recv(timeout)
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = dict(line.split(b": ", 1) for line in lines)
        size = int(headers.get(b"content-length", b"0"))
        while len(rest) < size:
            assert not self.closed, self.buffer
            await self._recv(timeout)
            rest = self.buffer.partition(b"\r\n\r\n")[2]
        self.buffer = rest[size:]
        return status, rest[:size]

    def close(self) -> None:
        self.sock.close()


def post(body: bytes, extra: bytes = b"") -> bytes:
    return b"POST / HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s" % (
        extra,
        len(body),
        body,
    )


async def test_head_up_to_the_cap_is_served_and_one_past_it_is_431(port: int) -> None:
    def head_of(size: int) -> bytes:
        start, end = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ", b"\r\n\r\n"
        return start + b"a" * (size - len(start) - len(end)) + end

    conn = await Conn.open(port)
    await conn.send(head_of(CAP))
    assert await conn.response() == (b"HTTP/1.1 200 OK", b"ok")
    await conn.send(head_of(CAP + 1))  # the same (keep-alive) connection: counted afresh
    data = await conn.until_closed()
    assert data.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"connection: close\r\n" in data
    assert b'"type": "header_too_large"' in data and b"MODELHOST_MAX_HEADER_BYTES" in data
    conn.close()


async def test_body_and_pipelined_requests_in_the_same_chunk_do_not_count(port: int) -> None:
    conn = await Conn.open(port)
    body = b"b" * (8 * CAP)  # head and a body 8x the cap, in one write
    await conn.send(post(body))
    assert await conn.response() == (b"HTTP/1.1 200 OK", body)
    # Three pipelined requests, their heads together over the cap, each well under it.
    pad = b"X-Pad: " + b"p" * (CAP // 2) + b"\r\n"
    await conn.send(post(b"one", pad) + post(b"two", pad) + post(b"three", pad))
    assert [(await conn.response())[1] for _ in range(3)] == [b"one", b"two", b"three"]
    conn.close()


async def test_an_endless_header_is_cut_at_the_cap_not_buffered(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed: list[int] = []
    real = HttpToolsProtocol.data_received

    def counting(self: HttpToolsProtocol, data: bytes) -> None:
        fed.append(len(data))
        real(self, data)

    monkeypatch.setattr(HttpToolsProtocol, "data_received", counting)
    conn = await Conn.open(port)
    await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"e" * (1 << 20))
    assert (await conn.until_closed()).startswith(b"HTTP/1.1 431 ")
    assert sum(fed) <= CAP  # the parser never saw more than the cap
    conn.close()


async def test_partial_head_gets_408_on_new_and_keep_alive_connections(port: int) -> None:
    conn = await Conn.open(port)
    await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    data = await conn.until_closed()
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b'"type": "header_timeout"' in data and b"MODELHOST_HEADER_TIMEOUT_S" in data
    conn.close()

    conn = await Conn.open(port)
    await conn.send(post(b"first"))
    assert (await conn.response())[1] == b"first"
    await asyncio.sleep(HEADER_TIMEOUT_S * 2)  # idle keep-alive: the header deadline waits
    await conn.send(post(b"second"))
    assert (await conn.response())[1] == b"second"
    await conn.send(b"POST / HTTP/1.1\r\nHost: x\r\n")  # then a head that never ends
    assert (await conn.until_closed()).startswith(b"HTTP/1.1 408 ")
    conn.close()


async def test_a_dripping_head_is_cut_at_the_deadline_not_kept_alive_by_its_bytes(
    port: int,
) -> None:
    conn = await Conn.open(port)
    await conn.send(b"GET / HTTP/1.1\r\n")
    for _ in range(200):  # a byte every 50 ms: never idle, never done
        await conn.send(b"X")
        with contextlib.suppress(TimeoutError):
            await conn._recv(0.05)
        if conn.closed:
            break
    assert (await conn.until_closed()).startswith(b"HTTP/1.1 408 ")
    conn.close()


async def test_a_silent_connection_is_closed_without_an_answer(port: int) -> None:
    conn = await Conn.open(port)
    assert await conn.until_closed() == b""
    conn.close()


async def test_connections_past_the_limit_get_503_and_open_ones_keep_working(port: int) -> None:
    held = [await Conn.open(port) for _ in range(MAX_CONNECTIONS)]
    for conn in held:  # the server has them (and answers on them)
        await conn.send(post(b"hi"))
        assert (await conn.response())[1] == b"hi"
    extra = await Conn.open(port)
    data = await extra.until_closed()
    assert data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b'"type": "too_many_connections"' in data and b"MODELHOST_MAX_CONNECTIONS" in data
    extra.close()
    for conn in held:  # refusing did not take a place
        await conn.send(post(b"still"))
        assert (await conn.response())[1] == b"still"
    held[0].close()
    for _ in range(100):  # its place is free once the server sees the close
        conn = await Conn.open(port)
        await conn.send(post(b"again"))
        try:
            if (await conn.response())[1] == b"again":
                break
        except AssertionError:  # closed with a 503: not seen yet
            pass
        finally:
            conn.close()
        await asyncio.sleep(0.05)
    else:
        pytest.fail("a freed place was not reused")
    for conn in held[1:]:
        conn.close()


async def test_a_malformed_request_is_still_answered_400(port: int) -> None:
    conn = await Conn.open(port)
    await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert (await conn.until_closed()).startswith(b"HTTP/1.1 400 ")
    conn.close()


def test_configured_keeps_the_class_defaults_apart() -> None:
    limited = HttpProtocol.configured(max_header_bytes=10, header_timeout_s=0, max_connections=-1)
    assert issubclass(limited, HttpProtocol)
    assert (limited.max_header_bytes, limited.max_connections) == (10, 0)
    assert limited.header_timeout_s == float("inf")  # 0 = no header deadline
    assert (HttpProtocol.max_header_bytes, HttpProtocol.header_timeout_s) == (64 * 1024, 10.0)
