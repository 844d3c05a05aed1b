"""The autoscaler: one control loop per gateway that sets each version's replica count.

Every `autoscale_tick_s` it samples, for each running version whose deployment has
`max_replicas` (the others keep their fixed `replicas`), the requests in flight on its
workers plus those waiting for a cold start, averages them over `autoscale_window_s`, and
lets `autoscale_policy.decide` say how many replicas to run; `VersionWorkers.scale` starts or
drains them (one scale at a time per version). Each change is logged at INFO with its
numbers, and `status` gives them to meta (`autoscale`).

Scale to zero (`min_replicas` 0): an idle version drains its last replica but stays `ready`
(the supervisor's `idle`): the versionless URL keeps serving it and /readyz counts it ready.
The next request finds no ready replica and calls `wake`, which starts one and waits for it
up to `cold_start_timeout_s` (then 503 + Retry-After naming the setting).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from modelhost.errors import ModelNotReady
from modelhost.gateway.autoscale_policy import Bounds, LoadWindow, bounds_of, decide
from modelhost.gateway.routes import ModelEntry
from modelhost.gateway.versions import MetaFn
from modelhost.settings import Settings
from modelhost.supervision.supervisor import VersionWorkers

log = logging.getLogger("modelhost.autoscale")
COLD_START_POLL_S = 0.05
Clock = Callable[[], float]


@dataclass
class _Version:
    """What the loop remembers about one version between ticks."""

    window: LoadWindow
    lower_since: float | None = None
    desired: int = 0
    ongoing: float = 0.0
    scaling: asyncio.Task[None] | None = None
    waking: bool = False  # a cold start is under way: requests wait for its replica
    waiting: int = 0  # requests waiting for that replica
    bounds: Bounds | None = field(default=None, repr=False)


class Autoscaler:
    """Sets the replica count of autoscaled versions; `running` lists the versions whose
    workers run (the supervisor's), `clock` is monotonic seconds."""

    def __init__(
        self,
        settings: Settings,
        running: Callable[[], Iterable[VersionWorkers]],
        clock: Clock = time.monotonic,
    ) -> None:
        self.tick_s = settings.autoscale_tick_s
        self.window_s = settings.autoscale_window_s
        self.cold_start_timeout_s = settings.cold_start_timeout_s
        self._running = running
        self._clock = clock
        self._versions: dict[int, _Version] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """No more decisions (the server is stopping: the versions drain as they are)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # one bad tick must not end autoscaling for good
                log.exception("autoscaling tick failed")
            await asyncio.sleep(self.tick_s)

    def tick(self) -> None:
        now = self._clock()
        seen: set[int] = set()
        for workers in self._running():
            seen.add(workers.info.version_id)
            bounds = bounds_of(workers.limits)
            if bounds is not None and workers.state == "ready":
                self._step(workers, bounds, now)
        for version_id in self._versions.keys() - seen:
            del self._versions[version_id]

    def _state(self, workers: VersionWorkers) -> _Version:
        state = self._versions.get(workers.info.version_id)
        if state is None:
            state = self._versions[workers.info.version_id] = _Version(LoadWindow(self.window_s))
        return state

    def _step(self, workers: VersionWorkers, bounds: Bounds, now: float) -> None:
        state = self._state(workers)
        state.bounds = bounds
        if workers.ready_replicas:
            state.waking = False
        state.window.add(now, workers.inflight + state.waiting)
        state.ongoing = state.window.average()
        if state.scaling is not None and not state.scaling.done():
            return  # one change at a time; the next tick looks again
        current = len(workers.replicas)
        decision = decide(current, state.ongoing, bounds, state.lower_since, now)
        state.desired, state.lower_since = decision.desired, decision.lower_since
        if decision.replicas < current and _starting(workers):
            # A replica still loading (a cold start nobody waits for any more) finishes, and
            # the delay counts from when it is ready: the retry of a request that gave up finds it.
            state.lower_since = None
            return
        if decision.replicas != current:
            self._scale(workers, state, decision.replicas, current)

    def _scale(self, workers: VersionWorkers, state: _Version, replicas: int, current: int) -> None:
        info, bounds = workers.info, state.bounds
        assert bounds is not None
        log.info(
            "autoscale %s/%s v%d: %d -> %d replicas (%.2f requests in flight on average over "
            "%g s, target %g per replica: %d wanted; bounds %d..%d)",
            info.prefix,
            info.name,
            info.version,
            current,
            replicas,
            state.ongoing,
            self.window_s,
            bounds.target,
            state.desired,
            bounds.min_replicas,
            bounds.max_replicas,
        )
        if current == 0:
            state.waking = True  # requests meanwhile wait for it, as for a cold start
        state.scaling = _task(workers.scale(replicas))

    # -- scale to zero ---------------------------------------------------------------------

    async def wake(self, workers: VersionWorkers) -> None:
        """A request found no ready replica. If the version is scaled to zero (or its cold
        start is under way), start a replica and wait until one is ready; any other reason
        (loading, crashed, failed) returns at once and the caller answers as usual."""
        known = self._versions.get(workers.info.version_id)
        if workers.replicas and (known is None or not known.waking):
            return
        state = known or self._state(workers)
        if not state.waking:
            state.waking = True
            log.info("autoscale %s/%s v%d: 0 -> 1 replica (cold start)", *_name(workers))
            state.scaling = _task(workers.scale(1))
        state.waiting += 1
        try:
            failed = await self._ready_or_failed(workers, state)
        finally:
            state.waiting -= 1
        where = "{}/{} v{}".format(*_name(workers))
        if failed is not None:
            raise ModelNotReady(
                f"{where} was scaled to zero and starting its replica failed ({failed}); it is "
                "back at zero replicas and the next request tries again"
            )
        if not workers.ready_replicas and workers.state == "ready":
            raise ModelNotReady(
                f"{where} was scaled to zero (its deployment's min_replicas is 0) and its first "
                f"replica is not ready after {self.cold_start_timeout_s:g} s "
                "(MODELHOST_COLD_START_TIMEOUT_S); it is still starting: retry later"
            )

    async def _ready_or_failed(self, workers: VersionWorkers, state: _Version) -> str | None:
        """Wait (up to the bound) for a ready replica; why the cold start failed, if it did.
        A failed one puts the version back at zero replicas (ready to try again) rather than
        leaving it failed: it served before, so the cause is likely passing (the store, memory)."""
        deadline = self._clock() + self.cold_start_timeout_s
        while not workers.ready_replicas and self._clock() < deadline:
            if workers.state == "stopped":
                return None
            if workers.state == "failed" or not (workers.replicas or state.waking):
                reason = workers.reason or "its worker exited"
                if state.waking:  # the first waiter to see it
                    state.waking = False
                    log.warning(
                        "autoscale %s/%s v%d: cold start failed: %s", *_name(workers), reason
                    )
                    state.scaling = _task(workers.scale(0))
                return reason
            await asyncio.sleep(COLD_START_POLL_S)
        return None

    # -- reporting -------------------------------------------------------------------------

    def status(self, workers: VersionWorkers) -> dict[str, Any] | None:
        """The autoscaling numbers of a version for meta, None when it is not autoscaled."""
        bounds = bounds_of(workers.limits)
        if bounds is None:
            return None
        state = self._versions.get(workers.info.version_id)
        return {
            "min_replicas": bounds.min_replicas,
            "max_replicas": bounds.max_replicas,
            "target_ongoing_requests": bounds.target,
            "scale_down_delay_s": bounds.delay_s,
            "current": len(workers.replicas),
            "desired": state.desired if state is not None else len(workers.replicas),
            "ongoing_requests": round(state.ongoing, 3) if state is not None else 0.0,
        }


def _task(scaling: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A `VersionWorkers.scale` in the background; its failure is logged, not lost."""
    task = asyncio.get_running_loop().create_task(scaling)
    task.add_done_callback(_log_failure)
    return task


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("autoscaling: changing the replica count failed", exc_info=task.exception())


def _starting(workers: VersionWorkers) -> bool:
    return any(r.state == "loading" for r in workers.replicas)


def _name(workers: VersionWorkers) -> tuple[str, str, int]:
    info = workers.info
    return info.prefix, info.name, info.version


def with_autoscale_status(meta: MetaFn, autoscaler: Autoscaler) -> MetaFn:
    """`meta` with an `autoscale` object for autoscaled versions."""

    def described(entry: ModelEntry, workers: VersionWorkers) -> dict[str, Any]:
        doc = meta(entry, workers)
        status = autoscaler.status(workers)
        if status is not None:
            doc["autoscale"] = status
        return doc

    return described
