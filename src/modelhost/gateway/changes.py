"""The change feed: what other gateways changed in the registry reaches this one.

Two paths, one handler (`apply`, the `Reconciler`):

- PostgreSQL ``LISTEN modelhost_changes`` on a connection of its own, in a thread (psycopg
  waits on the socket; nothing polls). A notice reaches `apply` a few milliseconds after
  the writer's commit. The connection is re-opened with backoff when it drops, and every
  (re)connection is followed by a full reconcile: notices sent while nobody listened are
  not kept by PostgreSQL.
- The fallback poll: a full reconcile every `poll_s` seconds, so a lost notice, a registry
  on SQLite (no notices) or a listener that cannot connect still converge within that bound.

Notices for the same thing are coalesced: while one is being applied, any number of new ones
make one more run after it, not a queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.engine import make_url

from modelhost.registry.notices import CHANNEL, Notice

log = logging.getLogger("modelhost.sync")
Apply = Callable[[Notice], Awaitable[None]]
EVERYTHING = Notice("all")
APPLICATION_NAME = "modelhost-changes"  # the listener in pg_stat_activity, with the gateway id
_WAIT_S = 0.5  # how often the listener thread looks up from the socket to see if it must stop
_BACKOFF_S = (0.1, 5.0)  # reconnect backoff: first, cap


class ChangeFeed:
    def __init__(self, database_url: str, gateway_id: str, poll_s: float, apply: Apply) -> None:
        url = make_url(database_url)
        self.listening = url.get_backend_name() == "postgresql"
        self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.gateway_id = gateway_id
        self.poll_s = poll_s
        self._apply = apply
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poller: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: dict[Notice, asyncio.Task[None]] = {}
        self._again: set[Notice] = set()
        self.connected = threading.Event()  # the listener is listening now (for tests, logs)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.listening:
            self._thread = threading.Thread(target=self._listen, name="change-feed", daemon=True)
            self._thread.start()
        if self.poll_s > 0:
            self._poller = self._loop.create_task(self._poll())

    async def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for task in list(self._running.values()):
            task.cancel()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, _WAIT_S * 4)

    # -- delivery (event loop) ---------------------------------------------------------

    def deliver(self, notice: Notice) -> None:
        """Apply `notice` now, or once more after the run in progress for the same thing."""
        if notice in self._running:
            self._again.add(notice)
            return
        assert self._loop is not None
        self._running[notice] = self._loop.create_task(self._run(notice))

    async def _run(self, notice: Notice) -> None:
        try:
            while True:
                self._again.discard(notice)
                try:
                    await self._apply(notice)
                except Exception:
                    log.exception("could not apply a registry change (%s)", notice.payload())
                if notice not in self._again:
                    return
        finally:
            self._running.pop(notice, None)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            self.deliver(EVERYTHING)

    def _post(self, notice: Notice) -> None:
        """From the listener thread to the event loop."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            self._loop.call_soon_threadsafe(self.deliver, notice)

    # -- listening (thread) ------------------------------------------------------------

    def _listen(self) -> None:
        backoff = _BACKOFF_S[0]
        while not self._stop.is_set():
            try:
                self._session()
                backoff = _BACKOFF_S[0]  # it was connected: the next attempt starts fresh
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning(
                    "registry change notices: %s; retrying in %.1f s (the poll every %g s "
                    "keeps this gateway in step meanwhile)",
                    _describe(exc),
                    backoff,
                    self.poll_s,
                )
            finally:
                self.connected.clear()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, _BACKOFF_S[1])

    def _session(self) -> None:
        import psycopg

        with psycopg.connect(
            self._conninfo,
            autocommit=True,
            connect_timeout=10,
            application_name=f"{APPLICATION_NAME} {self.gateway_id}"[:63],
        ) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            row: Any = conn.execute("SELECT current_schema()").fetchone()
            schema = str(row[0])
            self.connected.set()
            log.info("listening for registry changes (gateway id %s)", self.gateway_id)
            self._post(EVERYTHING)  # what changed while nobody listened
            while not self._stop.is_set():
                for raw in conn.notifies(timeout=_WAIT_S):
                    notice = Notice.parse(raw.payload)
                    if notice is None or notice.db != schema or notice.sender == self.gateway_id:
                        continue
                    self._post(Notice(notice.kind, notice.id, notice.key))  # coalescing key


def _describe(exc: BaseException) -> str:
    """The error without the connection string (it may hold a password)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'connection lost'}"
