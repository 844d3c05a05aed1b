"""The worker process of one model version: `python -m modelhost.worker SPEC.json`.

The supervisor has already fetched the model folder and the `download_files_from` files
(worker/fetch.py). The worker binds its Unix socket (mode 0600), enters its sandbox while it
still has one thread (worker/sandbox.py: the control plane hidden, no capabilities), then
imports model.py, runs `init` and serves framed requests until SIGTERM, when it runs
`cleanup`. Only its parent, the gateway, may connect (checked with SO_PEERCRED).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

from modelhost import logs
from modelhost.errors import ModelhostError, ModelNotReady, PredictTimeout
from modelhost.wire.handshake import AuthenticatedServer
from modelhost.wire.protocol import STREAM_WINDOW, FrameProtocol, Kind, encode
from modelhost.wire.spec import WorkerSpec
from modelhost.worker.runner import Reply, Runner, StreamReply, WorkRequest
from modelhost.worker.sandbox import (
    MODES,
    SandboxError,
    SandboxPlan,
    SandboxUnavailable,
    enter,
)

log = logging.getLogger("modelhost.worker")
# After SIGTERM: in-flight requests get this long to finish, then `cleanup` gets as long; then
# the process exits whatever still runs (a hung thread cannot keep it alive). The gateway has
# drained the worker before it sends SIGTERM, and sends SIGKILL if this is not enough.
STOP_DRAIN_S = 5.0
STOP_CLEANUP_S = 5.0
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
# Exit status of a worker that recycles itself because every predict thread is stuck in an
# abandoned call (the supervisor restarts it like any crash of a ready worker).
WEDGED_EXIT_CODE = 70
# The parent-death signal of a worker. Not SIGTERM, which asks for a drain: when the parent
# dies, its threads may still be exiting, so getppid() cannot tell the two apart yet (a Ray
# actor has many threads), and a drain would keep the gateway's requests waiting on a replica
# that is lost.
PARENT_GONE = signal.SIGHUP


class WorkerServer:
    def __init__(self, spec: WorkerSpec, sock: socket.socket, failure: str = "") -> None:
        self.spec = spec
        self.sock = sock
        self.state = "failed" if failure else "loading"
        self.reason = failure
        self.hooks: list[str] = []
        self.runner: Runner | None = None
        self.conns: set[_Conn] = set()
        self.parent = os.getppid()
        self.orphaned = False  # the process that started us died (PARENT_GONE)

    def state_header(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "reason": self.reason,
            "hooks": self.hooks,
            "pod": self.spec.pod_name,
            "pid": os.getpid(),
            # The gateway's backstop: it stops waiting a little after this (supervision/channel.py).
            "deadline": self.spec.predict_timeout_s,
        }

    def set_state(self, state: str, reason: str = "") -> None:
        self.state, self.reason = state, reason
        frame = encode(Kind.STATE, 0, self.state_header())
        for conn in list(self.conns):
            conn.send(frame)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        server: asyncio.AbstractServer | AuthenticatedServer
        if self.spec.key:  # TCP: each connection proves the replica's key first
            server = AuthenticatedServer(
                self.sock, bytes.fromhex(self.spec.key), lambda: _Conn(self, trusted=True)
            )
            server.start()
        else:
            server = await loop.create_unix_server(lambda: _Conn(self), sock=self.sock)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(PARENT_GONE, self._orphaned, stop)
        if self.state != "failed":
            await self.prepare()
        await stop.wait()
        await self.shutdown(server)

    def _orphaned(self, stop: asyncio.Event) -> None:
        self.orphaned = True
        stop.set()

    async def shutdown(self, server: asyncio.AbstractServer | AuthenticatedServer) -> None:
        """SIGTERM: accept no new connection, let the requests in flight finish (not when the
        gateway is gone: nobody would read their answers), run `cleanup`, each bounded."""
        server.close()
        if not self.orphaned and os.getppid() == self.parent:
            await self._finish_inflight(STOP_DRAIN_S)
        else:  # whoever started us died (the gateway, or the Ray actor of a lost replica):
            for conn in list(self.conns):  # the gateway's requests fail now, not after cleanup
                if conn.transport is not None:
                    conn.transport.abort()
        if self.runner is not None and self.state == "ready":
            try:
                await asyncio.wait_for(self.runner.stop(), STOP_CLEANUP_S)
            except TimeoutError:
                log.error("cleanup of %s did not finish in %.0f s", self.spec.name, STOP_CLEANUP_S)
            except Exception:
                log.exception("cleanup of %s failed", self.spec.name)

    async def _finish_inflight(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            tasks = [t for conn in self.conns for t in conn.tasks.values()]
            if not tasks:
                return
            await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
        left = sum(len(conn.tasks) for conn in self.conns)
        if left:
            log.warning("%s: stopping with %d request(s) still running", self.spec.name, left)

    def check_wedged(self) -> None:
        """After a call was abandoned: when its runner can serve no more (every thread of
        its pool stuck), say so and exit so that the supervisor starts a fresh worker; the
        stuck threads cannot be stopped any other way. ``cleanup`` is not run: it would
        wait for a thread too."""
        reason = str(getattr(self.runner, "wedged", "") or "")
        if not reason or self.state != "ready":
            return
        spec = self.spec
        log.error("%s v%s is wedged, exiting to be restarted: %s", spec.name, spec.version, reason)
        # "crashed", not "failed": the supervisor restarts a crashed ready worker; a failed
        # one is stopped for good.
        self.set_state("crashed", f"worker wedged and restarting: {reason}")
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, os._exit, WEDGED_EXIT_CODE)  # once the frames above are out

    async def prepare(self) -> None:
        from modelhost.worker.prepare import load_runner

        try:
            self.runner = await load_runner(self.spec)
            self.hooks = self.runner.hooks
            self.set_state("loading", "running init()")
            await self.runner.start()
        except ModelhostError as exc:
            log.error("%s v%s failed to load: %s", self.spec.name, self.spec.version, exc.message)
            self.set_state("failed", exc.message)
            return
        except BaseException as exc:
            log.exception("%s v%s failed to load", self.spec.name, self.spec.version)
            self.set_state("failed", f"init() raised {type(exc).__name__}: {exc}")
            if not isinstance(exc, Exception):
                raise
            return
        log.info(
            "%s v%s ready (hooks: %s)", self.spec.name, self.spec.version, ", ".join(self.hooks)
        )
        self.set_state("ready")


class _Conn(FrameProtocol):
    """One gateway connection; requests on it run concurrently as tasks."""

    def __init__(self, server: WorkerServer, trusted: bool = False) -> None:
        super().__init__(self._on_frame, self._on_lost)
        self.server = server
        self.trusted = trusted  # authenticated already (TCP); else the peer is checked
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.accepted = False
        # The predict deadline: start times of the requests it still covers (in arrival
        # order), swept by one timer per connection while any are in flight, not one per
        # request; `expired` = cancelled by the sweep (answered 504, not "client gone").
        self.deadline = server.spec.predict_timeout_s
        self.started: dict[int, float] = {}
        self.expired: set[int] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        # Streams being sent: what the gateway passed on of each (CREDIT frames).
        self.windows: dict[int, _Window] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.trusted and not _from_gateway(transport):
            transport.close()
            return
        self.accepted = True
        self.server.conns.add(self)
        self.send(encode(Kind.STATE, 0, self.server.state_header()))

    def _on_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.started.clear()
        for task in self.tasks.values():
            task.cancel()

    def _on_frame(self, kind: Kind, rid: int, header: Any, body: bytes) -> None:
        if not self.accepted:
            return
        if kind is Kind.REQUEST:
            # A real task per request: model code (httpx, anyio) expects to run inside one.
            loop = asyncio.get_running_loop()
            task = loop.create_task(self._serve(rid, header, body))
            self.tasks[rid] = task
            task.add_done_callback(lambda _t, rid=rid: self._finished(rid))  # type: ignore[misc]
            if self.deadline > 0:
                self.started[rid] = loop.time()
                if self._sweeper is None:
                    self._sweeper = loop.call_later(self._tick(), self._sweep)
        elif kind is Kind.CREDIT:
            window = self.windows.get(rid)
            if window is not None:
                window.grant(int(header))
        elif kind is Kind.CANCEL:
            running = self.tasks.get(rid)
            if running is not None:
                running.cancel()

    def _finished(self, rid: int) -> None:
        self.tasks.pop(rid, None)
        self.started.pop(rid, None)
        self.expired.discard(rid)

    def _tick(self) -> float:
        """How often the deadline is checked: it fires up to this late."""
        return min(1.0, max(0.01, self.deadline / 20))

    def _sweep(self) -> None:
        """Cancel the requests past the deadline (the oldest come first in `started`)."""
        self._sweeper = None
        started = self.started
        if not started:
            return
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - self.deadline
        for rid, at in list(started.items()):
            if at > cutoff:
                break
            del started[rid]
            task = self.tasks.get(rid)
            if task is not None:
                self.expired.add(rid)
                task.cancel()
        if started:
            self._sweeper = loop.call_later(self._tick(), self._sweep)

    def _timed_out(self) -> PredictTimeout:
        message = (
            f"predict did not answer within its deadline of {self.deadline:g} s "
            "(MODELHOST_PREDICT_TIMEOUT_S, or the deployment's predict_timeout_s) and was "
            "cancelled; a stream must send its first "
            "chunk within it"
        )
        runner = self.server.runner
        threads = getattr(runner, "threads", 0)
        abandoned = getattr(runner, "abandoned", 0)
        if threads and abandoned:
            message += (
                f". A sync predict's thread cannot be stopped: {abandoned} of {threads} "
                "threads are held by abandoned calls (at all of them the worker restarts)"
            )
        return PredictTimeout(message)

    async def _serve(self, rid: int, header: dict[str, Any], body: bytes) -> None:
        logs.REQUEST_ID.set(header.get("r"))  # this request's task: its log lines name it
        server = self.server
        try:
            if server.state != "ready" or server.runner is None:
                raise ModelNotReady(
                    f"model is {server.state}" + (f": {server.reason}" if server.reason else "")
                )
            request = WorkRequest(
                header["m"],
                header.get("p", ""),
                header.get("q", ""),
                header.get("ct", ""),
                body,
                header.get("h") or {},
            )
            reply = await server.runner.handle(request)
            if isinstance(reply, Reply):
                self.send(encode(Kind.RESPONSE, rid, _head(reply), reply.body))
            else:
                await self._stream(rid, reply)
        except asyncio.CancelledError:
            if rid not in self.expired:  # the client went away, or the gateway did
                server.check_wedged()
                raise
            self.send(encode(Kind.ERROR, rid, self._timed_out().to_wire()))
            server.check_wedged()
        except ModelhostError as exc:
            if exc.__cause__ is not None:
                log.error("request failed: %s", exc.message, exc_info=exc.__cause__)
            self.send(encode(Kind.ERROR, rid, exc.to_wire()))
        except Exception as exc:
            log.exception("unexpected error in the worker")
            self.send(
                encode(
                    Kind.ERROR,
                    rid,
                    {"type": "internal_error", "message": f"{type(exc).__name__}: {exc}"},
                )
            )

    async def _stream(self, rid: int, reply: StreamReply) -> None:
        # The first chunk before the head: the deadline covers the wait for it (and only
        # it), and a failure before any output is a real HTTP error, not a 200.
        chunks = aiter(reply.chunks)
        first = b""
        with contextlib.suppress(StopAsyncIteration):
            while not first:
                first = await anext(chunks)
        self.started.pop(rid, None)
        self.send(encode(Kind.STREAM_START, rid, _head(reply)))
        window = self.windows[rid] = _Window()
        try:
            if first:
                self.send(encode(Kind.CHUNK, rid, None, first))
                window.sent = len(first)
            async for chunk in chunks:
                if chunk:
                    self.send(encode(Kind.CHUNK, rid, None, chunk))
                    window.sent += len(chunk)
                    if window.sent - window.passed > STREAM_WINDOW:  # a slow client
                        await window.wait()
        except Exception as exc:
            # After STREAM_START: the gateway aborts the response (it must not look whole).
            error = exc if isinstance(exc, ModelhostError) else _unexpected(exc)
            log.error("stream failed: %s", error.message, exc_info=exc.__cause__ or exc)
            self.send(encode(Kind.STREAM_END, rid, error.to_wire()))
            return
        finally:
            del self.windows[rid]
        self.send(encode(Kind.STREAM_END, rid))


class _Window:
    """One stream's flow control: bytes sent, and bytes the gateway passed on (CREDIT)."""

    __slots__ = ("passed", "sent", "waiter")

    def __init__(self) -> None:
        self.sent = 0
        self.passed = 0
        self.waiter: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        """Until the gateway has passed on enough that less than a window is outstanding."""
        while self.sent - self.passed > STREAM_WINDOW:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    def grant(self, passed: int) -> None:
        self.passed = max(self.passed, passed)
        waiter = self.waiter
        if waiter is not None and not waiter.done() and self.sent - self.passed <= STREAM_WINDOW:
            waiter.set_result(None)


