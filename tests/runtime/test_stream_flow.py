"""A stream between the gateway's `WorkerChannel` and a worker's end of a real Unix socket:
an ERROR frame after STREAM_START fails the stream (the gateway then aborts the response),
CREDIT frames report what was passed on, and a worker's window waits for them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from modelhost.errors import PredictFailed, WorkerUnavailable
from modelhost.supervision.channel import Head, Stream, WorkerChannel
from modelhost.wire.protocol import CREDIT_EVERY, STREAM_WINDOW, FrameProtocol, Kind, encode
from modelhost.worker.server import _Window

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeWorker:
    """The worker's end: answers every REQUEST with `script`, records what it receives."""

    def __init__(self, script: list[bytes]) -> None:
        self.script = script
        self.received: list[tuple[Kind, int, Any]] = []
        self.proto: FrameProtocol | None = None

    def factory(self) -> FrameProtocol:
        self.proto = FrameProtocol(self.on_frame, lambda exc: None)
        return self.proto

    def on_frame(self, kind: Kind, rid: int, header: Any, body: bytes) -> None:
        self.received.append((kind, rid, header))
        if kind is Kind.REQUEST and self.proto is not None:
            for frame in self.script:
                self.proto.send(frame.replace(b"\x00\x00\x00\x00", rid.to_bytes(4, "big"), 1))


def _frame(kind: Kind, header: Any = None, body: bytes = b"") -> bytes:
    # request id 0 is replaced by the real one (the 4 bytes after length and kind)
    raw = encode(kind, 0, header, body)
    return raw[:5] + b"\x00\x00\x00\x00" + raw[9:]


async def _channel(tmp_path: Path, worker: FakeWorker) -> tuple[WorkerChannel, asyncio.Server]:
    path = str(tmp_path / "w.sock")
    server = await asyncio.get_running_loop().create_unix_server(worker.factory, path)
    channel = WorkerChannel(path, lambda header: None)
    await channel.connect(timeout=5)
    return channel, server


async def test_an_error_frame_after_stream_start_fails_the_stream(tmp_path: Path) -> None:
    head = {"s": 200, "ct": "text/plain"}
    error = PredictFailed("boom").to_wire()
    worker = FakeWorker(
        [
            _frame(Kind.STREAM_START, head),
            _frame(Kind.CHUNK, None, b"one"),
            _frame(Kind.ERROR, error),
        ]
    )
    channel, server = await _channel(tmp_path, worker)
    stream = await channel.request("POST", "", "", "", b"{}")
    assert isinstance(stream, Stream)
    got = []
    with pytest.raises(PredictFailed, match="boom"):
        async for chunk in stream:
            got.append(chunk)
    assert got == [b"one"] and stream.done and channel.inflight == 0
    channel.close()
    server.close()


async def test_a_lost_worker_fails_its_stream(tmp_path: Path) -> None:
    worker = FakeWorker([_frame(Kind.STREAM_START, {"s": 200, "ct": "text/plain"})])
    channel, server = await _channel(tmp_path, worker)
    stream = await channel.request("POST", "", "", "", b"{}")
    assert isinstance(stream, Stream) and worker.proto is not None
    assert worker.proto.transport is not None
    worker.proto.transport.close()
    with pytest.raises(WorkerUnavailable):
        async for _ in stream:
            pass
    server.close()


