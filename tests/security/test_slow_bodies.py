"""Slow request bodies against a real `modelhost serve`, over raw sockets (issue 10, item 9):
a body that announces 100 bytes, sends 2 and stalls gets 408 after MODELHOST_BODY_TIMEOUT_S,
on a model URL and on the console alike, and the server goes on answering."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e.harness import Server, bearer, free_port, model_dir

DEADLINE_S = 20  # generous: the server's own bound is 1 s here


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"MODELHOST_BODY_TIMEOUT_S": "1"}
    srv = Server(tmp_path_factory.mktemp("mh-slow-body"), free_port(), extra_env=env).start()
    yield srv
    srv.stop()


def _stalled(server: Server, path: str, headers: str = "") -> bytes:
    """POST announcing a 100-byte body, 2 bytes of it, then silence; all the server says
    until it closes (what came before a reset is kept)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{headers}"
        "content-length: 100\r\n\r\n{}".encode()
    )
    deadline = time.monotonic() + DEADLINE_S
    data = b""
    with sock:
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        else:
            pytest.fail(f"connection still open after {DEADLINE_S} s; got {data[:200]!r}")
    return data


def _assert_408(answer: bytes) -> None:
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"body_timeout" in answer and b"MODELHOST_BODY_TIMEOUT_S" in answer, answer


def test_a_stalled_body_on_the_console_gets_408(server: Server) -> None:
    _assert_408(_stalled(server, "/console/api/auth/"))
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_a_stalled_body_on_a_model_gets_408(server: Server, tmp_path: Path) -> None:
    result = server.deploy(model_dir(tmp_path, "echo", "echo.py"), "slow", "echo")
    assert result["state"] == "ready", result
    url = result["api_url"]
    token = server.session_token(url)
    path = url.split(str(server.port), 1)[1]
    _assert_408(_stalled(server, path, f"authorization: Bearer {token}\r\n"))
    r = httpx.post(url, json={"still": "serving"}, headers=bearer(token))
    assert r.status_code == 200 and r.json() == {"still": "serving"}, r.text


def test_a_body_sent_at_once_is_not_affected(server: Server) -> None:
    r = httpx.post(server.url + "/console/api/auth/", json={"email": "x@y", "password": "z"})
    assert r.status_code == 401, r.text
