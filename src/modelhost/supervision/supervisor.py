"""Starts, watches and stops the worker processes of model versions.

Each model version runs in `replicas` worker processes of its own (the deployment decides how
many): a crash, a blocking `predict` or a failed `init` in one version never touches another,
and the gateway routes only to replicas that said they are ready.

Starting a replica is two processes: `modelhost.worker.fetch` (the supervisor's own environment,
with the object store's credentials) puts the files in place, then `modelhost.worker` runs the model
code with an allow-listed environment (`worker_env`) in its sandbox (`sandbox`). Both run in
a session of their own: only the gateway signals them (a Ctrl-C or systemd's SIGTERM to the
gateway's process group does not reach them), and the parent-death signal stops them if the
gateway dies.

Supervision never gives up by default: a worker that exits after it has once been ready is
restarted with a backoff doubling from 0.5 s up to `worker_restart_backoff_max_s`, back to
0.5 s once a worker stayed ready for `HEALTHY_S`; `worker_max_restarts` (0 = forever) caps it.
Stopping a version drains it: out of routing first, in-flight requests and streams get
`drain_timeout_s` to finish, then SIGTERM (the worker runs `cleanup`), then SIGKILL after
`worker_stop_timeout_s`. Changing the replica count (`VersionWorkers.scale`) starts new
replicas beside the running ones, or takes the surplus out of routing and drains it the same
way, so no request is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from modelhost.errors import ModelhostError
from modelhost.settings import Settings
from modelhost.supervision.channel import WorkerChannel
from modelhost.supervision.memory import MemoryGuard
from modelhost.supervision.ray_placement import RemoteWorker, actor_name, placement_for
from modelhost.supervision.worker_env import remove_metrics_dir, replica_home, worker_environ
from modelhost.wire.spec import WorkerSpec

log = logging.getLogger("modelhost.supervisor")
BACKOFF_START_S = 0.5
# The longest wait between attempts to connect again to a Ray replica whose connection
# dropped (`Settings.worker_reconnect_s` bounds them all).
RECONNECT_MAX_DELAY_S = 2.0
HEALTHY_S = 60.0  # ready this long: the next crash restarts after BACKOFF_START_S again


@dataclass(frozen=True)
class VersionInfo:
    version_id: int
    model_id: int
    prefix: str
    name: str
    version: int
    deployment: str
    store_key: str
    model_json: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerLimits:
    """A deployment's bounds on its versions' workers (the registry's value, else the
    setting's): predict deadline and memory apply to workers started from now on, the
    queue bound at once."""

    predict_timeout_s: float = 600.0
    max_queue: int = 0  # requests in flight per version at the gateway; 0 = no bound
    memory_mb: int = 0  # per worker process; 0 = no bound
    # Autoscaling between these (None: a fixed `replicas`), by in-flight requests per replica.
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    scale_down_delay_s: float | None = None
    # Placement on a Ray cluster; the local runtime ignores them.
    num_cpus: float | None = None
    num_gpus: float | None = None
    ray_resources: dict[str, float] | None = None
    placement: str | None = None  # "pack" (Ray's default) | "spread"


@dataclass
class Replica:
    index: int
    # out of routing for good (a scale-down, its version retired): draining, never restarted
    retired: bool = False
    channel: WorkerChannel | None = None
    proc: asyncio.subprocess.Process | None = None
    remote: RemoteWorker | None = None  # its worker in a Ray actor (MODELHOST_RUNTIME=ray)
    state: str = "loading"
    reason: str = ""
    pod: str = ""
    hooks: list[str] = field(default_factory=list)
    restarts: int = 0  # over the server's life, shown in meta
    last_exit: str = ""  # how its last worker process ended ("" = none has)
    ever_ready: bool = False  # only a replica that once served is restarted
    recovering: bool = False  # between a crash and being ready again
    ready_since: float = 0.0  # loop time it became ready (0 = not ready)
    streak: int = 0  # restarts since it was last healthy: the backoff exponent


ChangeListener = Callable[["VersionWorkers"], None]


class VersionWorkers:
    """The replicas of one model version, as the gateway sees them."""

    def __init__(
        self,
        info: VersionInfo,
        replicas: int,
        settings: Settings,
        on_change: ChangeListener,
        limits: WorkerLimits | None = None,
    ) -> None:
        self.info = info
        self.settings = settings
        self.limits = limits or WorkerLimits(settings.predict_timeout_s)
        # Where workers run: None = child processes of this gateway; else Ray actors.
        self.placement = placement_for(settings)
        self.replicas = [Replica(i) for i in range(max(1, replicas))]
        self._on_change = on_change
        self._stopping = False
        self._settled = asyncio.Event()
        self._scaling = asyncio.Lock()
        self._rr = 0
        # Scaled to zero on purpose (gateway/autoscale.py): counts as ready, a request starts one.
        self.idle = False
        # The replicas routed to, and their channels (for readers that want just those).
        self.ready_replicas: list[Replica] = []
        self.ready: list[WorkerChannel] = []

    @property
    def state(self) -> str:
        states = {r.state for r in self.replicas}
        if self._stopping:
            return "stopped"
        if "ready" in states:
            return "ready"
        if states == {"failed"}:
            return "failed"
        return "ready" if self.idle else "loading"

    @property
    def reason(self) -> str:
        return next((r.reason for r in self.replicas if r.reason and r.state != "ready"), "")

    @property
    def hooks(self) -> list[str]:
        return next((r.hooks for r in self.replicas if r.hooks), [])

    @property
    def pod_name(self) -> str:
        return next((r.pod for r in self.replicas if r.pod), "")

    @property
    def restarting(self) -> bool:
        """A replica crashed after serving and is being restarted."""
        return any(r.recovering or (r.ever_ready and r.state == "crashed") for r in self.replicas)

    @property
    def restarts(self) -> int:
        return sum(r.restarts for r in self.replicas)

    @property
    def last_exit(self) -> str:
        return next((r.last_exit for r in self.replicas if r.last_exit and r.recovering), "") or (
            next((r.last_exit for r in self.replicas if r.last_exit), "")
        )

    @property
    def inflight(self) -> int:
        return sum(r.channel.inflight for r in self.replicas if r.channel is not None)

    def pick(self) -> Replica | None:
        """The ready replica to send the next request to (round robin), None if none is."""
        ready = self.ready_replicas
        if not ready:
            return None
        if len(ready) == 1:
            return ready[0]
        self._rr += 1
        return ready[self._rr % len(ready)]

    @property
    def queue_full(self) -> bool:
        """`max_queue` requests are in flight already (never when it is 0)."""
        bound = self.limits.max_queue
        return bool(bound) and self.inflight >= bound

    async def wait_settled(self, timeout: float) -> str:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout)
        return self.state

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn(r) for r in self.replicas))

    async def stop(self, drain_s: float | None = None, reroute: bool = True) -> None:
        """Drain, then stop: no new requests are routed here from now on, the in-flight ones
        get `drain_s` (default `drain_timeout_s`) to finish, then the workers stop. With
        `reroute`, requests that picked a replica but were still reading their body pick
        again (the version is retired or deleted; not when the whole server stops)."""
        self._stopping = True
        self.ready, self.ready_replicas = [], []
        if reroute:
            for replica in self.replicas:
                replica.retired = True
        self._changed()
        timeout = self.settings.drain_timeout_s if drain_s is None else drain_s
        await self._drain(self.replicas, timeout)
        await asyncio.gather(*(self._terminate(r) for r in self.replicas))
        workers_dir, version_id = self.settings.workers_dir, self.info.version_id
        for replica in self.replicas:  # its prometheus_client files (worker_env.py)
            remove_metrics_dir(replica_home(workers_dir, version_id, replica.index))

    async def scale(self, replicas: int) -> None:
        """Run `replicas` worker processes from now on: new ones start beside the running
        ones; surplus ones (the highest indexes) leave routing, drain, then stop."""
        async with self._scaling:
            count = max(0, replicas)
            if self._stopping or count == len(self.replicas):
                return
            if count > len(self.replicas):
                added = [Replica(i) for i in range(len(self.replicas), count)]
                self.replicas.extend(added)
                self._changed()
                await asyncio.gather(*(self._spawn(r) for r in added))
                return
            surplus = self.replicas[count:]
            del self.replicas[count:]
            for replica in surplus:
                replica.retired = True
            self.idle = count == 0
            self._update_ready()
            self._changed()
            await self._drain(surplus, self.settings.drain_timeout_s)
            await asyncio.gather(*(self._terminate(r) for r in surplus))

    async def _drain(self, replicas: list[Replica], timeout: float) -> None:
        def inflight() -> int:
            return sum(r.channel.inflight for r in replicas if r.channel is not None)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while inflight() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if inflight():
            log.warning(
                "%s/%s v%d: %d request(s) still in flight after the %.0f s drain; stopping",
                self.info.prefix,
                self.info.name,
                self.info.version,
                inflight(),
                timeout,
            )

    def _spec_for(self, replica: Replica) -> WorkerSpec:
        info, s = self.info, self.settings
        run = private_dir(s.run_dir)
        home = replica_home(s.workers_dir, info.version_id, replica.index)
        worker = home.name
        pod = f"{info.deployment}-{socket.gethostname()}-v{info.version_id}-{replica.index}"
        return WorkerSpec(
            socket_path=str(run / f"{worker}.sock"),
            version_dir=str(s.versions_dir / info.prefix / info.name / f"v{info.version}"),
            store_url=s.store_url,
            s3_endpoint_url=s.s3_endpoint_url,
            store_key=info.store_key,
            model_id=info.model_id,
            name=info.name,
            prefix=info.prefix,
            version=info.version,
            deployment=info.deployment,
            cache_dir=str(s.cache_dir),
            pod_name=pod,
            model_json=info.model_json,
            log_level=s.log_level,
            log_format=s.log_format,
            predict_timeout_s=self.limits.predict_timeout_s,
            memory_mb=self.limits.memory_mb,
            sandbox=s.worker_sandbox,
            hide_paths=control_plane_paths(s),
            work_dir=str(private_dir(home)),
        )

    async def _fetch(self, replica: Replica, spec_path: Path) -> bool:
        """Put the version's files in place in a process of our own (it holds the store's
        credentials; model code never runs there). False: the replica failed or we stop."""
        replica.state, replica.reason = "loading", "fetching model files"
        self._changed()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",  # never import from the working directory
            "-m",
            "modelhost.worker.fetch",
            str(spec_path),
            stdout=asyncio.subprocess.PIPE,
            cwd=self.settings.run_dir,
            start_new_session=True,  # only the gateway signals it
        )
        replica.proc = proc
        out, _ = await proc.communicate()
        if self._stopping or replica.proc is not proc:
            return False
        if proc.returncode != 0:
            lines = out.decode(errors="replace").strip().splitlines()
            reason = lines[-1] if lines else f"fetching model files exited with {proc.returncode}"
            self._on_state(replica, {"state": "failed", "reason": reason})
            return False
        return True

    async def _spawn(self, replica: Replica) -> bool:
        """Start the replica's worker; False when it could not (its state says why)."""
        if self.placement is not None:
            return await self._place(replica)
        spec = self._spec_for(replica)
        spec_path = Path(spec.socket_path).with_suffix(".json")
        spec.dump(spec_path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spec.socket_path)
        replica.pod = spec.pod_name
        try:
            env = worker_environ(
                os.environ, self.settings.worker_env_passthrough, spec.model_json, spec.work_dir
            )
        except ModelhostError as exc:
            self._on_state(replica, {"state": "failed", "reason": exc.message})
            return False
        if not await self._fetch(replica, spec_path):
            return False
        replica.state, replica.reason = "loading", "starting the worker"
        replica.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",
            "-m",
            "modelhost.worker",
            str(spec_path),
            env=env,
            cwd=spec.work_dir,
            start_new_session=True,  # a group signal to the gateway must not cut its streams
        )
        channel = WorkerChannel(
            spec.socket_path,
            # a late frame of a previous worker's channel must not change the new one's state
            lambda h: self._on_state(replica, h) if replica.channel is channel else None,
        )
        replica.channel = channel
        guard = MemoryGuard(replica.proc, spec.memory_mb, spec.pod_name, channel)  # memory.py
        asyncio.get_running_loop().create_task(self._watch(replica, replica.proc, guard))
        try:
            await channel.connect(timeout=60)
        except Exception as exc:
            self._on_state(replica, {"state": "failed", "reason": str(exc)})
        return True

    async def _place(self, replica: Replica) -> bool:
        """`_spawn` on a Ray cluster: the replica's actor (started, or attached to if it
        runs already) starts the worker on its node; the channel connects over TCP."""
        assert self.placement is not None
        name = actor_name(self.info.version_id, replica.index)
        spec = replace(self._spec_for(replica), pod_name=f"{self.info.deployment}-{name}")
        replica.pod = spec.pod_name
        replica.state, replica.reason = "loading", f"placing {name} on the Ray cluster"
        self._changed()
        try:
            remote = await self.placement.start(name, spec, self.limits)
        except ModelhostError as exc:
            self._on_state(replica, {"state": "failed", "reason": exc.message})
            return False
        if self._stopping or replica.retired:
            await remote.stop(self.settings.worker_stop_timeout_s)
            return False
        replica.remote = remote
        channel = self._remote_channel(replica, remote)
        asyncio.get_running_loop().create_task(self._watch_remote(replica, remote))
        try:
            await channel.connect(timeout=60)
        except Exception as exc:
            self._on_state(replica, {"state": "failed", "reason": str(exc)})
        return True

    def _remote_channel(self, replica: Replica, remote: RemoteWorker) -> WorkerChannel:
        """The replica's new channel to its worker; frames of an older one change nothing."""
        channel = WorkerChannel(
            remote.address,
            lambda h: self._on_state(replica, h) if replica.channel is channel else None,
        )
        replica.channel = channel
        return channel

    async def _reconnect(self, replica: Replica, remote: RemoteWorker) -> None:
        """Connect again to a Ray replica whose connection dropped (backoff from 0.1 s to
        `RECONNECT_MAX_DELAY_S`, for `worker_reconnect_s`): its worker reports its state on the new
        connection and the replica serves again. When no attempt succeeds, its actor is
        stopped; `_watch_remote` then restarts the replica as after any exit. Stops trying as
        soon as the replica is restarted, retired or the supervisor stops."""
        loop = asyncio.get_running_loop()
        patience = self.settings.worker_reconnect_s
        deadline = loop.time() + patience
        delay = 0.1

        def current() -> bool:
            return not (self._stopping or replica.retired) and (
                replica.remote is remote and replica.state == "crashed"
            )

        while current():
            await asyncio.sleep(delay)
            if not current():
                return
            channel = self._remote_channel(replica, remote)
            try:  # one attempt (a partition can hold a connect or a handshake for minutes)
                await asyncio.wait_for(channel.connect(timeout=0), max(1.0, deadline - loop.time()))
            except Exception as exc:
                log.info("worker %s: connecting again failed: %s", replica.pod, exc)
            else:
                log.warning("worker %s: connection lost and made again", replica.pod)
                return
            if loop.time() >= deadline:
                break
            delay = min(RECONNECT_MAX_DELAY_S, delay * 2)
        if current():
            log.error(
                "worker %s: its connection was lost and could not be made again in %.0f s; "
                "stopping its Ray actor to restart it",
                replica.pod,
                patience,
            )
            await remote.stop(self.settings.worker_stop_timeout_s)

    async def _watch_remote(self, replica: Replica, remote: RemoteWorker) -> None:
        ended = await remote.wait()
        if self._stopping or replica.retired or replica.remote is not remote:
            return
        if replica.channel is not None:
            replica.channel.close()  # a worker that went away but left the socket open
        await self._exited(replica, ended)

    def _on_state(self, replica: Replica, header: dict[str, Any]) -> None:
        if replica.retired:
            return  # scaled away: it only drains now
        state = header.get("state", "loading")
        if replica.state in ("failed", "restarting") and state == "crashed":
            return  # we stopped a failed worker ourselves, or its exit was seen first
        if state == "ready" and replica.state != "ready":
            replica.ready_since = asyncio.get_running_loop().time()
            replica.ever_ready = True
            replica.recovering = False
            self.idle = False
        replica.state = state
        replica.reason = header.get("reason", "")
        replica.hooks = header.get("hooks") or replica.hooks
        replica.pod = header.get("pod") or replica.pod
        self._update_ready()
        if state in ("ready", "failed"):
            self._settled.set()
        if state == "failed":
            asyncio.get_running_loop().create_task(self._terminate(replica))
        elif state == "crashed" and replica.remote is not None and not self._stopping:
            # the TCP connection to a Ray replica's worker is gone; its actor may still run
            asyncio.get_running_loop().create_task(self._reconnect(replica, replica.remote))
        self._changed()

    async def _watch(
        self, replica: Replica, proc: asyncio.subprocess.Process, guard: MemoryGuard
    ) -> None:
        code = await proc.wait()
        guard.stop()
        if self._stopping or replica.retired or replica.proc is not proc:
            return
        await self._exited(replica, guard.exceeded or exit_reason(code))

    async def _exited(self, replica: Replica, last_exit: str) -> None:
        """A replica's worker went away on its own: restart it if it once served."""
        now = asyncio.get_running_loop().time()
        if replica.ready_since and now - replica.ready_since >= HEALTHY_S:
            replica.streak = 0  # it was healthy: back to the shortest backoff
        replica.ready_since = 0.0
        replica.last_exit = last_exit
        failed = replica.state == "failed"  # it reported why (init raised) and we stopped it
        reason = replica.reason if failed else f"worker {replica.last_exit}"
        if not failed:
            log.error("worker %s %s", replica.pod, replica.last_exit)
        if not replica.ever_ready:  # never served: a broken model is not restarted in a loop
            if not failed:
                self._on_state(replica, {"state": "failed", "reason": reason})
            return
        await self._restart(replica, reason)

    async def _restart(self, replica: Replica, reason: str) -> None:
        """Restart a replica that once served, with a capped exponential backoff, until it
        runs again (or `worker_max_restarts` is reached)."""
        settings = self.settings
        while not (self._stopping or replica.retired):
            limit = settings.worker_max_restarts
            if limit and replica.restarts >= limit:
                replica.recovering = False
                why = f"{reason}; not restarted: restarted {limit} times already"
                self._on_state(
                    replica, {"state": "failed", "reason": f"{why} (worker_max_restarts)"}
                )
                return
            delay = min(
                settings.worker_restart_backoff_max_s,
                BACKOFF_START_S * 2 ** min(replica.streak, 16),
            )
            replica.streak += 1
            replica.restarts += 1
            replica.recovering = True
            replica.state = "restarting"
            replica.reason = f"{reason}; restart {replica.restarts} in {delay:.1f} s"
            self._update_ready()
            self._changed()
            await asyncio.sleep(delay)
            if self._stopping or replica.retired:
                return
            log.info("restarting worker %s (restart %d)", replica.pod, replica.restarts)
            if await self._spawn(replica):
                return  # from now on its _watch supervises it
            reason = replica.reason or "the restart failed"

    def _update_ready(self) -> None:
        ready = [r for r in self.replicas if r.state == "ready" and r.channel and not r.retired]
        self.ready_replicas = ready
        self.ready = [r.channel for r in ready if r.channel is not None]

    async def _terminate(self, replica: Replica) -> None:
        """SIGTERM (the worker finishes what it has and runs `cleanup`), SIGKILL after
        `worker_stop_timeout_s`; the socket is closed only once the process is gone."""
        if replica.remote is not None:
            await self._terminate_remote(replica, replica.remote)
            return
        proc = replica.proc
        try:
            if proc is None or proc.returncode is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), self.settings.worker_stop_timeout_s)
            except TimeoutError:
                log.warning("worker %s did not stop after SIGTERM: SIGKILL", replica.pod)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        finally:
            if replica.channel is not None and replica.proc is proc:
                replica.channel.close()

    async def _terminate_remote(self, replica: Replica, remote: RemoteWorker) -> None:
        """A Ray replica: stopped for good when its version or the replica goes; left
        running when only this gateway stops (the actors are the deployment's, not ours)."""
        try:
            if replica.retired or not self._stopping:
                await remote.stop(self.settings.worker_stop_timeout_s)
        finally:
            if replica.channel is not None and replica.remote is remote:
                replica.channel.close()

    def _changed(self) -> None:
        self._on_change(self)


