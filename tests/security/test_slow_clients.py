"""Slow and abusive clients against a real `modelhost serve`, over raw sockets: an oversized
head is answered 431 without the server buffering it, partial or missing heads are cut at
MODELHOST_HEADER_TIMEOUT_S, and connections past MODELHOST_MAX_CONNECTIONS are answered 503
while the open ones keep working."""

from __future__ import annotations

import contextlib
import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.harness import Server, free_port

DEADLINE_S = 15  # generous: the server's own bounds are 1 s here
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"MODELHOST_HEADER_TIMEOUT_S": "1"}
    srv = Server(tmp_path_factory.mktemp("mh-slow"), free_port(), extra_env=env).start()
    yield srv
    srv.stop()


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S)


def send(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server answered and closed before reading all
        sock.sendall(data)


def read_until_closed(sock: socket.socket, timeout: float = DEADLINE_S) -> bytes:
    """Everything the server sends until it closes; fails if it does not close in time.
    (What arrived before a reset is kept: the kernel still delivers it.)"""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"connection still open after {timeout} s; got {data[:200]!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return data
        if not chunk:
            return data
        data += chunk


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response with a content-length body (the connection stays open)."""
    sock.settimeout(DEADLINE_S)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    size = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < size:
        chunk = sock.recv(65536)
        assert chunk, data
        body += chunk
    return head.split(b"\r\n", 1)[0], body


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def test_a_1_mib_header_is_answered_431_without_being_buffered(server: Server) -> None:
    assert server.proc is not None
    with connect(server) as warm:  # first use of the code paths, before measuring
        send(warm, HEALTHZ)
        assert read_response(warm)[0] == b"HTTP/1.1 200 OK"
    before = rss_kib(server.proc.pid)
    for _ in range(4):
        with connect(server) as sock:
            send(
                sock,
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n",
            )
            data = read_until_closed(sock)
        assert data.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), data[:200]
        assert b'"header_too_large"' in data and b"MODELHOST_MAX_HEADER_BYTES" in data
    grown = rss_kib(server.proc.pid) - before
    assert grown < 4 * 1024, f"server RSS grew by {grown} KiB"
    with connect(server) as sock:  # and it keeps serving
        send(sock, HEALTHZ)
        assert read_response(sock)[0] == b"HTTP/1.1 200 OK"


def test_a_partial_head_then_silence_gets_408(server: Server) -> None:
    with connect(server) as sock:
        send(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data[:200]
    assert b'"header_timeout"' in data and b"MODELHOST_HEADER_TIMEOUT_S" in data


def test_a_partial_next_head_on_a_keep_alive_connection_gets_408(server: Server) -> None:
    with connect(server) as sock:
        send(sock, HEALTHZ)
        assert read_response(sock)[0] == b"HTTP/1.1 200 OK"
        send(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_a_head_dripped_byte_by_byte_is_cut_at_the_deadline(server: Server) -> None:
    with connect(server) as sock:
        send(sock, b"GET /healthz HTTP/1.1\r\n")
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            send(sock, b"X")  # never idle, never done
            if select.select([sock], [], [], 0.1)[0]:  # answered (or closed)
                break
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_a_silent_connection_is_closed(server: Server) -> None:
    with connect(server) as sock:
        assert read_until_closed(sock) == b""


def test_connections_past_the_limit_get_503_and_earlier_ones_keep_working(
    tmp_path: Path,
) -> None:
    env = {"MODELHOST_MAX_CONNECTIONS": "4", "MODELHOST_HEADER_TIMEOUT_S": "60"}
    server = Server(tmp_path / "home", free_port(), extra_env=env).start()
    socks: list[socket.socket] = []
    try:
        time.sleep(1)  # the start-up probe's connections are closed on the server side too
        socks = [connect(server) for _ in range(8)]
        for extra in socks[4:]:
            data = read_until_closed(extra)
            assert data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), data[:200]
            assert b'"too_many_connections"' in data and b"MODELHOST_MAX_CONNECTIONS" in data
        for sock in socks[:4]:  # opened earlier: still served, request after request
            for _ in range(2):
                send(sock, HEALTHZ)
                assert read_response(sock)[0] == b"HTTP/1.1 200 OK"
        with connect(server) as late:  # all four places are still taken
            assert read_until_closed(late).startswith(b"HTTP/1.1 503 ")
        for sock in socks:
            sock.close()
        deadline = time.monotonic() + DEADLINE_S
        while True:  # the places are free once the server has seen the closes
            with connect(server) as sock:
                send(sock, HEALTHZ)
                try:
                    if read_response(sock)[0] == b"HTTP/1.1 200 OK":
                        break
                except (AssertionError, OSError):
                    pass
            assert time.monotonic() < deadline, "new connections still refused"
            time.sleep(0.1)
    finally:
        for sock in socks:
            sock.close()
        server.stop()