def _unexpected(exc: Exception) -> ModelhostError:
    return ModelhostError(f"{type(exc).__name__}: {exc}")


def _head(reply: Reply | StreamReply) -> dict[str, Any]:
    head: dict[str, Any] = {"s": reply.status, "ct": reply.content_type}
    if reply.headers:
        head["h"] = reply.headers
    return head


def _from_gateway(transport: asyncio.BaseTransport) -> bool:
    """Only the process that started us (the gateway) may talk to this worker: another
    model's code, or anything else that reaches the socket path, is logged and closed."""
    sock = transport.get_extra_info("socket")
    try:
        pid, uid, _gid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
    except (AttributeError, OSError) as exc:
        log.warning("refused a connection whose peer could not be checked: %s", exc)
        return False
    if pid == os.getppid():
        return True
    log.warning(
        "refused a connection from pid %d (uid %d): only the gateway (pid %d) may connect",
        pid,
        uid,
        os.getppid(),
    )
    return False


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """Linux: get `sig` when the process that started us (the gateway, or a replica's Ray
    actor) dies, so no worker is orphaned."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG


def listen(path: str) -> socket.socket:
    """The worker's socket, mode 0600 from the start (umask around bind, then chmod)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def sandbox(spec: WorkerSpec) -> str:
    """Enter the sandbox as `spec.sandbox` says; returns why the worker must not start
    ("" = go on)."""
    if spec.sandbox not in MODES:
        return f"MODELHOST_WORKER_SANDBOX must be one of {', '.join(MODES)}, not {spec.sandbox!r}"
    if spec.sandbox == "off":
        return ""
    visible = [spec.version_dir, spec.cache_dir, spec.work_dir]
    with contextlib.suppress(Exception):
        visible.append(spec.download_to)  # an invalid one fails the load with its reason
    plan = SandboxPlan(hide=spec.hide_paths, keep=visible, workdir=spec.work_dir)
    try:
        report = enter(plan)
    except SandboxUnavailable as exc:
        if spec.sandbox == "required":
            return f"MODELHOST_WORKER_SANDBOX=required but the sandbox is unavailable: {exc}"
        log.warning(
            "worker sandbox unavailable (%s): model code of %s runs WITHOUT filesystem "
            "isolation and with the gateway user's capabilities; it can read %s",
            exc,
            spec.name,
            ", ".join(spec.hide_paths),
        )
        return ""
    except SandboxError as exc:
        return str(exc)
    if report.not_hidden:
        log.warning("worker sandbox of %s: %s", spec.name, report.describe())
        if spec.sandbox == "required":
            return f"MODELHOST_WORKER_SANDBOX=required but {report.describe()}"
    else:
        log.debug("worker sandbox of %s: %s", spec.name, report.describe())
    return ""


