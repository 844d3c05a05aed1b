"""The gateway: the one ASGI app `modelhost serve` runs.

Model routes take the hot path (`model_routes`); `/console/...`, `/healthz`, `/readyz` and
`/metrics` go to the console app. On start it spawns the workers of every active version;
while running it records each version's state in the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import secrets
import sys
import time
from collections.abc import Iterator
from typing import Any

from modelhost.auth.passwords import hash_password
from modelhost.auth.tokens import TokenService
from modelhost.gateway.auth import Authenticator
from modelhost.gateway.console import ConsoleParts, console_app
from modelhost.gateway.deployer import Deployer
from modelhost.gateway.metrics import metrics_registry
from modelhost.gateway.metrics import render as render_metrics
from modelhost.gateway.model_routes import ModelRoutes
from modelhost.gateway.routes import ModelEntry, RouteTable
from modelhost.registry import ModelRow, Registry, VersionRow
from modelhost.runtime.supervisor import Supervisor, VersionInfo, VersionWorkers
from modelhost.settings import Settings
from modelhost.store import ObjectStore, open_store
from modelhost.types import Receive, Scope, Send

log = logging.getLogger("modelhost.gateway")
_CONSOLE_PATHS = ("/console/", "/healthz", "/readyz", "/metrics")


class Gateway:
    def __init__(
        self, settings: Settings, registry: Registry, store: ObjectStore, tokens: TokenService
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.tokens = tokens
        self.routes = RouteTable()
        self.supervisor = Supervisor(settings, self._version_changed)
        self.auth = Authenticator(tokens, registry, settings.revocation_poll_s)
        self.deployer = Deployer(self)
        self._console = console_app(
            ConsoleParts(
                settings,
                registry,
                tokens,
                self.auth,
                self.routes,
                self.deployer,
                self.model_meta,
                self.metrics_text,
            )
        )
        self._models = ModelRoutes(self)
        self._metrics = metrics_registry(self.routes, self._models.latency)
        self._boot_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._shutting_down = False
        # When the server was asked to stop (SIGTERM/SIGINT): the drain deadline counts from it.
        self.exit_requested: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"].startswith(_CONSOLE_PATHS):
                await self._console(scope, receive, send)
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
        active = await asyncio.to_thread(self.registry.list_active_versions)
        # Routes exist before the first request; workers start in the background, newest
        # versions first. The versionless URL waits for the version that served before the
        # restart (the newest not failed) instead of rolling back to an older one that happens
        # to be ready first; if that one fails now, the newest ready one serves.
        active.sort(key=lambda a: a.version.version, reverse=True)
        starts = [self.register_version(a.model, a.version, a.replicas).start() for a in active]
        for a in active:
            entry = self.routes.by_id(a.model.id)
            if entry is not None and a.version.state != "failed":
                entry.hold_for = max(entry.hold_for, a.version.version)
        for entry in self.routes.entries():
            entry.refresh()
        if starts:
            log.info("starting %d model version(s)", len(starts))
            self._boot_task = asyncio.get_running_loop().create_task(_gather(starts))

    async def shutdown(self) -> None:
        """Stop serving: uvicorn has stopped accepting and waited (at most `drain_timeout_s`)
        for the HTTP requests in flight; the workers get what is left of that grace period
        to finish theirs, then SIGTERM (cleanup), then SIGKILL."""
        self._shutting_down = True  # versions stop with the server, not for good
        await self.auth.stop()
        started = self.exit_requested or time.monotonic()
        left = max(0.0, started + self.settings.drain_timeout_s - time.monotonic())
        await self.supervisor.shutdown(left)
        # versions being retired finish their own drain (bounded the same way)
        await asyncio.gather(*self._background, return_exceptions=True)

    def register_version(
        self, model: ModelRow, version: VersionRow, replicas: int
    ) -> VersionWorkers:
        """Put a version in the route table (state: loading) without starting it yet."""
        entry = self.routes.add(
            ModelEntry(model.id, model.prefix_key, model.name, model.deployment_key)
        )
        info = VersionInfo(
            version_id=version.id,
            model_id=model.id,
            prefix=model.prefix_key,
            name=model.name,
            version=version.version,
            deployment=model.deployment_key,
            store_key=version.store_key,
            model_json=version.model_json,
            traffic_weight=version.traffic_weight,
        )
        workers = VersionWorkers(info, replicas, self.settings, self._version_changed)
        entry.versions[version.version] = workers
        entry.refresh()
        self.supervisor.versions[version.id] = workers
        return workers

    async def start_version(
        self, model: ModelRow, version: VersionRow, replicas: int
    ) -> VersionWorkers:
        workers = self.register_version(model, version, replicas)
        await workers.start()
        return workers

    def _version_changed(self, workers: VersionWorkers) -> None:
        info, state = workers.info, workers.state
        entry = self.routes.by_id(info.model_id)
        if entry is not None:
            entry.refresh()
        error = workers.reason if state == "failed" else None
        log.info(
            "%s/%s v%d is %s%s",
            info.prefix,
            info.name,
            info.version,
            state,
            f": {error}" if error else "",
        )
        if self._shutting_down:
            return
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, self.registry.set_version_state, info.version_id, state, error)
        if state == "ready" and entry is not None:
            self._retire_older(entry, info.version)

    def _retire_older(self, entry: ModelEntry, newest: int) -> None:
        """Stop the workers of versions older than the newest `keep_versions` loaded ones."""
        keep = self.settings.keep_versions
        if keep <= 0:
            return
        older = [
            workers
            for number, workers in sorted(entry.versions.items(), reverse=True)
            if number < newest and workers.state in ("ready", "loading")
        ]
        for workers in older[keep - 1 :]:
            log.info(
                "%s/%s v%d: unloading, v%d is ready and MODELHOST_KEEP_VERSIONS=%d",
                entry.prefix,
                entry.name,
                workers.info.version,
                newest,
                keep,
            )
            task = asyncio.get_running_loop().create_task(
                self.supervisor.stop_version(workers.info.version_id)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def model_meta(self, entry: ModelEntry, workers: VersionWorkers) -> dict[str, Any]:
        info = workers.info
        return {
            "model_id": entry.model_id,
            "name": entry.name,
            "prefix": entry.prefix,
            "version": info.version,
            "deployment": entry.deployment,
            "state": workers.state,
            "reason": workers.reason,
            "model_json": info.model_json,
            "hooks": workers.hooks,
            "pod_name": workers.pod_name,
            "replicas": len(workers.replicas),
            "restarts": workers.restarts,
            "last_exit": workers.last_exit,
            "replica_states": [
                {"state": r.state, "restarts": r.restarts, "last_exit": r.last_exit}
                for r in workers.replicas
            ],
            "versions": {f"v{n}": w.state for n, w in sorted(entry.versions.items())},
        }

    def metrics_text(self) -> bytes:
        return render_metrics(self._metrics)


async def _gather(coros: list[Any]) -> None:
    results = await asyncio.gather(*coros, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            log.error("a model version failed to start: %s", result)


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
    registry.create_user(settings.admin_email, hash_password(password), is_admin=True)
    if generated:
        print(
            f"\nCreated the admin account {settings.admin_email}; its generated password is in "
            f"{path} (mode 0600): read it, then delete the file.\n"
            "(Set MODELHOST_ADMIN_PASSWORD before the first start to choose it.)\n",
            file=sys.stderr,
            flush=True,
        )


def build_gateway(settings: Settings) -> Gateway:
    from modelhost.runtime.sandbox import protect_gateway_process

    protect_gateway_process()  # workers may not read /proc/<gateway>/environ, fd, root
    settings.home.mkdir(parents=True, exist_ok=True)
    registry = Registry(settings.database_url)
    registry.migrate()
    bootstrap_admin(settings, registry)
    tokens = TokenService.from_settings(settings)  # keyring file, reloaded when rotated
    store = open_store(settings.store_url, settings.s3_endpoint_url)
    return Gateway(settings, registry, store, tokens)


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
            max_connections=settings.max_connections,
        ),
        ws="none",
        # X-Forwarded-* are read only from the proxies named in MODELHOST_FORWARDED_ALLOW_IPS.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
        access_log=False,
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
