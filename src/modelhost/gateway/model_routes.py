"""The hot path: one model request from the HTTP client to its worker and back.

Raw ASGI on purpose: no framework request/response objects, one pass over the headers,
a cached token check, the in-memory route table, one frame to the worker over a persistent
socket. Everything that can be computed once (x-prt-* headers) is.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

import orjson

from modelhost.errors import (
    MethodNotAllowed,
    ModelhostError,
    ModelNotReady,
    NotFound,
    QueueFull,
    UnsupportedMediaType,
)
from modelhost.gateway import body as bodies
from modelhost.gateway.auth import MODEL_KINDS, Authenticator, Principal
from modelhost.gateway.http_errors import error_body, error_headers, sse_error_event, status_of
from modelhost.gateway.http_protocol import ABORT, chunk_writer
from modelhost.gateway.metrics import LatencyRecorder
from modelhost.gateway.request_checks import ALLOW, MODEL_METHODS, is_media_type, wants_meta
from modelhost.gateway.routes import Match, ModelEntry, RouteTable
from modelhost.gateway.traffic import session_key
from modelhost.gateway.versions import MetaFn
from modelhost.logs import REQUEST_ID
from modelhost.model_config import described
from modelhost.settings import Settings
from modelhost.supervision.channel import Head, Reply, Stream, WorkerChannel
from modelhost.supervision.supervisor import Replica, VersionWorkers
from modelhost.types import Headers, Receive, Scope, Send

access_log = logging.getLogger("modelhost.access")
META_KINDS = MODEL_KINDS | {"user"}  # get_meta: a console token may read it too
log = logging.getLogger("modelhost.gateway")
SSE_TYPE = "text/event-stream"
# Request headers never passed on to the worker: credentials, and the body's framing.
NOT_FORWARDED = frozenset(
    (
        b"authorization",
        b"proxy-authorization",
        b"cookie",
        b"content-length",
        b"content-encoding",
        b"transfer-encoding",
    )
)
# A request still waiting for its worker after one to two of these gets a task watching its
# client; fast requests never do. A client gone by then cancels the predict (CANCEL frame).
WATCH_AFTER_S = 0.05
Waiting = tuple[WorkerChannel, Receive, "int | asyncio.Task[None]"]
# Called when a version has no ready replica: one scaled to zero starts a replica and this
# waits for it (gateway/autoscale.py, `Autoscaler.wake`); otherwise it returns at once.
Wake = Callable[[VersionWorkers], Awaitable[None]]


class _ClientGone(Exception):
    """The client disconnected while its request waited for the worker."""


class ModelRoutes:
    def __init__(
        self,
        settings: Settings,
        auth: Authenticator,
        routes: RouteTable,
        meta: MetaFn,
        wake: Wake | None = None,
    ) -> None:
        self.auth = auth
        self.routes = routes
        self.meta = meta
        self.wake = wake or _no_wake
        self.limit = settings.max_body_bytes
        self.sample = settings.access_log_sample
        self._ids = itertools.count(1)
        self._boot = os.urandom(4).hex()
        # (version id, replica index) -> (route entry generation, x-prt-* headers)
        self._prt_headers: dict[tuple[int, int], tuple[int, Headers]] = {}
        self.latency = LatencyRecorder()
        # Requests waiting for their worker -> (channel, receive, sweep number when they
        # started waiting, or the task watching their client), swept by one timer.
        self._waiting: dict[asyncio.Future[Reply | Stream], Waiting] = {}
        self._sweeps = 0
        self._sweeper: asyncio.TimerHandle | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = perf_counter()
        latency = self.latency
        latency.in_flight += 1
        n = next(self._ids)
        authorization, content_type, length, encoding, request_id = _read_headers(scope)
        request_id = request_id or f"{self._boot}-{n:x}".encode()  # none, or empty
        rid = request_id.decode("latin-1")
        REQUEST_ID.set(rid)  # this request's task: what is logged while it runs names it
        entry: ModelEntry | None = None
        workers: VersionWorkers | None = None
        status = 500  # unless an answer goes out: an unexpected exception, a cancellation
        try:
            # Who first: an anonymous or bad token learns nothing about which models exist.
            auth = self.auth
            query = scope["query_string"]
            meta = bool(query) and wants_meta(query)
            kinds = META_KINDS if meta else MODEL_KINDS
            principal = auth.cached(authorization, kinds) or await auth.authenticate(
                authorization, kinds
            )
            match = self.routes.resolve(scope["path"])
            if match is None:
                raise NotFound(_unknown_model_message(scope["path"]))
            entry = match.entry
            entry.requests += 1
            _authorize(auth, principal, entry, scope["path"])
            # After authentication and authorization: they answer alike for every method.
            if scope["method"] not in MODEL_METHODS or (
                content_type and not is_media_type(content_type)
            ):
                raise _refused(scope["method"], content_type)
            workers = _pick_version(match, scope)
            if meta:
                await self._send_meta(send, entry, workers, request_id)
                status = 200
                return
            replica, channel = (  # none ready: a version scaled to zero starts one (cold start)
                _ready_replica(entry, workers)
                if workers.ready_replicas
                else await self._woken(entry, workers)
            )
            message = await receive()
            body = bodies.first_part(message, self.limit, int(length) if length else None)
            if body is None:
                body = await bodies.read_rest(receive, message, self.limit)
            if encoding:
                body = bodies.decode(body, encoding.decode("latin-1"), self.limit)
            workers, replica, channel = (  # scaled away or retired while the body arrived
                await self._repick(match, scope) if replica.retired else (workers, replica, channel)
            )
            fut = channel.request(
                scope["method"],
                match.subpath,
                query.decode("latin-1"),
                content_type.decode("latin-1") if content_type else "",
                body,
                _forwarded(scope["headers"]),
                rid,
            )
            reply = await self._wait(fut, channel, receive)
            headers = self._headers(entry, workers, replica) + [(b"x-request-id", request_id)]
            if isinstance(reply, Stream):
                status = reply.head.status
                failed = await _send_stream(reply, headers, receive, send)
                if failed is not None:
                    entry.errors += 1
                    status = status_of(failed)
            else:
                status = reply[0].status
                await _send_reply(reply[0], reply[1], headers, encoding, send)
        except ModelhostError as exc:
            if entry is not None:
                entry.errors += 1
            status = status_of(exc)
            await _send_error(send, exc, request_id)
        except (_ClientGone, bodies.ClientDisconnected):
            status = 499  # nobody to answer (a predict sent already was told to cancel)
        finally:
            latency.in_flight -= 1
            latency.observe(entry, workers, status, perf_counter() - started)
        # Sampled access lines; every 5xx but 503 (not ready: the supervisor logs why) too.
        if (self.sample and n % self.sample == 0) or (status >= 500 and status != 503):
            _log_access(scope, status)

    async def _wait(
        self, fut: asyncio.Future[Reply | Stream], channel: WorkerChannel, receive: Receive
    ) -> Reply | Stream:
        """The worker's reply; the client's disconnect is watched only if it is slow."""
        waiting = self._waiting
        waiting[fut] = (channel, receive, self._sweeps)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._sweep)
        try:
            return await fut
        except asyncio.CancelledError:
            channel.forget(fut)  # this handler was cancelled: the worker stops too
            raise
        finally:
            watcher = waiting.pop(fut)[2]
            if not isinstance(watcher, int):
                watcher.cancel()

    def _sweep(self) -> None:
        self._sweeper = None
        waiting = self._waiting
        if not waiting:
            return
        sweep = self._sweeps
        self._sweeps += 1
        loop = asyncio.get_running_loop()
        for fut, (channel, receive, since) in list(waiting.items()):
            if isinstance(since, int):
                if since >= sweep:
                    break  # this one and the later ones started waiting after the last sweep
                task = loop.create_task(_watch_client(fut, channel, receive))
                waiting[fut] = (channel, receive, task)
        self._sweeper = loop.call_later(WATCH_AFTER_S, self._sweep)

    async def _repick(
        self, match: Match, scope: Scope
    ) -> tuple[VersionWorkers, Replica, WorkerChannel]:
        """The replica was scaled away, or its version retired, while the request's body
        arrived: it goes where a new request would (to a cold start if scaled to zero)."""
        workers = _pick_version(match, scope)
        return (workers, *await self._woken(match.entry, workers))

    async def _woken(
        self, entry: ModelEntry, workers: VersionWorkers
    ) -> tuple[Replica, WorkerChannel]:
        """`_ready_replica`, after a cold start if the version was scaled to zero."""
        if not workers.ready_replicas:
            await self.wake(workers)
        return _ready_replica(entry, workers)

    def _headers(
        self, entry: ModelEntry, workers: VersionWorkers, replica: Replica | None = None
    ) -> Headers:
        """The x-prt-* headers naming the version and replica that answered (a copy to
        append to); cached per replica until the route entry next changes."""
        key = (workers.info.version_id, replica.index if replica is not None else -1)
        cached = self._prt_headers.get(key)
        if cached is None or cached[0] != entry.generation or not cached[1][3][1]:
            info = workers.info
            pod = replica.pod if replica is not None else workers.pod_name
            cached = (
                entry.generation,
                [
                    (b"x-prt-model-id", str(entry.model_id).encode()),
                    (b"x-prt-model-version", str(info.version).encode()),
                    (b"x-prt-model-deployment-key", entry.deployment.encode()),
                    (b"x-prt-pod-name", pod.encode()),
                    (b"x-prt-model-prefix", entry.prefix.encode()),
                    (b"x-prt-model-name", entry.name.encode()),
                    (
                        b"x-prt-traffic-weight",
                        str(entry.weights.get(info.version, 0)).encode(),
                    ),
                ],
            )
            self._prt_headers[key] = cached
        return cached[1]

    async def _send_meta(
        self, send: Send, entry: ModelEntry, workers: VersionWorkers, request_id: bytes
    ) -> None:
        meta = self.meta(entry, workers)
        # model.json's own metadata (Practicus' ModelConfig: model_signature_json, ...) at the
        # top level, as Practicus answers it; the server's fields win on a clash
        body = orjson.dumps({**described(meta.get("model_json")), **meta})
        headers = self._headers(entry, workers) + [
            (b"content-type", b"application/json"),
            (b"x-request-id", request_id),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _read_headers(
    scope: Scope,
) -> tuple[bytes | None, bytes | None, bytes | None, bytes | None, bytes | None]:
    """One pass over the headers for the five the hot path reads."""
    authorization = content_type = length = encoding = request_id = None
    for key, value in scope["headers"]:
        if key == b"authorization":
            authorization = value
        elif key == b"content-type":
            content_type = value
        elif key == b"content-length":
            length = value
        elif key == b"content-encoding":
            encoding = value
        elif key == b"x-request-id":
            request_id = value[:128]
    return authorization, content_type, length, encoding, request_id


def _forwarded(raw: Headers) -> bytes:
    """The client's headers for the worker, as a JSON object: names lower-case (uvicorn's),
    repeated ones joined with ", "; never its credentials, nor the body's framing (the
    worker gets the decoded body). About 2 µs for ten headers."""
    out: dict[str, str] = {}
    for key, value in raw:
        if key in NOT_FORWARDED:
            continue
        name = key.decode("latin-1")
        text = value.decode("latin-1")
        out[name] = f"{out[name]}, {text}" if name in out else text
    return orjson.dumps(out)


def _refused(method: str, content_type: bytes | None) -> ModelhostError:
    if method not in MODEL_METHODS:
        return MethodNotAllowed(f"{method} is not allowed on a model URL; use {ALLOW}", ALLOW)
    shown = (content_type or b"")[:100].decode("latin-1")
    return UnsupportedMediaType(
        f"the Content-Type header {shown!r} is not a media type (type/subtype[; name=value]...)"
    )


def _pick_version(match: Match, scope: Scope) -> VersionWorkers:
    entry = match.entry
    if match.version is not None:
        workers = entry.versions.get(match.version)
        if workers is None:
            known = ", ".join(f"v{v}" for v in sorted(entry.versions)) or "none"
            raise NotFound(
                f"{entry.prefix}/{entry.name} has no version {match.version} (versions: {known})"
            )
        return workers
    split = entry.split
    if split is not None:  # weighted traffic across ready versions
        return split.pick(session_key(scope["headers"]))
    workers = entry.serving
    if workers is None:
        raise ModelNotReady(f"{entry.prefix}/{entry.name} has no deployed version yet")
    return workers


def _ready_replica(entry: ModelEntry, workers: VersionWorkers) -> tuple[Replica, WorkerChannel]:
    """The replica to send to, or why none may take the request (503, or 429 when the
    version's `max_queue` requests are in flight already)."""
    replica = workers.pick()
    if replica is None or replica.channel is None:
        raise _not_ready(entry, workers)
    if workers.queue_full:
        raise _queue_full(entry, workers)
    return replica, replica.channel


async def _no_wake(workers: VersionWorkers) -> None:
    return None


def _queue_full(entry: ModelEntry, workers: VersionWorkers) -> QueueFull:
    bound = workers.limits.max_queue
    return QueueFull(
        f"{entry.prefix}/{entry.name} v{workers.info.version} has {bound} requests in flight "
        "(its deployment's max_queue); retry later"
    )


def _not_ready(entry: ModelEntry, workers: VersionWorkers) -> ModelhostError:
    where = f"{entry.prefix}/{entry.name} v{workers.info.version}"
    if workers.state == "loading" and workers.restarting:
        return ModelNotReady(
            f"{where} crashed ({workers.last_exit or 'worker connection lost'}) and is "
            f"restarting" + (f": {workers.reason}" if workers.reason else "")
        )
    if workers.state == "failed":
        if workers.restarts:
            return ModelNotReady(f"{where} crashed and was not restarted: {workers.reason}")
        return ModelNotReady(f"{where} failed to start: {workers.reason}")
    if workers.state == "stopped":
        return NotFound(
            f"{where} was unloaded: only the newest versions of a model stay loaded "
            "(MODELHOST_KEEP_VERSIONS); use the versionless URL, or deploy this version again"
        )
    return ModelNotReady(f"{where} is loading" + (f" ({workers.reason})" if workers.reason else ""))


def _authorize(auth: Authenticator, principal: Principal, entry: ModelEntry, path: str) -> None:
    """May `principal` call this model? A console token (accepted for get_meta only:
    Practicus' REST flow reads the model id there) sees a model it may not use as missing,
    as ``model-auth/`` answers; session and scoped tokens get 403."""
    if principal.kind == "user" and not auth.may_use(principal, entry.prefix, entry.model_id):
        raise NotFound(_unknown_model_message(path))
    auth.authorize(principal, entry.prefix, entry.name, entry.model_id)


def _unknown_model_message(path: str) -> str:
    return (
        f"no model at '{path}'; model URLs look like /<prefix>/<model>/ or "
        "/<prefix>/<model>/<version>/ and end with '/'"
    )


async def _send_reply(
    head: Head, body: bytes, headers: Headers, encoding: bytes | None, send: Send
) -> None:
    headers.append((b"content-type", head.content_type.encode()))
    if head.headers:
        headers.extend((k.encode(), v.encode()) for k, v in head.headers.items())
    if encoding:
        name = encoding.decode("latin-1").strip().lower()
        body = bodies.encode(body, name)
        headers.append((b"content-encoding", name.encode()))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": head.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_stream(
    stream: Stream, headers: Headers, receive: Receive, send: Send
) -> ModelhostError | None:
    """Send a streamed reply; returns the error that cut it short (the response was
    aborted), or None when it ended normally or its client went away."""
    headers.append((b"content-type", stream.head.content_type.encode()))
    headers.append((b"cache-control", b"no-cache"))
    headers.append((b"x-accel-buffering", b"no"))
    if stream.head.headers:
        headers.extend((k.encode(), v.encode()) for k, v in stream.head.headers.items())
    watcher = asyncio.get_running_loop().create_task(_wait_disconnect(receive, stream))
    try:
        await send(
            {"type": "http.response.start", "status": stream.head.status, "headers": headers}
        )
        writer = chunk_writer(send)
        if writer is not None:  # chunks go from the worker's frames to the client directly
            stream.attach(writer)
        try:
            async for chunk in stream:
                if stream.done:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except ModelhostError as exc:
            await _abort(send, stream.head, exc)
            return exc
        await send({"type": "http.response.body", "body": b""})
        return None
    finally:
        watcher.cancel()
        stream.close()


