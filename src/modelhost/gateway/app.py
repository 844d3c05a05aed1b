"""The gateway: the one ASGI app `modelhost serve` runs.

Model routes take the hot path (`model_routes`); `/console/...`, `/healthz`, `/readyz` and
`/metrics` go to the console app. The version manager (`versions`) starts the workers of
every active version and records their states; this module only wires the parts together.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

from modelhost.auth.passwords import hash_password
from modelhost.auth.tokens import TokenService
from modelhost.errors import Conflict
from modelhost.gateway import docs_pages
from modelhost.gateway.auth import Authenticator
from modelhost.gateway.autoscale import Autoscaler, with_autoscale_status
from modelhost.gateway.changes import ChangeFeed
from modelhost.gateway.console import ConsoleParts, console_app
from modelhost.gateway.deployer import Deployer
from modelhost.gateway.metrics import metrics_registry
from modelhost.gateway.metrics import render as render_metrics
from modelhost.gateway.model_metrics import ModelMetricsCollector
from modelhost.gateway.model_routes import ModelRoutes
from modelhost.gateway.reconcile import Reconciler
from modelhost.gateway.routes import RouteTable
from modelhost.gateway.version_admin import VersionAdmin
from modelhost.gateway.versions import VersionManager
from modelhost.registry import Registry
from modelhost.settings import Settings
from modelhost.store import ObjectStore, open_store
from modelhost.types import Receive, Scope, Send

log = logging.getLogger("modelhost.gateway")
_CONSOLE_PATHS = ("/console/", "/healthz", "/readyz", "/metrics")


class Gateway:
    """Wiring only: builds the parts, hands each the few collaborators it uses, routes ASGI
    scopes to the hot path or the console, and runs start-up and shutdown."""

    def __init__(
        self, settings: Settings, registry: Registry, store: ObjectStore, tokens: TokenService
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.tokens = tokens
        self.routes = RouteTable()
        self.auth = Authenticator(tokens, registry, settings.revocation_poll_s)
        self._docs = docs_pages.DocsPages(self.auth, self.routes)
        self.versions = VersionManager(settings, registry, self.routes)
        self.deployer = Deployer(settings, registry, store, self.versions)
        supervised = self.versions.supervisor.versions
        self.autoscaler = Autoscaler(settings, lambda: list(supervised.values()))
        meta = with_autoscale_status(self.versions.meta, self.autoscaler)
        self._models = ModelRoutes(settings, self.auth, self.routes, meta, self.autoscaler.wake)
        self._model_metrics = ModelMetricsCollector(self.routes, settings.workers_dir)
        self._metrics = metrics_registry(self.routes, self._models.latency, self._model_metrics)
        self._console = console_app(
            ConsoleParts(
                settings,
                registry,
                tokens,
                self.auth,
                self.routes,
                self.deployer,
                VersionAdmin(registry, self.versions, self.routes, settings),
                meta,
                self.metrics_text,
            )
        )
        # Changes other gateways make to the registry: notices, and the poll behind them.
        reconciler = Reconciler(registry, self.versions, self.routes, self.auth)
        self.changes = ChangeFeed(
            settings.database_url, settings.instance_id, settings.sync_poll_s, reconciler.apply
        )
        # When the server was asked to stop (SIGTERM/SIGINT): the drain deadline counts from it.
        self.exit_requested: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"].startswith(_CONSOLE_PATHS):
                await self._console(scope, receive, send)
            elif docs_pages.claims(scope["path"]):  # /{prefix}/docs/, /{prefix}/redoc/
                await self._docs(scope, receive, send)
            else:
                await self._models(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        # Everything built so far lives as long as the server: keep it out of the cyclic
        # collector's scans, so collections under load touch only per-request garbage.
        gc.freeze()
        await asyncio.to_thread(self.auth.refresh_revocations)
        self.auth.start()
        await self.versions.startup()
        self.changes.start()
        self.autoscaler.start()

    async def shutdown(self) -> None:
        """Stop serving: uvicorn has stopped accepting and waited (at most `drain_timeout_s`)
        for the HTTP requests in flight; the workers get what is left of that grace period
        to finish theirs, then SIGTERM (cleanup), then SIGKILL."""
        await self.changes.stop()  # first: no version starts while the others stop
        await self.auth.stop()
        await self.autoscaler.stop()
        started = self.exit_requested or time.monotonic()
        left = max(0.0, started + self.settings.drain_timeout_s - time.monotonic())
        await self.versions.shutdown(left)

    async def metrics_text(self) -> bytes:
        await self._model_metrics.fetch_remote()  # Ray replicas' own metrics, from their nodes
        return render_metrics(self._metrics)


ADMIN_PASSWORD_FILE = "admin-password.txt"


def bootstrap_admin(settings: Settings, registry: Registry) -> None:
    """The first start creates the admin account.

    A generated password goes to ``<home>/admin-password.txt`` (mode 0600), never to the
    log: logs are collected and kept where a password must not be. The file is written
    before the account exists, so a failed write leaves no account nobody can log in to.
    """
    if registry.count_users() > 0:
        return
    password = settings.admin_password
    generated = not password
    path = settings.home / ADMIN_PASSWORD_FILE
    if generated:
        password = secrets.token_urlsafe(16)
        path.unlink(missing_ok=True)  # a leftover of an earlier registry; O_EXCL below
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
    try:
        registry.create_user(settings.admin_email, hash_password(password), is_admin=True)
    except Conflict:
        return  # another gateway on this registry created it first (several gateways)
    if generated:
        print(
            f"\nCreated the admin account {settings.admin_email}; its generated password is in "
            f"{path} (mode 0600): read it, then delete the file.\n"
            "(Set MODELHOST_ADMIN_PASSWORD before the first start to choose it.)\n",
            file=sys.stderr,
            flush=True,
        )


def build_gateway(settings: Settings) -> Gateway:
    from modelhost.supervision.protect import protect_gateway_process

    protect_gateway_process()  # workers may not read /proc/<gateway>/environ, fd, root
    settings.home.mkdir(parents=True, exist_ok=True)
    registry = Registry(settings.database_url, sender=settings.instance_id)
    registry.migrate()
    bootstrap_admin(settings, registry)
    tokens = TokenService.from_settings(settings)  # keyring file, reloaded when rotated
    store = open_store(settings.store_url, settings.s3_endpoint_url)
    return Gateway(settings, registry, store, tokens)


def reuse_port_sockets(settings: Settings) -> list[socket.socket] | None:
    """With `reuse_port`: the listening socket, bound with SO_REUSEPORT so several gateway
    processes share the port (the kernel spreads new connections across them); else None
    (uvicorn binds as usual)."""
    if not settings.reuse_port:
        return None
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((settings.host, settings.port))
    except OSError:
        sock.close()
        raise
    return [sock]


def uvicorn_server(gateway: Gateway) -> Any:
    """The HTTP server for `gateway`: uvloop + httptools (one send per response), no
    per-request access log."""
    import uvicorn

    from modelhost.gateway.http_protocol import HttpProtocol

    settings = gateway.settings

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if gateway.exit_requested is None:
                gateway.exit_requested = time.monotonic()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                try:
                    yield
                finally:
                    # uvicorn re-raises the signal it stopped for once it is done, so the process
                    # would end "killed by SIGTERM" after a clean drain: it exits 0 instead.
                    self._captured_signals.clear()

    config = uvicorn.Config(
        gateway,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # Header size cap, header deadline and connection limit (see http_protocol).
        http=HttpProtocol.configured(
            max_header_bytes=settings.max_header_bytes,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            max_connections=settings.max_connections,
        ),
        ws="none",
        # X-Forwarded-* are read only from the proxies named in MODELHOST_FORWARDED_ALLOW_IPS.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
        access_log=False,
        log_config=None,  # uvicorn's loggers go through ours (modelhost/logs.py: text or JSON)
        log_level=settings.log_level,
        lifespan="on",
        timeout_keep_alive=settings.keep_alive_s,
        backlog=4096,
        server_header=False,  # no banner; one header less to validate per response
        # SIGTERM: in-flight HTTP requests get the drain period, then are cancelled (a hung
        # predict must not keep the server alive); Gateway.shutdown stops the workers.
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
    )
    return Server(config)
