"""The gateway's HTTP protocol (uvicorn's, cheaper per response) on a real port, spoken to
over raw sockets so every byte on the wire is checked: joined writes, streamed chunks,
pipelining, HEAD, header validation and the keep-alive timeout."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from modelhost.gateway.http_protocol import (
    MAX_HELD,
    CoalescingTransport,
    HttpProtocol,
    chunk_writer,
)

pytestmark = pytest.mark.anyio

KEEP_ALIVE_S = 1


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class App:
    """Answers by path: /json, /stream (waits for `release` between chunks), /big, /direct
    (written with `chunk_writer`), /bad-header, /empty (204)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.direct = 0  # /direct: pieces write_chunk took
        self.refused_after_end: bool | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        message = await receive()
        path = scope["path"]
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await self.release.wait()
            await send({"type": "http.response.body", "body": b"second", "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/big":  # 4 MiB in 1 KiB pieces, sent without yielding in between
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for n in range(4096):
                piece = (b"%04d" % (n % 10000)) * 256
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/direct":  # 4 MiB through write_chunk; `send` only where it says no
            await send({"type": "http.response.start", "status": 200, "headers": []})
            write = chunk_writer(send)
            assert write is not None
            for n in range(4096):
                piece = (b"%04d" % (n % 10000)) * 256
                if write(piece):
                    self.direct += 1
                else:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            self.refused_after_end = write(b"late")
        elif path == "/bad-header":
            headers = [(b"x-evil", b"a\r\nset-cookie: injected")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"never"})
        elif path == "/empty":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        else:
            body = b'{"echo": "' + message["body"] + b'"}'
            headers = [
                (b"Content-Type", b"application/json"),
                (b"x-prt-model-name", b"echo"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, App]]:
    app = App()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        http=HttpProtocol,
        ws="none",
        lifespan="off",
        log_level="critical",
        timeout_keep_alive=KEEP_ALIVE_S,
        date_header=False,
        access_log=False,  # as the gateway runs it: the fast path serves the response head
    )
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    while not srv.started:
        await asyncio.sleep(0.01)
    try:
        yield port, app
    finally:
        app.release.set()
        srv.should_exit = True
        await task


def post(path: str, body: bytes) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status, *lines = head[:-4].split(b"\r\n")
    headers = dict(line.split(b": ", 1) for line in lines)
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers, body


BIG_BODY = b"".join((b"%04d" % n) * 256 for n in range(4096))  # /big and /direct


async def slowly_read_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> bytes:
    """GET `path`, wait until the server meets a full socket buffer (flow control pauses
    it), then read the chunked body."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    await asyncio.sleep(0.5)
    pieces = []
    while True:
        size = int(await asyncio.wait_for(reader.readuntil(b"\r\n"), 10), 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            return b"".join(pieces)
        pieces.append(data[:-2])


async def test_json_answer_in_one_piece_and_keep_alive(server: tuple[int, App]) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for n in range(3):  # the same connection answers request after request
        writer.write(post("/json", f"r{n}".encode()))
        status, headers, body = await read_response(reader)
        assert status == b"HTTP/1.1 200 OK"
        assert body == f'{{"echo": "r{n}"}}'.encode()
        assert headers[b"content-type"] == b"application/json"  # names lower-cased
        assert headers[b"x-prt-model-name"] == b"echo"
        assert b"transfer-encoding" not in headers
    writer.close()


async def test_pipelined_requests_are_answered_in_order(server: tuple[int, App]) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post("/json", b"a") + post("/json", b"b") + post("/json", b"c"))
    bodies = [(await read_response(reader))[2] for _ in range(3)]
    assert bodies == [b'{"echo": "a"}', b'{"echo": "b"}', b'{"echo": "c"}']
    writer.close()


async def test_streamed_chunks_leave_before_the_response_ends(server: tuple[int, App]) -> None:
    port, app = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b"transfer-encoding: chunked" in head
    # The app is blocked on `release`: the first chunk must be on the wire already.
    assert await asyncio.wait_for(reader.readuntil(b"first\r\n"), 5) == b"5\r\nfirst\r\n"
    app.release.set()
    rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
    assert rest == b"6\r\nsecond\r\n0\r\n\r\n"
    writer.close()


async def test_large_streamed_body_arrives_whole_through_a_slow_reader(
    server: tuple[int, App],
) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
    body = await slowly_read_body(reader, writer, "/big")
    assert len(body) == 4096 * 1024
    assert body == BIG_BODY
    writer.close()


async def test_chunks_written_directly_keep_their_order_and_flow_control(
    server: tuple[int, App],
) -> None:
    port, app = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
    # a full socket buffer meanwhile: write_chunk must say no, and `send` waits
    assert await slowly_read_body(reader, writer, "/direct") == BIG_BODY
    # Most pieces went directly, and the paused transport refused some (they were sent).
    assert 0 < app.direct < 4096
    assert app.refused_after_end is False  # nothing is written after the response ended
    writer.write(post("/json", b"after"))  # the connection is still in step
    assert (await read_response(reader))[2] == b'{"echo": "after"}'
    writer.close()


def test_chunk_writer_is_none_for_a_send_of_another_server() -> None:
    async def send(message: Any) -> None:
        return None

    assert chunk_writer(send) is None


async def test_head_and_no_content_have_no_chunked_body(server: tuple[int, App]) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert status == b"HTTP/1.1 204 No Content" and b"transfer-encoding" not in headers
    assert body == b""
    writer.write(b"HEAD /json HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head
    writer.write(post("/json", b"after-head"))  # no stray body bytes came after the head
    assert (await read_response(reader))[2] == b'{"echo": "after-head"}'
    writer.close()


async def test_header_injection_is_refused_and_nothing_is_sent(server: tuple[int, App]) -> None:
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /bad-header HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)  # the connection is closed
    assert b"injected" not in data and b"never" not in data
    writer.close()
    # The server keeps serving other connections.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post("/json", b"ok"))
    assert (await read_response(reader))[2] == b'{"echo": "ok"}'
    writer.close()


async def test_idle_connection_closes_after_keep_alive_busy_one_stays(
    server: tuple[int, App],
) -> None:
    port, _ = server
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    idle_writer.write(post("/json", b"once"))
    await read_response(idle_reader)
    busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
    # Requests every 0.4 s for 2.4 s: never idle for the 1 s timeout, so never closed.
    for _ in range(6):
        busy_writer.write(post("/json", b"busy"))
        assert (await read_response(busy_reader))[2] == b'{"echo": "busy"}'
        await asyncio.sleep(0.4)
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # closed by the server
    busy_writer.write(post("/json", b"still"))
    assert (await read_response(busy_reader))[2] == b'{"echo": "still"}'
    for writer in (idle_writer, busy_writer):
        with contextlib.suppress(Exception):
            writer.close()


async def test_held_bytes_are_bounded_so_flow_control_sees_large_responses() -> None:
    loop = asyncio.get_running_loop()
    left, right = socket.socketpair()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=left)
    written: list[int] = []
    real_write = transport.write
    transport.write = lambda data: (written.append(len(data)), real_write(data))[1]  # type: ignore[method-assign]
    wrapped = CoalescingTransport(transport, loop)  # type: ignore[arg-type]
    for _ in range(200):  # 200 KiB within one loop iteration
        wrapped.write(b"x" * 1024)
    # Passed on in MAX_HELD pieces as produced, not held until the iteration ends.
    assert written == [MAX_HELD] * (200 * 1024 // MAX_HELD)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sum(written) == 200 * 1024  # the rest at the end of the iteration
    wrapped.close()
    right.close()
