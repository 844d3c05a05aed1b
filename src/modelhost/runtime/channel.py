"""The gateway's end of one worker's socket: send requests, match replies to futures.

One persistent connection per worker replica carries every request to it; `request()`
returns the worker's whole reply, or a `Stream` whose chunks arrive as the worker sends them.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from modelhost.errors import ModelhostError, WorkerUnavailable, from_wire
from modelhost.runtime.protocol import FrameProtocol, Kind, encode, encode_raw


@dataclass(slots=True)
class Head:
    status: int
    content_type: str
    headers: dict[str, str] | None


class Stream:
    """Chunks of a streamed reply; iterate it, or `close()` it to cancel the request."""

    def __init__(self, head: Head, channel: WorkerChannel, rid: int) -> None:
        self.head = head
        self._channel = channel
        self._rid = rid
        self._queue: asyncio.Queue[bytes | ModelhostError | None] = asyncio.Queue()
        self.done = False

    def _put(self, item: bytes | ModelhostError | None) -> None:
        self._queue.put_nowait(item)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._queue.get()
            if item is None:
                self.done = True
                return
            if isinstance(item, ModelhostError):
                self.done = True
                raise item
            yield item

    def close(self) -> None:
        if not self.done:
            self.done = True
            self._channel.cancel(self._rid)
            self._queue.put_nowait(None)


Reply = tuple[Head, bytes]
StateListener = Callable[[dict[str, Any]], None]


class WorkerChannel:
    def __init__(self, socket_path: str, on_state: StateListener) -> None:
        self.socket_path = socket_path
        self._on_state = on_state
        self._proto: FrameProtocol | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Reply | Stream]] = {}
        self._streams: dict[int, Stream] = {}
        self._heads: dict[tuple[str, str, str, str], bytes] = {}  # request headers, encoded
        self.connected = False

    @property
    def inflight(self) -> int:
        return len(self._pending) + len(self._streams)

    async def connect(self, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                _, proto = await loop.create_unix_connection(
                    lambda: FrameProtocol(self._on_frame, self._on_lost), self.socket_path
                )
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if loop.time() > deadline:
                    raise WorkerUnavailable(
                        f"worker socket {self.socket_path} did not open in {timeout:.0f}s"
                    ) from None
                await asyncio.sleep(0.05)
        self._proto = proto
        self.connected = True

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()

    def request(
        self, method: str, subpath: str, query: str, content_type: str, body: bytes
    ) -> asyncio.Future[Reply | Stream]:
        proto = self._proto
        if proto is None or not self.connected:
            raise WorkerUnavailable("the model's worker is not connected; it may be restarting")
        rid = next(self._ids)
        fut: asyncio.Future[Reply | Stream] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        key = (method, subpath, query, content_type)
        head = self._heads.get(key)
        if head is None:
            head = orjson.dumps({"m": method, "p": subpath, "q": query, "ct": content_type})
            if len(self._heads) < 1024:
                self._heads[key] = head
        proto.send(encode_raw(Kind.REQUEST, rid, head, body))
        return fut

    def forget(self, fut: asyncio.Future[Reply | Stream]) -> None:
        """The client went away before the reply: tell the worker to stop."""
        for rid, pending in list(self._pending.items()):
            if pending is fut:
                del self._pending[rid]
                self.cancel(rid)

    def cancel(self, rid: int) -> None:
        self._streams.pop(rid, None)
        if self._proto is not None:
            self._proto.send(encode(Kind.CANCEL, rid))

    def _on_frame(self, kind: Kind, rid: int, header: Any, body: bytes) -> None:
        if kind is Kind.RESPONSE:
            fut = self._pending.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result((Head(header["s"], header["ct"], header.get("h")), body))
        elif kind is Kind.CHUNK:
            stream = self._streams.get(rid)
            if stream is not None:
                stream._put(body)
        elif kind is Kind.STREAM_START:
            fut = self._pending.pop(rid, None)
            if fut is not None and not fut.done():
                stream = Stream(Head(header["s"], header["ct"], header.get("h")), self, rid)
                self._streams[rid] = stream
                fut.set_result(stream)
        elif kind is Kind.STREAM_END:
            stream = self._streams.pop(rid, None)
            if stream is not None:
                stream._put(from_wire(header) if header else None)
        elif kind is Kind.ERROR:
            fut = self._pending.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(from_wire(header))
        elif kind is Kind.STATE:
            self._on_state(header)

    def _on_lost(self, exc: Exception | None) -> None:
        self.connected = False
        error = WorkerUnavailable("the model's worker process exited while handling the request")
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
        for stream in self._streams.values():
            stream._put(error)
        self._pending.clear()
        self._streams.clear()
        self._on_state({"state": "crashed", "reason": "worker connection lost"})
