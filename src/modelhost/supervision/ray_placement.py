"""Replicas as Ray actors (MODELHOST_RUNTIME=ray): Ray decides where and how many run,
requests keep travelling on modelhost's own path (gateway -> framed TCP -> worker).

Each replica is a named actor, `mh-v<version id>-r<index>` in MODELHOST_RAY_NAMESPACE,
created with `get_if_exists`: a second gateway on the same registry (or this one after a
restart) attaches to the running replica instead of starting another. The actors are
detached: they belong to the deployment, not to the gateway that created them. A gateway
that stops leaves them serving (other gateways may route to them); retiring or deleting the
version, or scaling it down, kills them. Ray restarts an actor whose worker died, or whose
node was lost (`max_restarts`, from MODELHOST_WORKER_MAX_RESTARTS; 0 = forever), and the
gateway reconnects to the new one.

The deployment's limits become the actor's resources: `num_cpus` (default 1), `num_gpus`,
`memory_mb` (Ray's `memory`), `ray_resources` (custom resources, e.g. a node label) and
`placement` "spread" (Ray's SPREAD strategy: one replica per node as far as possible).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from modelhost.errors import ModelhostError
from modelhost.settings import Settings
from modelhost.supervision.replica_actor import ReplicaActor
from modelhost.wire.handshake import TcpAddress, load_cluster_secret, replica_key
from modelhost.wire.spec import WorkerSpec

if TYPE_CHECKING:
    from modelhost.supervision.supervisor import WorkerLimits

log = logging.getLogger("modelhost.ray")
RUNTIMES = ("local", "ray")
PLACEMENTS = (None, "", "pack", "spread")
# Environment variables the fetch step needs on the node: the object store's credentials.
STORE_ENV_PREFIXES = ("AWS_",)


def actor_name(version_id: int, index: int) -> str:
    return f"mh-v{version_id}-r{index}"


@dataclass
class RemoteWorker:
    """A replica's worker running in its Ray actor."""

    actor: Any
    name: str
    address: TcpAddress

    async def wait(self) -> str:
        """Until the worker is gone; how it ended, as a local worker's exit is told
        ("killed by SIGKILL", "exceeded its memory bound ...")."""
        try:
            return str(await self.actor.wait_exit.remote())
        except Exception as exc:  # RayActorError: the actor died (killed, its node lost)
            return f"ended with its Ray actor {self.name} ({type(exc).__name__})"

    async def metrics(self, timeout: float) -> list[Any]:
        """The worker's own prometheus_client metrics, merged on its node; [] when the actor
        does not answer within `timeout` (restarting, its node lost)."""
        try:
            return list(await asyncio.wait_for(self.actor.metrics.remote(), timeout))
        except Exception as exc:
            log.debug("replica %s's metrics: %s: %s", self.name, type(exc).__name__, exc)
            return []

    async def stop(self, timeout: float) -> None:
        """Stop the worker (SIGTERM, then SIGKILL after `timeout`), then the actor for good."""
        import ray

        try:
            await asyncio.wait_for(self.actor.stop.remote(timeout), timeout + 5)
        except Exception as exc:
            log.warning("stopping replica %s: %s", self.name, exc)
        ray.kill(self.actor, no_restart=True)


