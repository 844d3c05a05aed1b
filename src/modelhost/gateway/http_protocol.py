"""uvicorn's httptools protocol, made cheaper per response for the model hot path.

Measured with `wrk -t1 -c64` on 2 cores, uvicorn spends most of a small request's server
time in three places this module changes, keeping uvicorn's behaviour:

- Two `send` system calls per response (status line + headers, then body): the transport
  is wrapped so that writes are joined and sent once, when the response completes or, for
  streamed bodies, at the end of the current event-loop iteration (or as soon as 64 KiB
  are held, so flow control still sees a large body). Bytes go out in the order written;
  closing flushes, aborting drops what is pending.
- Two regular-expression searches per response header (a model response carries ten):
  both patterns are character classes, so searching the joined names and the joined
  values once each finds exactly what the per-header searches find.
- A keep-alive timer cancelled and re-created for every request: one timer per idle
  period checks when the connection was last active instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

# Held bytes are passed on at once beyond this, so the real transport's flow control (which
# pauses `send` when its buffer is full) sees a large response as it is produced.
MAX_HELD = 64 * 1024


class CoalescingTransport:
    """The `asyncio.Transport` subset uvicorn uses, with writes joined per loop turn."""

    __slots__ = ("_held", "_loop", "_pending", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._held = 0
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._pending.append(bytes(data))
        self._held += len(data)
        if self._held >= MAX_HELD:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._held = 0
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._held = 0
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:  # pause_reading, set_protocol, ...
        return getattr(self._transport, name)


class Cycle(RequestResponseCycle):
    """uvicorn's request/response cycle with the response head validated in two searches."""

    async def send(self, message: Any) -> None:
        if (
            message["type"] != "http.response.start"
            or self.response_started
            or self.disconnected
            or self.access_log
            or self.flow.write_paused
        ):
            await super().send(message)
            return
        self.response_started = True
        self.waiting_for_100_continue = False
        headers = [*self.default_headers, *message.get("headers", ())]
        if HEADER_RE.search(b"".join([name for name, _ in headers])):
            raise RuntimeError("Invalid HTTP header name.")
        if HEADER_VALUE_RE.search(b"".join([value for _, value in headers])):
            raise RuntimeError("Invalid HTTP header value.")
        content = [STATUS_LINE[message["status"]]]
        has_connection_close = False
        for raw_name, value in headers:
            name = raw_name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection":
                tokens = [token.lower().strip() for token in value.split(b",")]
                if b"close" in tokens:
                    self.keep_alive = False
                    has_connection_close = True
            content.extend((name, b": ", value, b"\r\n"))
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if (
            self.chunked_encoding is None
            and self.scope["method"] != "HEAD"
            and message["status"] not in (204, 304)
        ):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self.transport.write(b"".join(content))


class HttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol writing through a `CoalescingTransport`, answering with `Cycle`,
    with a lazy keep-alive timer (same timeout, same close)."""

    _idle_since: float | None = None  # None while a request is being read or answered

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped = CoalescingTransport(transport, asyncio.get_running_loop())
        super().connection_made(wrapped)  # type: ignore[arg-type]

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # uvicorn names its cycle class inside this method; the subclass only replaces
        # `send`, adds no state, and the request's task has not run a step yet.
        cycle = self.cycle
        if type(cycle) is RequestResponseCycle:
            cycle.__class__ = Cycle

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        super().connection_lost(exc)

    def _unset_keepalive_if_required(self) -> None:
        # Called for every chunk received: the connection is busy, not idle.
        self._idle_since = None

    def on_response_complete(self) -> None:
        # Same steps as uvicorn's, but the response is sent at once (it is complete) and
        # the keep-alive timer is armed only when none is pending.
        transport = self.transport
        if isinstance(transport, CoalescingTransport):
            transport.flush()
        self.server_state.total_requests += 1
        if transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self._check_idle
            )

    def _check_idle(self) -> None:
        self.timeout_keep_alive_task = None
        if self.transport.is_closing():
            return
        if self._idle_since is None:  # busy now; the response completing marks idle again
            delay = float(self.timeout_keep_alive)
        else:
            delay = self._idle_since + self.timeout_keep_alive - self.loop.time()
            if delay <= 0:
                self.timeout_keep_alive_handler()
                return
        self.timeout_keep_alive_task = self.loop.call_later(delay, self._check_idle)
