"""A worker on TCP (how a Ray actor runs it): a real worker process, its listening socket
bound here and passed down; every connection must prove the replica's key first
(wire/handshake.py)."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from modelhost.errors import WorkerUnavailable
from modelhost.supervision.channel import Stream, WorkerChannel
from modelhost.wire import handshake
from modelhost.wire.handshake import MAGIC, NONCE_BYTES, TcpAddress, replica_key
from modelhost.wire.protocol import Kind, encode
from modelhost.wire.spec import WorkerSpec

ECHO = "async def predict(payload_dict: dict, **kwargs):\n    return {'echo': payload_dict}\n"


@dataclass
class TcpWorker:
    address: TcpAddress
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TcpWorker]:
    tmp = tmp_path_factory.mktemp("tcp-worker")
    folder = tmp / "v1"
    folder.mkdir()
    (folder / "model.py").write_text(ECHO)
    key = replica_key(b"cluster secret of this test", "mh-v1-r0")
    listener = socket.create_server(("127.0.0.1", 0))
    spec = WorkerSpec(
        socket_path="",
        version_dir=str(folder),
        store_url="",
        store_key="",
        model_id=1,
        name="echo",
        prefix="models",
        version=1,
        deployment="d",
        cache_dir=str(tmp / "cache"),
        pod_name="mh-v1-r0",
        sandbox="off",
        work_dir=str(tmp),
        listen_fd=listener.fileno(),
        key=key.hex(),
    )
    spec.dump(tmp / "spec.json")
    log = tmp / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "modelhost.worker", str(tmp / "spec.json")],
            pass_fds=[listener.fileno()],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    port = listener.getsockname()[1]
    listener.close()  # the worker holds its own copy
    try:
        yield TcpWorker(TcpAddress("127.0.0.1", port, key), proc, log)
    finally:
        proc.terminate()
        proc.wait(30)


async def _ready_channel(address: TcpAddress) -> tuple[WorkerChannel, list[dict[str, Any]]]:
    states: list[dict[str, Any]] = []
    channel = WorkerChannel(address, states.append)
    await channel.connect(timeout=60)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not any(s.get("state") == "ready" for s in states):
        assert loop.time() < deadline, f"worker not ready: {states}"
        await asyncio.sleep(0.05)
    return channel, states


def test_an_authenticated_channel_serves_requests(worker: TcpWorker) -> None:
    async def run() -> Any:
        channel, _ = await _ready_channel(worker.address)
        try:
            reply = await channel.request("POST", "", "", "application/json", b'{"a": 1}')
        finally:
            channel.close()
        assert not isinstance(reply, Stream)
        return orjson.loads(reply[1])

    assert asyncio.run(run()) == {"echo": {"a": 1}}


def test_a_wrong_secret_is_refused(worker: TcpWorker) -> None:
    wrong = TcpAddress("127.0.0.1", worker.address.port, replica_key(b"another", "mh-v1-r0"))

    async def run() -> None:
        channel = WorkerChannel(wrong, lambda _h: None)
        await channel.connect(timeout=10)

    with pytest.raises(WorkerUnavailable, match="closed the connection during the handshake"):
        asyncio.run(run())
    _refused_in_log(worker, "proof does not match")


def test_the_gateway_refuses_a_worker_without_the_secret() -> None:
    """The other way round: an impostor listening where a worker should be never gets a
    request (the gateway checks the worker's proof before any frame)."""
    key = replica_key(b"cluster", "mh-v1-r0")

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(MAGIC + secrets.token_bytes(NONCE_BYTES))
        await reader.readexactly(NONCE_BYTES + 32)
        writer.write(secrets.token_bytes(32))  # it cannot compute the proof
        await writer.drain()
        got.append(await reader.read(1))  # b"": the gateway closed without a frame

    got: list[bytes] = []

    async def run() -> None:
        server = await asyncio.start_server(impostor, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        channel = WorkerChannel(TcpAddress("127.0.0.1", port, key), lambda _h: None)
        try:
            with pytest.raises(WorkerUnavailable, match="worker's proof does not match"):
                await channel.connect(timeout=10)
            while not got:
                await asyncio.sleep(0.01)
        finally:
            server.close()

    asyncio.run(asyncio.wait_for(run(), 30))
    assert got == [b""]


def _raw(worker: TcpWorker) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", worker.address.port), timeout=10)
    hello = _read(sock, len(MAGIC) + NONCE_BYTES)
    assert hello.startswith(MAGIC)
    return sock


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _closed_without_answer(sock: socket.socket) -> bool:
    """The worker closed the connection and sent nothing (no proof, no frame)."""
    with sock:
        try:
            return sock.recv(4096) == b""
        except ConnectionResetError:  # closed with our bytes unread: a reset, not a FIN
            return True


def test_frames_before_the_handshake_are_refused(worker: TcpWorker) -> None:
    sock = _raw(worker)
    sock.sendall(encode(Kind.REQUEST, 1, {"m": "POST", "p": "", "q": "", "ct": ""}, b"{}") * 4)
    assert _closed_without_answer(sock)


def test_a_frame_sent_with_a_valid_answer_before_the_proof_is_refused(worker: TcpWorker) -> None:
    """Even with the key: nothing but the answer may come before the worker's proof."""
    sock = _raw(worker)
    sock.close()
    sock = socket.create_connection(("127.0.0.1", worker.address.port), timeout=10)
    hello = _read(sock, len(MAGIC) + NONCE_BYTES)
    nonce_w, nonce_g = hello[len(MAGIC) :], secrets.token_bytes(NONCE_BYTES)
    answer = nonce_g + handshake._proof(worker.address.key, b"gateway", nonce_w, nonce_g)
    sock.sendall(answer + encode(Kind.REQUEST, 1, {"m": "POST", "p": "", "q": "", "ct": ""}))
    assert _closed_without_answer(sock)
    _refused_in_log(worker, "sent data before the handshake finished")


def test_a_replayed_handshake_is_refused(worker: TcpWorker) -> None:
    """A gateway's answer recorded on one connection does not open another."""
    first = socket.create_connection(("127.0.0.1", worker.address.port), timeout=10)
    hello = _read(first, len(MAGIC) + NONCE_BYTES)
    nonce_w, nonce_g = hello[len(MAGIC) :], secrets.token_bytes(NONCE_BYTES)
    recorded = nonce_g + handshake._proof(worker.address.key, b"gateway", nonce_w, nonce_g)
    first.sendall(recorded)
    proof = _read(first, 32)
    assert proof == handshake._proof(worker.address.key, b"worker", nonce_w, nonce_g)
    first.close()

    replay = _raw(worker)
    replay.sendall(recorded)
    assert _closed_without_answer(replay)


def test_the_log_never_holds_the_key(worker: TcpWorker) -> None:
    text = worker.log.read_text(errors="replace")
    assert "refused a worker connection from 127.0.0.1" in text
    assert worker.address.key.hex() not in text
    assert worker.proc.poll() is None, "a refused connection must not stop the worker"


def _refused_in_log(worker: TcpWorker, reason: str) -> None:
    import time

    deadline = time.monotonic() + 10
    while reason not in worker.log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"the worker did not log {reason!r}"
        time.sleep(0.05)


def test_the_cluster_secret_file_is_private_and_stable(tmp_path: Path) -> None:
    first = handshake.load_cluster_secret("", tmp_path)
    assert os.stat(tmp_path / "cluster.key").st_mode & 0o777 == 0o600
    assert handshake.load_cluster_secret("", tmp_path) == first
    assert handshake.load_cluster_secret("from-env", tmp_path) == b"from-env"
    assert replica_key(first, "mh-v1-r0") != replica_key(first, "mh-v1-r1")
