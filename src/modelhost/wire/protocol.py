"""The framed protocol between the gateway and a worker process.

One persistent Unix-socket connection carries many requests at once; each frame names its
request id, so responses are matched to waiting futures in any order. A frame is::

    u32 length | u8 kind | u32 request id | u32 header length | header JSON | body bytes

The header is small JSON (orjson); the body is raw bytes (a request's JSON, a response, a
stream chunk). Errors travel as ``ERROR`` frames whose header is ``{"type", "message"}``
(see `modelhost.errors.from_wire`), never as pickled exceptions.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import orjson

_PREFIX = struct.Struct("!IBII")  # length, kind, request id, header length
PREFIX_SIZE = _PREFIX.size
MAX_FRAME = 1 << 31
# Frames queued in one loop iteration are written together, but at most this many: the
# peer starts on the first ones while this side is still producing (measured with the echo
# benchmark: an unbounded batch made both processes work in lock-step, ~15% fewer req/s).
MAX_BATCH = 8


class Kind(IntEnum):
    REQUEST = 1  # gateway -> worker: header {m, p, q, ct, h}, body = request body
    RESPONSE = 2  # worker -> gateway: header {s, ct, h}, body = whole response
    STREAM_START = 3  # worker -> gateway: header {s, ct, h}; CHUNK frames follow
    CHUNK = 4  # worker -> gateway: body = next piece of a streamed response
    STREAM_END = 5  # worker -> gateway: end of stream; header may carry an error
    ERROR = 6  # worker -> gateway: header {type, message}
    CANCEL = 7  # gateway -> worker: the client went away
    STATE = 8  # worker -> gateway: header {state, reason, hooks, pod}
    CREDIT = 9  # gateway -> worker: header = bytes of a stream passed on to its client so far


# Flow control of a stream (credit-based): a worker sends at most this many bytes of one
# stream (plus the chunk that crosses it) beyond what the gateway reported passed on to its
# client, so a slow client holds at most about this much in the gateway, and the model's
# generator waits. The gateway reports after every `CREDIT_EVERY` bytes it passes on: a fast
# stream flows without a pause, and a token stream under the window sends no CREDIT at all.
STREAM_WINDOW = 1 << 20
CREDIT_EVERY = STREAM_WINDOW // 4


def encode(kind: Kind, rid: int, header: Any = None, body: bytes = b"") -> bytes:
    return encode_raw(kind, rid, orjson.dumps(header) if header is not None else b"", body)


def encode_raw(kind: Kind, rid: int, head: bytes, body: bytes = b"") -> bytes:
    """A frame whose header is already JSON-encoded (the gateway reuses common ones)."""
    return _PREFIX.pack(PREFIX_SIZE - 4 + len(head) + len(body), kind, rid, len(head)) + head + body


FrameHandler = Callable[[Kind, int, Any, bytes], None]


class FrameProtocol(asyncio.Protocol):
    """Splits a byte stream into frames and hands each to `on_frame`.

    An ``asyncio.Protocol`` rather than streams: on the hot path this saves a task switch
    and a buffer copy per frame.
    """

    def __init__(self, on_frame: FrameHandler, on_lost: Callable[[Exception | None], None]):
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._buf = bytearray()
        self._out: list[bytes] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        offset = 0
        end = len(buf)
        while end - offset >= PREFIX_SIZE:
            length, kind, rid, hlen = _PREFIX.unpack_from(buf, offset)
            total = length + 4
            if end - offset < total:
                break
            start = offset + PREFIX_SIZE
            header = orjson.loads(buf[start : start + hlen]) if hlen else None
            body = bytes(buf[start + hlen : offset + total])
            offset += total
            self._on_frame(Kind(kind), rid, header, body)
        if offset:
            del buf[:offset]

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)

    def send(self, frame: bytes) -> None:
        """Queue a frame; all frames queued in one loop iteration go out in one write.

        Under load one iteration handles many requests, so this turns a syscall per frame
        into one per `MAX_BATCH` frames on both ends, at the cost of at most one iteration
        of latency. Frames go out in the order queued.
        """
        out = self._out
        if out is None:
            self._out = [frame]
            asyncio.get_running_loop().call_soon(self._flush)
        else:
            out.append(frame)
            if len(out) >= MAX_BATCH:
                self._write_out()

    def _write_out(self) -> None:
        """Write the batch now; frames queued later in this iteration start a new one
        (the flush already scheduled sends it)."""
        out, self._out = self._out, []
        self._write(out)

    def _flush(self) -> None:
        out, self._out = self._out, None
        self._write(out)

    def _write(self, out: list[bytes] | None) -> None:
        transport = self.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))
