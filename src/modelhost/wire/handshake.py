"""Authentication of a worker connection over TCP, before any frame.

A Unix socket is reached only by processes on the same host and the worker checks its peer
(SO_PEERCRED); a TCP socket on a cluster's network is reached by anyone who can route to it.
So every TCP connection proves, both ways, that each side holds the replica's key, before
the framed protocol starts:

    worker  -> gateway   MAGIC | nonce_w                       (4 + 32 bytes)
    gateway -> worker    nonce_g | HMAC(key, "gateway" | nonce_w | nonce_g)
    worker  -> gateway   HMAC(key, "worker" | nonce_w | nonce_g)

Each side's nonce is fresh, so a recorded answer is worth nothing on another connection;
the role label keeps a side's proof from being reflected back as the other's. Digests are
compared in constant time. A failed handshake closes the connection; the reason is logged,
never the key. A gateway that sends anything before the worker's proof (a frame sent
"optimistically") is refused too.

The key of a replica is derived from the cluster secret and the replica's name
(`replica_key`): a worker holds only its own, so model code, which runs in the worker's
process, cannot use it to reach another model's worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelhost.errors import ModelhostError, WorkerUnavailable

log = logging.getLogger("modelhost.handshake")

MAGIC = b"MHW1"
NONCE_BYTES = 32
DIGEST_BYTES = 32
HANDSHAKE_TIMEOUT_S = 5.0
SECRET_FILE = "cluster.key"


class HandshakeRefused(WorkerUnavailable):
    """The peer did not prove it holds the key (or broke the handshake's rules)."""


@dataclass(frozen=True)
class TcpAddress:
    """Where a worker listens on TCP, and the key a connection to it must prove."""

    host: str
    port: int
    key: bytes = field(repr=False)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def replica_key(cluster_secret: bytes, replica: str) -> bytes:
    """The key of one replica (its actor or pod name), derived from the cluster secret."""
    return hmac.new(cluster_secret, b"modelhost-worker:" + replica.encode(), "sha256").digest()


def load_cluster_secret(configured: str, home: Path) -> bytes:
    """MODELHOST_CLUSTER_SECRET, else `<home>/cluster.key` (created once, mode 0600)."""
    if configured:
        return configured.encode()
    path = home / SECRET_FILE
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    secret = path.read_text().strip()
    if not secret:
        raise ModelhostError(
            f"{path} is empty; delete it (a new secret is generated) or set "
            "MODELHOST_CLUSTER_SECRET"
        )
    return secret.encode()


def _proof(key: bytes, role: bytes, nonce_w: bytes, nonce_g: bytes) -> bytes:
    return hmac.new(key, role + nonce_w + nonce_g, hashlib.sha256).digest()


async def _read(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise HandshakeRefused(
                "the peer closed the connection during the handshake (is its cluster secret, "
                "MODELHOST_CLUSTER_SECRET or <home>/cluster.key, the same as this side's?)"
            )
        data += chunk
    return bytes(data)


async def worker_side(loop: asyncio.AbstractEventLoop, sock: socket.socket, key: bytes) -> None:
    """The worker's half; returns once the gateway proved the key (HandshakeRefused if not)."""
    nonce_w = secrets.token_bytes(NONCE_BYTES)
    await loop.sock_sendall(sock, MAGIC + nonce_w)
    answer = await _read(loop, sock, NONCE_BYTES + DIGEST_BYTES)
    nonce_g, proof = answer[:NONCE_BYTES], answer[NONCE_BYTES:]
    if not hmac.compare_digest(proof, _proof(key, b"gateway", nonce_w, nonce_g)):
        raise HandshakeRefused("the peer's proof does not match: it has another secret")
    try:
        early = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        early = b""
    if early:
        raise HandshakeRefused("the peer sent data before the handshake finished")
    await loop.sock_sendall(sock, _proof(key, b"worker", nonce_w, nonce_g))


async def gateway_side(loop: asyncio.AbstractEventLoop, sock: socket.socket, key: bytes) -> None:
    """The gateway's half; returns once the worker proved the key (HandshakeRefused if not)."""
    hello = await _read(loop, sock, len(MAGIC) + NONCE_BYTES)
    if hello[: len(MAGIC)] != MAGIC:
        raise HandshakeRefused("the peer is not a modelhost worker (no handshake greeting)")
    nonce_w = hello[len(MAGIC) :]
    nonce_g = secrets.token_bytes(NONCE_BYTES)
    await loop.sock_sendall(sock, nonce_g + _proof(key, b"gateway", nonce_w, nonce_g))
    proof = await _read(loop, sock, DIGEST_BYTES)
    if not hmac.compare_digest(proof, _proof(key, b"worker", nonce_w, nonce_g)):
        raise HandshakeRefused("the worker's proof does not match: it has another secret")


async def connect(address: TcpAddress, factory: Callable[[], asyncio.Protocol]) -> asyncio.Protocol:
    """An authenticated connection to a worker, running `factory()`'s protocol. Raises
    ConnectionRefusedError (nothing listens yet), HandshakeRefused or TimeoutError."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    family, kind, proto, _, target = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, target)
        await asyncio.wait_for(gateway_side(loop, sock, address.key), HANDSHAKE_TIMEOUT_S)
        _, protocol = await loop.create_connection(factory, sock=sock)
    except BaseException:
        sock.close()
        raise
    return protocol


class AuthenticatedServer:
    """Accepts TCP connections on `sock`; each runs `factory()`'s protocol once the peer
    proved the key. `close()` stops accepting (like `asyncio.Server.close`)."""

    def __init__(
        self, sock: socket.socket, key: bytes, factory: Callable[[], asyncio.Protocol]
    ) -> None:
        self.sock = sock
        self.key = key
        self.factory = factory
        self.refused = 0
        self._admitting: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.sock.setblocking(False)
        self._task = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, peer = await loop.sock_accept(self.sock)
            task = loop.create_task(self._admit(conn, peer))
            self._admitting.add(task)
            task.add_done_callback(self._admitting.discard)

    async def _admit(self, conn: socket.socket, peer: object) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        try:
            await asyncio.wait_for(worker_side(loop, conn, self.key), HANDSHAKE_TIMEOUT_S)
            await loop.connect_accepted_socket(self.factory, conn)
        except (HandshakeRefused, TimeoutError, OSError) as exc:
            self.refused += 1
            timed_out = isinstance(exc, TimeoutError)
            reason = "no complete handshake in time" if timed_out else str(exc)
            log.warning("refused a worker connection from %s: %s", _peer(peer), reason)
            conn.close()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for task in self._admitting:
            task.cancel()
        self.sock.close()


def _peer(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