async def _abort(send: Send, head: Head, exc: ModelhostError) -> None:
    """The worker failed mid-stream (it died, its generator raised, an ERROR frame): the
    status line said 200, so the response must not end like a whole one. Server-sent events
    get an `error` event first (OpenAI's error shape; OpenAI's SDK raises it), then the
    connection is closed without the chunked body's terminating chunk: clients and proxies
    see an incomplete response, not a success."""
    log.warning("stream cut short, response aborted: %s", exc.message)
    if head.content_type.startswith(SSE_TYPE):
        event = sse_error_event(exc)
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send(ABORT)


def _log_access(scope: Scope, status: int) -> None:
    """In the request's task: the line names the request (`REQUEST_ID`)."""
    level = logging.WARNING if status >= 500 else logging.INFO
    access_log.log(level, "%s %s %d", scope["method"], scope["path"], status)


async def _watch_client(
    fut: asyncio.Future[Reply | Stream], channel: WorkerChannel, receive: Receive
) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        while not fut.done():
            message: Any = await receive()
            if message["type"] == "http.disconnect":
                channel.forget(fut, _ClientGone())
                return


async def _wait_disconnect(receive: Receive, stream: Stream) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            message: Any = await receive()
            if message["type"] == "http.disconnect":
                stream.close()
                return


async def _send_error(send: Send, exc: ModelhostError, request_id: bytes) -> None:
    headers = error_headers(exc) + [(b"x-request-id", request_id)]
    with contextlib.suppress(Exception):
        await send({"type": "http.response.start", "status": status_of(exc), "headers": headers})
        await send({"type": "http.response.body", "body": error_body(exc)})