def start_child(argv: list[str] | None) -> WorkerSpec:
    """The spec named on the command line of a worker or fetch process, with its logging set
    up and the parent-death signal armed (no orphan outlives the gateway)."""
    args = sys.argv[1:] if argv is None else argv
    # A parent that starts us from a thread with signals blocked (Ray's actor threads) hands
    # down its mask: SIGTERM (stop, the parent-death signal) must reach us.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, PARENT_GONE})
    spec = WorkerSpec.load(Path(args[0]))
    logs.setup(spec.log_level, spec.log_format, pod=spec.pod_name)
    die_with_parent()
    return spec


def main(argv: list[str] | None = None) -> None:
    spec = start_child(argv)
    die_with_parent(PARENT_GONE)  # not SIGTERM: the worker must tell the two apart
    sock = socket.socket(fileno=spec.listen_fd) if spec.listen_fd >= 0 else listen(spec.socket_path)
    failure = sandbox(spec)  # before the event loop: no threads yet
    die_with_parent(PARENT_GONE)  # again: entering the sandbox may have changed our credentials
    if failure:
        log.error("%s v%s: %s", spec.name, spec.version, failure)

    async def serve() -> None:
        code = 1
        try:
            await WorkerServer(spec, sock, failure).run()
            code = 0
        finally:
            # Stopped (SIGTERM, cleanup done): exit here, from the loop. A predict thread that
            # never returns would otherwise keep the process alive (the loop's and the
            # interpreter's exit join threads), and an orphan would outlive the gateway.
            logging.shutdown()
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    try:
        import uvloop

        uvloop.run(serve())
    except ImportError:  # pragma: no cover
        asyncio.run(serve())


if __name__ == "__main__":
    main()