class RayPlacement:
    """Starts replicas as Ray actors, or attaches to running ones."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.secret = load_cluster_secret(settings.cluster_secret, settings.home)
        self._connected = False

    def _connect(self) -> Any:
        try:
            import ray
        except ImportError:
            raise ModelhostError(
                "MODELHOST_RUNTIME=ray needs Ray: pip install 'modelhost[ray]'"
            ) from None
        if not self._connected and not ray.is_initialized():
            s = self.settings
            # ray.init installs its own SIGTERM/SIGINT handlers (sys.exit): the gateway's
            # (uvicorn's graceful shutdown, the drain) stay in charge.
            handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
            ray.init(
                address=s.ray_address or None,
                namespace=s.ray_namespace,
                log_to_driver=False,
                configure_logging=False,
            )
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
            log.info(
                "connected to the Ray cluster at %s; replicas in namespace %s",
                s.ray_address or "(auto)",
                s.ray_namespace,
            )
        self._connected = True
        return ray

    def options(self, name: str, limits: WorkerLimits) -> dict[str, Any]:
        """The actor's Ray options from the deployment's limits."""
        s = self.settings
        if limits.placement not in PLACEMENTS:
            raise ModelhostError(
                f"placement {limits.placement!r}: use 'pack' (Ray's default) or 'spread'"
            )
        options: dict[str, Any] = {
            "name": name,
            "namespace": s.ray_namespace,
            "get_if_exists": True,
            "lifetime": "detached",
            "max_restarts": s.worker_max_restarts or -1,
            "max_concurrency": 4,  # address / wait_exit / stop while another call blocks
            "num_cpus": 1 if limits.num_cpus is None else limits.num_cpus,
        }
        if limits.num_gpus:
            options["num_gpus"] = limits.num_gpus
        if limits.memory_mb:
            options["memory"] = limits.memory_mb * 1024 * 1024
        if limits.ray_resources:
            options["resources"] = dict(limits.ray_resources)
        if limits.placement == "spread":
            options["scheduling_strategy"] = "SPREAD"
        env = {k: v for k, v in os.environ.items() if k.startswith(STORE_ENV_PREFIXES)}
        if env:
            options["runtime_env"] = {"env_vars": env}
        return options

    async def start(self, name: str, spec: WorkerSpec, limits: WorkerLimits) -> RemoteWorker:
        """The replica `name` running `spec`: attached to if it runs, else started. Raises
        ModelhostError naming why it could not start."""
        ray = self._connect()
        key = replica_key(self.secret, name)
        spec = replace(spec, key=key.hex())
        actor_class = ray.remote(ReplicaActor)
        for _attempt in (1, 2):
            options = self.options(name, limits)
            actor = actor_class.options(**options).remote(
                asdict(spec), self.settings.worker_env_passthrough, self.settings.worker_host
            )
            try:
                host, port, store_key = await asyncio.wait_for(
                    _address(ray, actor), self.settings.worker_start_timeout_s
                )
            except TimeoutError:
                ray.kill(actor, no_restart=True)
                raise ModelhostError(
                    f"replica {name} did not start within "
                    f"{self.settings.worker_start_timeout_s:g} s (MODELHOST_WORKER_START_TIMEOUT_S)"
                ) from None
            except ray.exceptions.RayTaskError as exc:
                ray.kill(actor, no_restart=True)
                raise ModelhostError(str(exc.cause) if exc.cause else str(exc)) from None
            except ray.exceptions.RayActorError as exc:
                raise ModelhostError(f"replica {name}'s Ray actor died: {exc}") from None
            if store_key == spec.store_key:
                return RemoteWorker(actor, name, TcpAddress(host, port, key))
            # An actor of that name runs another version's files (a registry reset, or
            # another registry on the same namespace): replace it.
            log.warning("replica %s runs other files (%s): replacing it", name, store_key)
            ray.kill(actor, no_restart=True)
            await _until_gone(ray, name, self.settings.ray_namespace)
        raise ModelhostError(f"replica {name}: could not replace the actor of that name")


async def _address(ray: Any, actor: Any) -> tuple[str, int, str]:
    """The actor's `address()`, asked again while Ray restarts the actor (a call made then
    fails with ActorUnavailableError instead of waiting for the new one)."""
    while True:
        try:
            return tuple(await actor.address.remote())
        except ray.exceptions.ActorUnavailableError:
            await asyncio.sleep(0.2)


async def _until_gone(ray: Any, name: str, namespace: str) -> None:
    for _ in range(200):
        try:
            ray.get_actor(name, namespace=namespace)
        except ValueError:
            return
        await asyncio.sleep(0.05)


_PLACEMENTS: dict[tuple[str, str, str], RayPlacement] = {}


def placement_for(settings: Settings) -> RayPlacement | None:
    """The placement of MODELHOST_RUNTIME: None for "local" (the supervisor's own child
    processes), one shared RayPlacement per cluster for "ray"."""
    if settings.runtime == "local":
        return None
    if settings.runtime != "ray":
        raise ModelhostError(f"MODELHOST_RUNTIME={settings.runtime!r}: use 'local' or 'ray'")
    key = (settings.ray_address, settings.ray_namespace, str(settings.home))
    placement = _PLACEMENTS.get(key)
    if placement is None:
        placement = _PLACEMENTS[key] = RayPlacement(settings)
    return placement