async def test_credit_frames_report_what_was_passed_on(tmp_path: Path) -> None:
    piece = b"x" * (CREDIT_EVERY // 2)
    chunks = [_frame(Kind.CHUNK, None, piece) for _ in range(5)]
    worker = FakeWorker([_frame(Kind.STREAM_START, {"s": 200, "ct": "x"}), *chunks])
    channel, server = await _channel(tmp_path, worker)
    stream = await channel.request("POST", "", "", "", b"{}")
    assert isinstance(stream, Stream)
    got = 0
    async for _chunk in stream:
        got += 1
        if got == 5:  # the 5th is being passed on: the first four are counted
            break
    stream.close()
    await asyncio.sleep(0.05)  # the frames reach the worker
    credits = [int(h) for kind, _, h in worker.received if kind is Kind.CREDIT]
    assert credits == [CREDIT_EVERY, 2 * CREDIT_EVERY], credits
    assert worker.received[-1][0] is Kind.CANCEL
    channel.close()
    server.close()


async def test_forwarded_headers_travel_in_the_request_header(tmp_path: Path) -> None:
    worker = FakeWorker([_frame(Kind.RESPONSE, {"s": 200, "ct": "x"}, b"ok")])
    channel, server = await _channel(tmp_path, worker)
    await channel.request("POST", "a", "q=1", "application/json", b"{}", b'{"accept":"text/csv"}')
    await channel.request("POST", "a", "q=1", "application/json", b"{}")
    requests = [h for kind, _, h in worker.received if kind is Kind.REQUEST]
    assert requests[0] == {
        "m": "POST",
        "p": "a",
        "q": "q=1",
        "ct": "application/json",
        "h": {"accept": "text/csv"},
    }
    assert "h" not in requests[1]  # the cached head was not changed
    channel.close()
    server.close()


async def test_a_window_waits_for_credit() -> None:
    window = _Window()
    window.sent = STREAM_WINDOW + 10
    waiting = asyncio.ensure_future(window.wait())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    window.grant(5)  # still more than a window outstanding
    await asyncio.sleep(0.01)
    assert not waiting.done()
    window.grant(10)
    await asyncio.wait_for(waiting, 1)


class _Channel:
    """What a `Stream` calls on its channel."""

    def __init__(self) -> None:
        self.credits: list[int] = []
        self.cancelled: list[int] = []

    def credit(self, rid: int, passed: int) -> None:
        self.credits.append(passed)

    def cancel(self, rid: int) -> None:
        self.cancelled.append(rid)


async def _until_waiting(stream: Stream) -> None:
    while stream._waiter is None:
        await asyncio.sleep(0)


async def test_an_attached_sink_takes_chunks_only_when_that_keeps_their_order() -> None:
    channel = _Channel()
    stream = Stream(Head(200, "text/plain", None), channel, 7)  # type: ignore[arg-type]
    wire: list[bytes] = []  # what reached the client, in order
    accept = True

    def sink(chunk: bytes) -> bool:
        if accept:
            wire.append(chunk)
        return accept

    stream._put(b"a")  # before the head was sent: queued
    stream.attach(sink)
    stream._put(b"b")  # "a" is still queued: "b" waits behind it
    chunks = aiter(stream)

    def nxt() -> Any:  # the next queued chunk; one wrongly sent directly never comes
        return asyncio.wait_for(anext(chunks), 5)

    for expected in (b"a", b"b"):
        chunk = await nxt()
        assert chunk == expected
        stream._put(b"c" if expected == b"a" else b"d")  # the consumer holds one: queued
        wire.append(chunk)  # the consumer sends it
    assert await nxt() == b"c"
    wire.append(b"c")
    assert await nxt() == b"d"
    wire.append(b"d")
    waiting = asyncio.ensure_future(nxt())
    await _until_waiting(stream)  # the consumer waits on an empty queue
    stream._put(b"e")  # straight to the client
    assert wire[-1] == b"e" and not waiting.done()
    accept = False
    stream._put(b"f")  # refused (a slow client): queued, and the consumer wakes
    accept = True
    assert await waiting == b"f"
    stream._put(b"g")  # the consumer holds "f": queued even though the sink would take it
    wire.append(b"f")
    assert await nxt() == b"g"
    wire.append(b"g")
    waiting = asyncio.ensure_future(nxt())
    await _until_waiting(stream)
    stream._put(b"h")
    stream.close()  # the end is queued: iteration stops
    with pytest.raises(StopAsyncIteration):
        await waiting
    assert b"".join(wire) == b"abcdefgh"
    assert stream.passed == 8 and channel.cancelled == [7]


async def test_chunks_passed_through_a_sink_are_credited() -> None:
    channel = _Channel()
    stream = Stream(Head(200, "x", None), channel, 1)  # type: ignore[arg-type]
    stream.attach(lambda chunk: True)
    piece = b"x" * (CREDIT_EVERY // 2)
    for _ in range(5):
        stream._put(piece)
    assert channel.credits == [CREDIT_EVERY, 2 * CREDIT_EVERY]
