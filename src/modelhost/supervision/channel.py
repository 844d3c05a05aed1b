"""The gateway's end of one worker's socket: send requests, match replies to futures.

One persistent connection per worker replica carries every request to it; `request()`
returns the worker's whole reply, or a `Stream` whose chunks arrive as the worker sends them.

The worker enforces the predict deadline (MODELHOST_PREDICT_TIMEOUT_S, which its STATE frames
report); this side keeps a backstop a margin later, so that a worker that cannot answer at
all (an event loop blocked by model code) never leaves a request waiting forever: past it
the future fails with `PredictTimeout` (504) and the worker is told to cancel.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from modelhost.errors import ModelhostError, PredictTimeout, WorkerUnavailable, from_wire
from modelhost.wire import handshake
from modelhost.wire.handshake import TcpAddress
from modelhost.wire.protocol import CREDIT_EVERY, FrameProtocol, Kind, encode, encode_raw


@dataclass(slots=True)
class Head:
    status: int
    content_type: str
    headers: dict[str, str] | None


# Writes one chunk to the client at once and says True, or says False when it cannot now
# (the client's connection is flow-controlled or gone): then the chunk is queued instead.
Sink = Callable[[bytes], bool]


class Stream:
    """Chunks of a streamed reply; iterate it, or `close()` it to cancel the request.

    Two ways out. Iterating yields the chunks queued here. Once the consumer has sent the
    response head it may `attach` a sink: from then on a chunk that arrives while nothing is
    queued or being sent goes straight from the worker's frame to the client's connection,
    in the frame handler: no queue, no task switch, no `send` per token. A chunk the sink
    refuses (a slow client) is queued, and so is every later one until the queue is drained,
    so the order holds; iteration then ends with the end of the stream or its error.

    Bounded: the worker sends at most `STREAM_WINDOW` bytes beyond what was passed on to the
    client; every `CREDIT_EVERY` bytes passed on are reported to it (a CREDIT frame), so a
    slow client pauses the model's generator instead of filling memory.
    """

    __slots__ = (
        "_busy",
        "_channel",
        "_credited",
        "_items",
        "_rid",
        "_sink",
        "_waiter",
        "done",
        "head",
        "passed",
    )

    def __init__(self, head: Head, channel: WorkerChannel, rid: int) -> None:
        self.head = head
        self._channel = channel
        self._rid = rid
        self._items: deque[bytes | ModelhostError | None] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Sink | None = None
        self._busy = False  # the consumer holds a chunk it took from the queue
        self.done = False
        self.passed = 0  # bytes handed to the client
        self._credited = 0  # the last `passed` reported to the worker

    def attach(self, sink: Sink) -> None:
        """Pass later chunks to `sink` directly (see the class); call after the head is sent."""
        self._sink = sink

    def _put(self, item: bytes | ModelhostError | None) -> None:
        sink = self._sink
        if (
            sink is not None
            and item.__class__ is bytes
            and not self._items
            and not self._busy
            and sink(item)
        ):
            self._passed(len(item))
            return
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _passed(self, n: int) -> None:
        # One add and one compare per chunk on the fast path.
        self.passed += n
        if self.passed - self._credited >= CREDIT_EVERY:
            self._credited = self.passed
            self._channel.credit(self._rid, self.passed)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        items = self._items
        while True:
            while not items:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            item = items.popleft()
            if item is None:
                self.done = True
                return
            if isinstance(item, ModelhostError):
                self.done = True
                raise item
            self._busy = True
            try:
                yield item
            finally:
                self._busy = False
            # The consumer is back: the chunk was sent (or is held by a flow-controlled
            # transport).
            self._passed(len(item))

    def close(self) -> None:
        if not self.done:
            self.done = True
            self._channel.cancel(self._rid)
            self._put(None)


Reply = tuple[Head, bytes]
StateListener = Callable[[dict[str, Any]], None]


class WorkerChannel:
    def __init__(self, address: str | TcpAddress, on_state: StateListener) -> None:
        # A Unix socket's path (a local worker), or a TCP address and the key its handshake
        # proves (a worker elsewhere: wire/handshake.py).
        self.address = address
        self._on_state = on_state
        self._proto: FrameProtocol | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Reply | Stream]] = {}
        self._streams: dict[int, Stream] = {}
        self._heads: dict[tuple[str, str, str, str], bytes] = {}  # request headers, encoded
        self.connected = False
        # Why the worker is about to go, when this side knows (its memory bound): said to
        # the requests it cuts.
        self.lost_because = ""
        # The backstop: the worker's predict deadline (from its STATE frames; 0 = none) and,
        # instead of a timer per request, one sweep while requests wait, with marks of
        # (loop time, last request id issued by then): ids only grow, so every pending id at
        # or below a mark older than the backstop has waited at least that long.
        self.deadline = 0.0
        self._last_rid = 0
        self._marks: deque[tuple[float, int]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def inflight(self) -> int:
        return len(self._pending) + len(self._streams)

    async def connect(self, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        address = self.address
        while True:
            try:
                if isinstance(address, TcpAddress):
                    proto = await handshake.connect(address, self._protocol)
                else:
                    _, proto = await loop.create_unix_connection(self._protocol, address)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if loop.time() > deadline:
                    raise WorkerUnavailable(
                        f"worker socket {address} did not open in {timeout:.0f}s"
                    ) from None
                await asyncio.sleep(0.05)
        assert isinstance(proto, FrameProtocol)
        self._proto = proto
        self.connected = True

    def _protocol(self) -> FrameProtocol:
        return FrameProtocol(self._on_frame, self._on_lost)

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()

    def request(
        self,
        method: str,
        subpath: str,
        query: str,
        content_type: str,
        body: bytes,
        headers: bytes = b"",
        request_id: str = "",
    ) -> asyncio.Future[Reply | Stream]:
        """Send one request; `headers` = the client's headers to pass on, a JSON object
        (already encoded) or b"" for none; `request_id` = the id its log lines carry."""
        proto = self._proto
        if proto is None or not self.connected:
            raise WorkerUnavailable("the model's worker is not connected; it may be restarting")
        rid = self._last_rid = next(self._ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Reply | Stream] = loop.create_future()
        self._pending[rid] = fut
        if self._sweeper is None and self.deadline > 0:
            self._sweeper = loop.call_later(self._tick(), self._sweep)
        key = (method, subpath, query, content_type)
        head = self._heads.get(key)
        if head is None:
            head = orjson.dumps({"m": method, "p": subpath, "q": query, "ct": content_type})
            if len(self._heads) < 1024:
                self._heads[key] = head
        if headers or request_id:  # the cached head, "h" and "r" spliced in before its "}"
            more = b',"h":%s' % headers if headers else b""
            if request_id:
                more += b',"r":' + orjson.dumps(request_id)
            head = head[:-1] + more + b"}"
        proto.send(encode_raw(Kind.REQUEST, rid, head, body))
        return fut

    def forget(
        self, fut: asyncio.Future[Reply | Stream], error: BaseException | None = None
    ) -> None:
        """The client went away before the reply: tell the worker to stop, and end `fut`
        with `error` (cancel it when None). A reply already in is left as it is."""
        for rid, pending in self._pending.items():
            if pending is fut:
                del self._pending[rid]
                self.cancel(rid)
                break
        if not fut.done():
            if error is None:
                fut.cancel()
            else:
                fut.set_exception(error)

    @property
    def backstop(self) -> float:
        """Seconds after which a request still waiting fails here: the deadline + a margin."""
        return self.deadline + 1.0 + self.deadline / 10

    def _tick(self) -> float:
        return max(0.05, min(1.0, self.backstop / 20))

    def _sweep(self) -> None:
        self._sweeper = None
        pending, marks = self._pending, self._marks
        if not pending or self.deadline <= 0:
            marks.clear()
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        marks.append((now, self._last_rid))
        limit = now - self.backstop
        cutoff = 0
        while marks and marks[0][0] <= limit:
            cutoff = marks.popleft()[1]
        if cutoff:
            expired = []
            for rid in pending:  # in id order
                if rid > cutoff:
                    break
                expired.append(rid)
            for rid in expired:
                self.forget(pending[rid], self._late())
        self._sweeper = loop.call_later(self._tick(), self._sweep)

    def _late(self) -> PredictTimeout:
        return PredictTimeout(
            f"the model's worker did not answer within the predict deadline of "
            f"{self.deadline:g} s (MODELHOST_PREDICT_TIMEOUT_S, or the deployment's "
            "predict_timeout_s) plus a margin "
            f"({self.backstop:g} s in all); it may be blocked (a blocking call inside an "
            "async def predict stops its event loop); the request was cancelled"
        )

    def cancel(self, rid: int) -> None:
        self._streams.pop(rid, None)
        if self._proto is not None:
            self._proto.send(encode(Kind.CANCEL, rid))

    def credit(self, rid: int, passed: int) -> None:
        """Tell the worker that `passed` bytes of stream `rid` went on to the client."""
        if self._proto is not None and rid in self._streams:
            self._proto.send(encode_raw(Kind.CREDIT, rid, b"%d" % passed))

    def _on_frame(self, kind: Kind, rid: int, header: Any, body: bytes) -> None:
        if kind is Kind.RESPONSE:
            fut = self._pending.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result((Head(header["s"], header["ct"], header.get("h")), body))
        elif kind is Kind.CHUNK:
            stream = self._streams.get(rid)
            if stream is not None:
                stream._put(body)
        elif kind is Kind.STATE:
            self._state(header)
        else:
            self._on_other(kind, rid, header)

    def _on_other(self, kind: Kind, rid: int, header: Any) -> None:
        """A stream's start or end, or an error."""
        if kind is Kind.STREAM_START:
            fut = self._pending.pop(rid, None)
            if fut is not None and not fut.done():
                started = Stream(Head(header["s"], header["ct"], header.get("h")), self, rid)
                self._streams[rid] = started
                fut.set_result(started)
        elif kind is Kind.STREAM_END:
            stream = self._streams.pop(rid, None)
            if stream is not None:
                stream._put(from_wire(header) if header else None)
        elif kind is Kind.ERROR:
            fut = self._pending.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(from_wire(header))
                return
            stream = self._streams.pop(rid, None)  # a failure after STREAM_START ends it
            if stream is not None:
                stream._put(from_wire(header))

    def _state(self, header: dict[str, Any]) -> None:
        deadline = header.get("deadline")
        if isinstance(deadline, int | float):
            self.deadline = float(deadline)
        self._on_state(header)

    def _on_lost(self, exc: Exception | None) -> None:
        self.connected = False
        error = WorkerUnavailable(
            "the model's worker process exited while handling the request"
            + (f": {self.lost_because}" if self.lost_because else "")
        )
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
        for stream in self._streams.values():
            stream._put(error)
        self._pending.clear()
        self._streams.clear()
        self._on_state({"state": "crashed", "reason": "worker connection lost"})
