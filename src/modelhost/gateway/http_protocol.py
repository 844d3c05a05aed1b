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

It also bounds what a slow or abusive client can hold (settings in `configured`):

- Request line + headers over `max_header_bytes` are answered 431 and the connection is
  closed; bytes are counted as they arrive while a head is being read, and the parser is
  never fed past the cap, so nothing buffers more than it.
- A head not complete `header_timeout_s` after its first byte (or, on a new connection,
  after the connection opened) is answered 408 and closed; a new connection that sent
  nothing is closed silently. The same single timer per connection checks this: it never
  sleeps longer than the header timeout, and a head in progress costs one clock read.
- A request body of which no byte arrived for `body_timeout_s` (after its head or its last
  byte, as nginx's `client_body_timeout`) is answered 408 and the connection closed, by the
  same timer (not while this side stopped reading, nor once the app started answering).
- Beyond `max_connections` open connections a new one is answered 503 and closed; the
  open ones keep working. (uvicorn's `limit_concurrency` counts the connection itself and
  running requests, so at the limit every connection's requests would get 503.)

And it lets the app abort a response: the ASGI message `ABORT` closes the connection
without ending the response (no terminating chunk), which clients and proxies see as a
failed response; what was sent before it still goes out.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from typing import Any, cast

import httptools
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
# The connection timer's shortest sleep.
MIN_CHECK_S = 0.1
# Sent by the app after `http.response.start`: close the connection, the response unfinished
# (a stream whose source failed must not end like a whole response).
ABORT_TYPE = "modelhost.response.abort"
ABORT = {"type": ABORT_TYPE}


def error_response(
    status: int, kind: str, message: str, default_headers: list[tuple[bytes, bytes]]
) -> bytes:
    """A complete `connection: close` response with the gateway's JSON error body."""
    body = json.dumps({"error": {"type": kind, "message": message}}).encode()
    content = [STATUS_LINE[status]]
    for name, value in default_headers:
        content.extend((name, b": ", value, b"\r\n"))
    content.extend(
        (
            b"content-type: application/json\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\nconnection: close\r\n\r\n",
            body,
        )
    )
    return b"".join(content)


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

    def write_now(self, data: bytes) -> None:
        """Write `data` at once, after what is held (a piece of a stream that arrives by
        itself: holding it to the end of the loop turn would join it with nothing)."""
        if self._pending:
            self._pending.append(data)
            self.flush()
        else:
            self._transport.write(data)

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
            if message["type"] == ABORT_TYPE:
                self.abort()
                return
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

    def write_chunk(self, body: bytes) -> bool:
        """Write one non-empty piece of a started chunked body now, without awaiting `send`:
        what `send({"type": "http.response.body", "body": body, "more_body": True})` writes.
        False, and nothing written, where `send` would wait or do something else: the
        transport is flow-controlled (its buffer is full), the client is gone, the response
        is not chunked (HEAD, content-length) or not in progress."""
        if (
            self.flow.write_paused
            or self.disconnected
            or not self.response_started
            or self.response_complete
            or not self.chunked_encoding
            or self.scope["method"] == "HEAD"
        ):
            return False
        framed = b"%x\r\n%s\r\n" % (len(body), body)
        transport = self.transport
        if isinstance(transport, CoalescingTransport):
            transport.write_now(framed)
        else:
            transport.write(framed)
        return True

    def abort(self) -> None:
        """Close the connection with the response unfinished: what was written goes out
        (the transport flushes on close), the end of the response never does. The cycle
        counts as disconnected from now on, so uvicorn logs nothing and later sends drop."""
        self.keep_alive = False
        self.disconnected = True
        self.message_event.set()
        self.transport.close()


def chunk_writer(send: Any) -> Callable[[bytes], bool] | None:
    """`Cycle.write_chunk` of the response `send` belongs to, or None when `send` is not
    this protocol's (another server runs the app, or a middleware wrapped `send`)."""
    cycle = getattr(send, "__self__", None)
    return cycle.write_chunk if isinstance(cycle, Cycle) else None


class HttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol writing through a `CoalescingTransport`, answering with `Cycle`,
    with a lazy keep-alive timer (same timeout, same close) that also enforces the header
    deadline, a header size cap and a connection limit."""

    # Limits (the defaults of the settings); `configured` makes a subclass with others.
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 0  # 0 = unlimited

    _idle_since: float | None = None  # None while a request is being read or answered
    # Bytes of the request head being read; None from the end of a head to the end of its
    # message (its body is the parser's and the body limit's business).
    _head_bytes: int | None = 0
    # When the head being read started (its first byte; on a new connection, the
    # connection's opening); None when no head is being read.
    _head_since: float | None = None
    # When the body being read last made progress (end of its head, or its last bytes);
    # None when no body is being read.
    _body_since: float | None = None

    @classmethod
    def configured(
        cls,
        *,
        max_header_bytes: int,
        header_timeout_s: float,
        max_connections: int,
        body_timeout_s: float = body_timeout_s,
    ) -> type[HttpProtocol]:
        """This protocol with the given limits (a timeout <= 0: no such deadline)."""
        limits = {
            "max_header_bytes": max_header_bytes,
            "header_timeout_s": header_timeout_s if header_timeout_s > 0 else math.inf,
            "body_timeout_s": body_timeout_s if body_timeout_s > 0 else math.inf,
            "max_connections": max(0, max_connections),
        }
        return cast("type[HttpProtocol]", type(cls.__name__, (cls,), limits))

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped = CoalescingTransport(transport, asyncio.get_running_loop())
        limit = self.max_connections
        refuse = limit > 0 and len(self.connections) >= limit
        super().connection_made(wrapped)  # type: ignore[arg-type]
        if refuse:
            self.connections.discard(self)  # never counted: the open ones keep their places
            self.logger.warning(
                "Refused a connection: %d are open (MODELHOST_MAX_CONNECTIONS).", limit
            )
            self._refuse(
                503,
                "too_many_connections",
                f"the server already has {limit} open connections; retry later, or raise "
                "MODELHOST_MAX_CONNECTIONS",
            )
            return
        self._head_since = self.loop.time()
        self.timeout_keep_alive_task = self.loop.call_later(self._check_every(), self._check_idle)

    def data_received(self, data: bytes) -> None:
        head = self._head_bytes
        if head is not None:  # a head is awaited or being read: count it
            if self._head_since is None:
                self._head_since = self.loop.time()
            head += len(data)
            if head > self.max_header_bytes:
                self._head_over_cap(data, head - len(data))
                return
            self._head_bytes = head
        elif self._body_since is not None:  # a body in progress: it moved
            self._body_since = self.loop.time()
        # uvicorn's data_received, inlined (one call less per request on the hot path).
        self._idle_since = None  # busy: what `_unset_keepalive_if_required` does
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def _head_over_cap(self, data: bytes, before: int) -> None:
        # The head may still end within the cap (a body or the next request follows it in
        # this chunk): feed up to the cap, and the rest only if the head did end there.
        cap = self.max_header_bytes
        room = max(0, cap - before)
        self._head_bytes = cap
        HttpToolsProtocol.data_received(self, data[:room])
        if self.transport.is_closing():
            return
        if self._head_bytes != cap:  # the head ended
            self.data_received(data[room:])
            return
        self.logger.warning("Request head over %d bytes (MODELHOST_MAX_HEADER_BYTES).", cap)
        self._refuse(
            431,
            "header_too_large",
            f"the request line and headers exceed {cap} bytes; send smaller headers, or "
            "raise MODELHOST_MAX_HEADER_BYTES",
        )

    def _refuse(self, status: int, kind: str, message: str) -> None:
        """Answer `status` with a JSON error and close (only close while a response to an
        earlier request is still being sent: its bytes must not be interleaved)."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            default_headers = self.server_state.default_headers
            self.transport.write(error_response(status, kind, message, default_headers))
        self.transport.close()

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        self._head_since = None
        self._body_since = self.loop.time()
        super().on_headers_complete()
        # uvicorn names its cycle class inside this method; the subclass only replaces
        # `send`, adds no state, and the request's task has not run a step yet.
        cycle = self.cycle
        if type(cycle) is RequestResponseCycle:
            cycle.__class__ = Cycle

    def on_message_complete(self) -> None:
        self._head_bytes = 0  # what comes next is the next request's head
        self._body_since = None
        # uvicorn's on_message_complete, inlined (no extra call per request).
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        cycle.more_body = False
        cycle.message_event.set()

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
                self._check_every(), self._check_idle
            )

    def _check_every(self) -> float:
        # The timer never sleeps longer than this, so a head that starts at any moment is
        # seen before its deadline (and then checked exactly at it). The floor keeps a zero
        # keep-alive from turning the timer into a busy loop.
        return max(
            MIN_CHECK_S,
            min(float(self.timeout_keep_alive), self.header_timeout_s, self.body_timeout_s),
        )

    def _check_idle(self) -> None:
        """The connection's one timer: header deadline, then keep-alive idle timeout."""
        self.timeout_keep_alive_task = None
        if self.transport.is_closing():
            return
        every = self._check_every()
        if self._head_since is not None:  # a head is awaited (new connection) or being read
            delay = self._head_since + self.header_timeout_s - self.loop.time()
            cycle = self.cycle
            if delay <= 0 and (cycle is None or cycle.response_complete):
                self._head_timeout()
                return
        elif self._idle_since is None:  # busy now; the response completing marks idle again
            delay = every
            if self._body_since is not None:  # reading a body
                delay = self._body_delay()
                if delay <= 0:
                    self._body_timeout()
                    return
        else:
            delay = self._idle_since + self.timeout_keep_alive - self.loop.time()
            if delay <= 0:
                self.timeout_keep_alive_handler()
                return
        self.timeout_keep_alive_task = self.loop.call_later(
            min(max(delay, 0.0) or every, every), self._check_idle
        )

    def _body_delay(self) -> float:
        """Seconds left before the body being read is late. Its clock restarts while the
        wait is not the client's doing: reading paused here (the app has not taken what
        came), a `100-continue` not yet sent, or the app answering already."""
        now = self.loop.time()
        cycle = self.cycle
        if (
            self.flow.read_paused
            or cycle is None
            or cycle.response_started
            or cycle.waiting_for_100_continue
        ):
            self._body_since = now
        assert self._body_since is not None
        return self._body_since + self.body_timeout_s - now

    def _body_timeout(self) -> None:
        self.logger.debug("Request body stalled for %g s; answering 408.", self.body_timeout_s)
        self._body_since = None
        cycle = self.cycle
        message = (
            f"no byte of the request body arrived for {self.body_timeout_s:g} s; send the "
            "body at once, or raise MODELHOST_BODY_TIMEOUT_S"
        )
        self.transport.write(
            error_response(408, "body_timeout", message, self.server_state.default_headers)
        )
        if isinstance(cycle, Cycle):
            cycle.abort()  # the app reading the body sees the client gone
        else:
            self.transport.close()

    def _head_timeout(self) -> None:
        if not self._head_bytes:  # a new connection that never sent a byte: just close
            self.transport.close()
            return
        self.logger.debug(
            "Request head not complete in %g s; answering 408.", self.header_timeout_s
        )
        self._refuse(
            408,
            "header_timeout",
            f"the request line and headers did not arrive within {self.header_timeout_s:g} s; "
            "send them at once, or raise MODELHOST_HEADER_TIMEOUT_S",
        )
