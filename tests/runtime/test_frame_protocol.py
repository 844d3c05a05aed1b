"""The gateway <-> worker framing over a real Unix socket pair: order, contents, batching."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from modelhost.wire.protocol import MAX_BATCH, FrameProtocol, Kind, encode

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def connected_pair() -> tuple[FrameProtocol, list[tuple[Kind, int, Any, bytes]], list[int]]:
    """A sending protocol whose writes are counted, and the frames its peer received."""
    loop = asyncio.get_running_loop()
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    received: list[tuple[Kind, int, Any, bytes]] = []
    writes: list[int] = []

    def on_frame(kind: Kind, rid: int, header: Any, body: bytes) -> None:
        received.append((kind, rid, header, body))

    _, sender = await loop.create_unix_connection(
        lambda: FrameProtocol(lambda *a: None, lambda exc: None), sock=left
    )
    await loop.create_unix_connection(lambda: FrameProtocol(on_frame, lambda exc: None), sock=right)
    assert sender.transport is not None
    real_write = sender.transport.write

    def counting_write(data: Any) -> None:
        writes.append(len(data))
        real_write(data)

    sender.transport.write = counting_write  # type: ignore[method-assign]
    return sender, received, writes


async def test_frames_arrive_in_order_intact_and_in_bounded_batches() -> None:
    sender, received, writes = await connected_pair()
    count = 2 * MAX_BATCH + 3
    for rid in range(1, count + 1):  # all queued within one loop iteration
        sender.send(encode(Kind.RESPONSE, rid, {"s": 200, "ct": "x"}, b"body-%d" % rid))
    for _ in range(100):
        if len(received) == count:
            break
        await asyncio.sleep(0.01)
    assert [r[1] for r in received] == list(range(1, count + 1))
    assert all(r[0] is Kind.RESPONSE and r[2] == {"s": 200, "ct": "x"} for r in received)
    assert [r[3] for r in received] == [b"body-%d" % rid for rid in range(1, count + 1)]
    # One write per MAX_BATCH frames, the rest at the end of the iteration: 8 + 8 + 3.
    assert len(writes) == 3


async def test_a_lone_frame_goes_out_at_the_end_of_the_iteration() -> None:
    sender, received, writes = await connected_pair()
    sender.send(encode(Kind.CHUNK, 7, None, b"piece"))
    assert writes == []  # queued, not yet written
    for _ in range(100):
        if received:
            break
        await asyncio.sleep(0.01)
    assert received == [(Kind.CHUNK, 7, None, b"piece")] and len(writes) == 1
