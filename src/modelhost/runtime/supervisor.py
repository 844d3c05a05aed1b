"""Starts, watches and stops the worker processes of model versions.

Each model version runs in `replicas` worker processes of its own (the deployment decides how
many): a crash, a blocking `predict` or a failed `init` in one version never touches another,
and the gateway routes only to replicas that said they are ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelhost.runtime.channel import WorkerChannel
from modelhost.runtime.spec import WorkerSpec
from modelhost.settings import Settings

log = logging.getLogger("modelhost.supervisor")
MAX_RESTARTS = 5


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
    traffic_weight: int = 100


@dataclass
class Replica:
    index: int
    channel: WorkerChannel | None = None
    proc: asyncio.subprocess.Process | None = None
    state: str = "loading"
    reason: str = ""
    pod: str = ""
    hooks: list[str] = field(default_factory=list)
    restarts: int = 0


ChangeListener = Callable[["VersionWorkers"], None]


class VersionWorkers:
    """The replicas of one model version, as the gateway sees them."""

    def __init__(
        self, info: VersionInfo, replicas: int, settings: Settings, on_change: ChangeListener
    ) -> None:
        self.info = info
        self.settings = settings
        self.replicas = [Replica(i) for i in range(max(1, replicas))]
        self._on_change = on_change
        self._stopping = False
        self._settled = asyncio.Event()
        self._rr = 0
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
        return "loading"

    @property
    def reason(self) -> str:
        return next((r.reason for r in self.replicas if r.reason and r.state != "ready"), "")

    @property
    def hooks(self) -> list[str]:
        return next((r.hooks for r in self.replicas if r.hooks), [])

    @property
    def pod_name(self) -> str:
        return next((r.pod for r in self.replicas if r.pod), "")

    def pick(self) -> WorkerChannel | None:
        ready = self.ready
        if not ready:
            return None
        if len(ready) == 1:
            return ready[0]
        self._rr += 1
        return ready[self._rr % len(ready)]

    async def wait_settled(self, timeout: float) -> str:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout)
        return self.state

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn(r) for r in self.replicas))

    async def stop(self) -> None:
        self._stopping = True
        self.ready = []
        self._changed()
        await asyncio.gather(*(self._terminate(r) for r in self.replicas))

    def _spec_for(self, replica: Replica) -> WorkerSpec:
        info, s = self.info, self.settings
        run = s.run_dir
        run.mkdir(parents=True, exist_ok=True)
        pod = f"{info.deployment}-{socket.gethostname()}-v{info.version_id}-{replica.index}"
        return WorkerSpec(
            socket_path=str(run / f"w{info.version_id}-{replica.index}.sock"),
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
        )

    async def _spawn(self, replica: Replica) -> None:
        spec = self._spec_for(replica)
        spec_path = Path(spec.socket_path).with_suffix(".json")
        spec.dump(spec_path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spec.socket_path)
        replica.state, replica.reason, replica.pod = "loading", "starting the worker", spec.pod_name
        replica.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "modelhost.runtime.worker", str(spec_path)
        )
        channel = WorkerChannel(spec.socket_path, lambda h: self._on_state(replica, h))
        replica.channel = channel
        asyncio.get_running_loop().create_task(self._watch(replica, replica.proc))
        try:
            await channel.connect(timeout=60)
        except Exception as exc:
            self._on_state(replica, {"state": "failed", "reason": str(exc)})

    def _on_state(self, replica: Replica, header: dict[str, Any]) -> None:
        state = header.get("state", "loading")
        if replica.state == "failed" and state == "crashed":
            return  # we stopped a failed worker ourselves
        replica.state = state
        replica.reason = header.get("reason", "")
        replica.hooks = header.get("hooks") or replica.hooks
        replica.pod = header.get("pod") or replica.pod
        self.ready = [r.channel for r in self.replicas if r.state == "ready" and r.channel]
        if state in ("ready", "failed"):
            self._settled.set()
        if state == "failed":
            asyncio.get_running_loop().create_task(self._terminate(replica))
        self._changed()

    async def _watch(self, replica: Replica, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._stopping or replica.proc is not proc or replica.state == "failed":
            return
        was_ready = replica.state in ("ready", "crashed")
        log.error("worker %s exited with code %s", replica.pod, code)
        self._on_state(replica, {"state": "failed", "reason": f"worker exited with code {code}"})
        if was_ready and replica.restarts < MAX_RESTARTS:
            replica.restarts += 1
            await asyncio.sleep(min(30.0, 0.5 * 2**replica.restarts))
            if not self._stopping:
                log.info("restarting worker %s (restart %d)", replica.pod, replica.restarts)
                await self._spawn(replica)

    async def _terminate(self, replica: Replica) -> None:
        proc = replica.proc
        if replica.channel is not None:
            replica.channel.close()
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    def _changed(self) -> None:
        self._on_change(self)


class Supervisor:
    """All running model versions of this gateway."""

    def __init__(self, settings: Settings, on_change: ChangeListener) -> None:
        self.settings = settings
        self._on_change = on_change
        self.versions: dict[int, VersionWorkers] = {}

    async def stop_version(self, version_id: int) -> None:
        workers = self.versions.pop(version_id, None)
        if workers is not None:
            await workers.stop()

    async def shutdown(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.versions.values()))
        self.versions.clear()