USER_SECRETS = (
    ".modelhost-client",
    ".aws",
    ".ssh",
    ".netrc",
    ".pgpass",
    ".git-credentials",
    ".docker",
    ".kube",
    ".config/gcloud",
)


def exit_reason(code: int | None) -> str:
    """How a worker process ended, in words: "exited with code 3", "killed by SIGKILL"."""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with code {code}"


def private_dir(path: Path) -> Path:
    """A folder only the gateway's user may enter (0700, set explicitly, not by umask)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def control_plane_paths(s: Settings) -> list[str]:
    """What a worker's sandbox hides: MODELHOST_HOME (jwt.key, registry.db, sockets, other
    models' folders, the local store) and the registry and store wherever else they live."""
    paths = [s.home, s.home / "jwt.key", s.run_dir, s.versions_dir, s.home / "store"]
    if s.database_url.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        database = make_url(s.database_url).database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            db = Path(database).expanduser().absolute()
            paths += [db.parent, db, *(Path(f"{db}{x}") for x in ("-wal", "-shm", "-journal"))]
    store = urlsplit(s.store_url)
    if store.scheme == "file" and store.path:
        paths.append(Path(store.path))
    # Workers keep the gateway's uid: also hide its usual credential files (best effort).
    paths += [Path.home() / name for name in USER_SECRETS]
    return [str(p) for p in paths]


class Supervisor:
    """All running model versions of this gateway."""

    def __init__(self, settings: Settings, on_change: ChangeListener) -> None:
        private_dir(settings.home)
        self.settings = settings
        # Where workers run; an unknown MODELHOST_RUNTIME fails here, when the gateway starts.
        self.placement = placement_for(settings)
        self._on_change = on_change
        self.versions: dict[int, VersionWorkers] = {}

    async def stop_version(self, version_id: int) -> None:
        workers = self.versions.pop(version_id, None)
        if workers is not None:
            await workers.stop()

    async def shutdown(self, drain_s: float | None = None) -> None:
        """Every version drains (at most `drain_s`, default `drain_timeout_s`), then stops."""
        await asyncio.gather(*(w.stop(drain_s, reroute=False) for w in self.versions.values()))
        self.versions.clear()
