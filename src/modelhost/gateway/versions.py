"""The version manager: which model versions run, and what state each one is in.

It owns the `Supervisor` and the route table's entries: registering a version (route table,
state `loading`), starting its workers, recording every state change in the registry,
retiring versions older than the newest `keep_versions` once a newer one is ready, and
stopping everything at shutdown. Deploys (`Deployer`), the admin API (`VersionAdmin`) and
meta answers go through it; nobody else touches the supervisor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from modelhost.gateway.autoscale_policy import starting_replicas
from modelhost.gateway.routes import ModelEntry, RouteTable
from modelhost.registry import DeploymentRow, ModelRow, Registry, VersionRow
from modelhost.settings import Settings
from modelhost.supervision.supervisor import Supervisor, VersionInfo, VersionWorkers, WorkerLimits

log = logging.getLogger("modelhost.gateway")
# A version's meta document (`?get_meta=true`, the console's model list).
MetaFn = Callable[[ModelEntry, VersionWorkers], dict[str, Any]]


def version_info(model: ModelRow, version: VersionRow) -> VersionInfo:
    """What the supervisor needs to know about a version, from its registry rows."""
    return VersionInfo(
        version_id=version.id,
        model_id=model.id,
        prefix=model.prefix_key,
        name=model.name,
        version=version.version,
        deployment=model.deployment_key,
        store_key=version.store_key,
        model_json=version.model_json,
    )


def worker_limits(deployment: DeploymentRow, settings: Settings) -> WorkerLimits:
    """The deployment's own limits where it has them, the server's settings elsewhere."""

    def pick(own: Any, default: Any) -> Any:
        return default if own is None else own

    return WorkerLimits(
        predict_timeout_s=pick(deployment.predict_timeout_s, settings.predict_timeout_s),
        max_queue=pick(deployment.max_queue, settings.max_queue),
        memory_mb=pick(deployment.memory_mb, settings.worker_memory_mb),
        min_replicas=deployment.min_replicas,
        max_replicas=deployment.max_replicas,
        target_ongoing_requests=deployment.target_ongoing_requests,
        scale_down_delay_s=deployment.scale_down_delay_s,
        num_cpus=deployment.num_cpus,
        num_gpus=deployment.num_gpus,
        ray_resources=deployment.ray_resources,
        placement=deployment.placement,
    )


class VersionManager:
    def __init__(self, settings: Settings, registry: Registry, routes: RouteTable) -> None:
        self.settings = settings
        self.registry = registry
        self.routes = routes
        self.supervisor = Supervisor(settings, self._changed)
        self._background: set[asyncio.Task[Any]] = set()
        self._deleted: set[int] = set()  # version ids: their state is no longer recorded
        self._shutting_down = False
        self._boot: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def startup(self) -> None:
        """Routes for every active version before the first request; workers start in the
        background, newest versions first. The versionless URL waits for the version that
        served before the restart (the newest not failed) instead of rolling back to an older
        one that happens to be ready first; if that one fails now, the newest ready serves."""
        active = await asyncio.to_thread(self.registry.list_active_versions)
        active.sort(key=lambda a: a.version.version, reverse=True)
        starts = [self.register(a.model, a.version, a.deployment).start() for a in active]
        for a in active:
            entry = self.routes.by_id(a.model.id)
            if entry is not None and a.version.state != "failed":
                entry.hold_for = max(entry.hold_for, a.version.version)
        for entry in self.routes.entries():
            entry.refresh()
        if starts:
            log.info("starting %d model version(s)", len(starts))
            # not awaited at shutdown: stopping the versions ends their starts
            self._boot = asyncio.get_running_loop().create_task(_gather(starts))

    async def shutdown(self, drain_s: float) -> None:
        """Every version drains (at most `drain_s`), then stops; they stay active in the
        registry (they stop with the server, not for good)."""
        self._shutting_down = True
        await self.supervisor.shutdown(drain_s)
        # Versions being retired or scaled down finish their own drain and stop (bounded the
        # same way); a replica still starting (waiting for its socket) is not waited for longer.
        if self._background:
            bound = drain_s + self.settings.worker_stop_timeout_s
            await asyncio.wait(self._background, timeout=bound)

    def register(
        self, model: ModelRow, version: VersionRow, deployment: DeploymentRow
    ) -> VersionWorkers:
        """Put a version in the route table (state: loading) without starting it yet."""
        entry = self.routes.add(
            ModelEntry(model.id, model.prefix_key, model.name, model.deployment_key)
        )
        entry.pinned = model.pinned_version or 0
        entry.weighted = model.weighted
        entry.weights[version.version] = version.traffic_weight
        limits = worker_limits(deployment, self.settings)
        info = version_info(model, version)
        replicas = starting_replicas(deployment.replicas, limits)  # within autoscaling bounds
        workers = VersionWorkers(info, replicas, self.settings, self._changed, limits)
        entry.versions[version.version] = workers
        entry.refresh()
        self.supervisor.versions[version.id] = workers
        return workers

    async def start(
        self, model: ModelRow, version: VersionRow, deployment: DeploymentRow
    ) -> VersionWorkers:
        workers = self.register(model, version, deployment)
        await workers.start()
        return workers

    def ensure_running(
        self, model: ModelRow, version: VersionRow, deployment: DeploymentRow
    ) -> VersionWorkers | None:
        """Start a version that is not running here (stopped by KEEP_VERSIONS, or deployed
        through another gateway) in the background; no-op if it runs or the server stops.
        The check and the registration happen in one step of the event loop, so two callers
        (the admin API and a reconcile) never start it twice."""
        if self._shutting_down:
            return None
        workers = self.supervisor.versions.get(version.id)
        if workers is None:
            workers = self.register(model, version, deployment)
            self.background(workers.start())
        return workers

    def apply_deployment(self, row: DeploymentRow, scale: bool) -> None:
        """A deployment's limits on its running versions (the predict deadline and memory
        bound reach workers started from now on); with `scale`, its replica count too."""
        limits = worker_limits(row, self.settings)
        for entry in self.routes.entries():
            if entry.deployment != row.key:
                continue
            for workers in entry.versions.values():
                if not self.running(workers):
                    continue
                workers.limits = limits
                if scale:
                    self.background(workers.scale(row.replicas))

    def running(self, workers: VersionWorkers) -> bool:
        """Its workers run or are starting (not stopped or being stopped)."""
        return self.supervisor.versions.get(workers.info.version_id) is workers

    def stop(self, version_id: int) -> None:
        """Drain and stop a version's workers in the background."""
        self.background(self.supervisor.stop_version(version_id))

    def forget(self, entry: ModelEntry, number: int) -> VersionWorkers | None:
        """Take a deleted version out of the route table (its URL 404s from now on) and
        stop its workers; its state is not recorded any more."""
        workers = entry.versions.pop(number, None)
        entry.weights.pop(number, None)
        if entry.pinned == number:
            entry.pinned = 0
        entry.refresh()
        if workers is not None:
            self._deleted.add(workers.info.version_id)
            self.stop(workers.info.version_id)
        return workers

    def background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- state changes -----------------------------------------------------------------

    def _changed(self, workers: VersionWorkers) -> None:
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
        if self._shutting_down or info.version_id in self._deleted:
            return
        current = self.supervisor.versions.get(info.version_id)
        if current is not None and current is not workers:
            return  # an instance being stopped after the version was started again
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, self.registry.set_version_state, info.version_id, state, error)
        if state == "ready" and entry is not None:
            self._retire_older(entry, info.version)

    def retire_unused(self, entry: ModelEntry) -> None:
        """After a traffic change (a pin lifted, weights cleared): versions that lost their
        protection go the way `keep_versions` says."""
        ready = entry.latest_ready()
        if ready is not None:
            self._retire_older(entry, ready.info.version)

    def _retire_older(self, entry: ModelEntry, newest: int) -> None:
        """Stop the workers of versions older than the newest `keep_versions` loaded ones,
        except the pinned one and those an explicit split gives traffic to."""
        keep = self.settings.keep_versions
        if keep <= 0:
            return
        older = [
            workers
            for number, workers in sorted(entry.versions.items(), reverse=True)
            if number < newest and workers.state in ("ready", "loading")
        ]
        for workers in older[keep - 1 :]:
            number = workers.info.version
            if number == entry.pinned or (entry.weighted and entry.weights.get(number, 0) > 0):
                continue
            log.info(
                "%s/%s v%d: unloading, v%d is ready and MODELHOST_KEEP_VERSIONS=%d",
                entry.prefix,
                entry.name,
                number,
                newest,
                keep,
            )
            self.stop(workers.info.version_id)

    # -- meta --------------------------------------------------------------------------

    def meta(self, entry: ModelEntry, workers: VersionWorkers) -> dict[str, Any]:
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
                {"pod": r.pod, "state": r.state, "restarts": r.restarts, "last_exit": r.last_exit}
                for r in workers.replicas
            ],
            "versions": {f"v{n}": w.state for n, w in sorted(entry.versions.items())},
            "traffic": traffic_json(entry),
        }


def traffic_json(entry: ModelEntry) -> dict[str, Any]:
    """The versionless URL's policy and what it does now."""
    serving = entry.serving
    if entry.split is not None:
        now = {f"v{n}": w for n, w in entry.split.shares().items()}
    else:
        now = {f"v{serving.info.version}": 100} if serving is not None else {}
    return {
        "pinned": f"v{entry.pinned}" if entry.pinned else None,
        "weights": (
            {f"v{n}": w for n, w in sorted(entry.weights.items())} if entry.weighted else None
        ),
        "serving": now,
    }


async def _gather(coros: list[Any]) -> None:
    results = await asyncio.gather(*coros, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            log.error("a model version failed to start: %s", result)
