"""`/metrics` families read from the supervisor's objects at scrape time, and a worker's
own prometheus_client metrics merged from its multiprocess folder."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from modelhost.gateway.metrics import metrics_registry, render
from modelhost.gateway.model_metrics import ModelMetricsCollector
from modelhost.gateway.routes import RouteTable
from modelhost.supervision.worker_env import (
    fresh_metrics_dir,
    merged_metrics,
    metrics_dir,
    remove_metrics_dir,
    replica_home,
)

Samples = dict[str, list[tuple[dict[str, str], float]]]


class _Routes(RouteTable):
    """The real route table's reading surface over plain entries."""

    def __init__(self, *entries: Any) -> None:
        super().__init__()
        self._plain = list(entries)

    def entries(self) -> list[Any]:  # type: ignore[override]
        return self._plain


def _replica(index: int, inflight: int = 0, restarts: int = 0, last_exit: str = "") -> Any:
    channel = SimpleNamespace(inflight=inflight)
    return SimpleNamespace(index=index, channel=channel, restarts=restarts, last_exit=last_exit)


def _version(version_id: int, state: str, *replicas: Any) -> Any:
    info = SimpleNamespace(version_id=version_id, version=version_id)
    return SimpleNamespace(info=info, state=state, replicas=list(replicas), ready=[])


def _entry(prefix: str, name: str, **versions: Any) -> Any:
    by_number = {int(k[1:]): v for k, v in versions.items()}
    return SimpleNamespace(
        prefix=prefix, name=name, versions=by_number, requests=0, errors=0, model_id=1
    )


def _scrape(routes: RouteTable, workers_dir: Path | None = None) -> Samples:
    models = ModelMetricsCollector(routes, workers_dir) if workers_dir is not None else None
    text = render(metrics_registry(routes, None, models)).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    found = [v for lab, v in samples.get(name, []) if labels == lab]
    return found[0] if found else None


def test_state_replicas_queue_depth_restarts_and_last_exit() -> None:
    v1 = _version(1, "stopped", _replica(0))
    v2 = _version(
        2, "ready", _replica(0, inflight=3, restarts=2, last_exit="killed by SIGKILL"), _replica(1)
    )
    v2.replicas[1].channel = None  # a replica still starting has no channel yet
    samples = _scrape(_Routes(_entry("p", "m", v1=v1, v2=v2)))
    two = {"prefix": "p", "model": "m", "version": "2"}
    assert _value(samples, "modelhost_version_state", **two, state="ready") == 1
    assert _value(samples, "modelhost_version_state", **two, state="loading") == 0
    assert (
        _value(
            samples, "modelhost_version_state", prefix="p", model="m", version="1", state="stopped"
        )
        == 1
    )
    assert _value(samples, "modelhost_replicas", **two) == 2
    assert _value(samples, "modelhost_queue_depth", **two) == 3
    assert _value(samples, "modelhost_worker_restarts_total", **two, replica="0") == 2
    assert _value(samples, "modelhost_worker_restarts_total", **two, replica="1") == 0
    exits = samples["modelhost_worker_last_exit_info"]
    assert exits == [({**two, "replica": "0", "reason": "killed by SIGKILL"}, 1.0)]


def test_a_version_missing_fields_does_not_break_the_scrape() -> None:
    """The supervisor's objects are read attribute by attribute, with defaults."""
    odd = SimpleNamespace(info=SimpleNamespace(version_id=5), state="draining")
    samples = _scrape(_Routes(_entry("p", "m", v5=odd)))
    five = {"prefix": "p", "model": "m", "version": "5"}
    assert _value(samples, "modelhost_version_state", **five, state="draining") == 1
    assert _value(samples, "modelhost_replicas", **five) == 0
    assert _value(samples, "modelhost_queue_depth", **five) == 0


_WORKER = """
import sys
from prometheus_client import Counter, Gauge, Histogram
Counter("hits", "Hits.", ["model"]).labels(model=sys.argv[1]).inc(int(sys.argv[2]))
Histogram("sizes", "Sizes.", buckets=(1, 10)).observe(5)
Gauge("busy", "Busy.", multiprocess_mode="livesum").set(4)
Counter("modelhost_requests", "Not the gateway's.").inc()
"""


def _worker_writes(folder: Path, label: str, hits: int) -> Any:
    """A real process in prometheus_client's multiprocess mode, as a worker runs; returns
    it, exited, as the supervisor's replica holds it (`pid`, `returncode`)."""
    env = {"PROMETHEUS_MULTIPROC_DIR": str(folder), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, label, str(hits)], env=env)
    assert proc.wait(60) == 0
    return proc


def test_worker_metrics_merged_with_model_labels(tmp_path: Path) -> None:
    procs = {}
    for version_id, index, hits in ((1, 0, 2), (1, 1, 3), (2, 0, 7)):
        folder = fresh_metrics_dir(replica_home(tmp_path, version_id, index))
        procs[version_id, index] = _worker_writes(folder, "own", hits)
    exited = _replica(0)
    exited.proc = procs[2, 0]  # this one's process has exited: its live gauges go
    routes = _Routes(
        _entry("p", "a", v1=_version(1, "ready", _replica(0), _replica(1))),
        _entry("p", "b", v2=_version(2, "ready", exited)),
    )
    samples = _scrape(routes, tmp_path)
    a0 = {"prefix": "p", "model": "a", "version": "1", "replica": "0"}
    a1 = {**a0, "replica": "1"}
    b0 = {"prefix": "p", "model": "b", "version": "2", "replica": "0"}
    # one family for both models; the model's own "model" label is kept as exported_model
    assert _value(samples, "hits_total", **a0, exported_model="own") == 2
    assert _value(samples, "hits_total", **a1, exported_model="own") == 3
    assert _value(samples, "hits_total", **b0, exported_model="own") == 7
    assert _value(samples, "sizes_bucket", **a0, le="10.0") == 1
    assert _value(samples, "sizes_count", **b0) == 1
    assert _value(samples, "busy", **a0) == 4
    assert _value(samples, "busy", **b0) is None
    # a worker may not speak for the gateway
    assert all(lab.get("replica") is None for lab, _ in samples["modelhost_requests_total"])


def test_stopped_versions_and_exited_workers(tmp_path: Path) -> None:
    _worker_writes(fresh_metrics_dir(replica_home(tmp_path, 1, 0)), "x", 1)
    stopped = _Routes(_entry("p", "a", v1=_version(1, "stopped", _replica(0))))
    assert "hits_total" not in _scrape(stopped, tmp_path)
    # a restart empties the folder: the new process counts afresh
    fresh_metrics_dir(replica_home(tmp_path, 1, 0))
    ready = _Routes(_entry("p", "a", v1=_version(1, "ready", _replica(0))))
    assert "hits_total" not in _scrape(ready, tmp_path)
    # a version stopped for good: the supervisor removes its replicas' folders
    remove_metrics_dir(replica_home(tmp_path, 1, 0))
    assert not (replica_home(tmp_path, 1, 0) / "prometheus").exists()


class _Actor:
    """A Ray replica's side as `ModelMetricsCollector` sees it (`RemoteWorker.metrics`): its
    worker's files merged where they are, on its node (here another folder), or nothing
    when its actor did not answer in time."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.asked: list[float] = []

    async def metrics(self, timeout: float) -> list[Any]:
        self.asked.append(timeout)
        return merged_metrics(self.folder) if self.folder is not None else []


def test_ray_replicas_metrics_come_from_their_actors(tmp_path: Path) -> None:
    node = tmp_path / "node-b"
    _worker_writes(fresh_metrics_dir(node / "w1-0"), "remote", 5)
    # a folder at the gateway's path for the same replica is not read: its files are the node's
    _worker_writes(fresh_metrics_dir(replica_home(tmp_path / "gw", 1, 0)), "stale", 9)
    _worker_writes(fresh_metrics_dir(replica_home(tmp_path / "gw", 2, 0)), "local", 3)
    on_node, silent = _replica(0), _replica(1)
    on_node.remote = _Actor(metrics_dir(node / "w1-0"))
    silent.remote = _Actor(None)
    routes = _Routes(
        _entry("p", "a", v1=_version(1, "ready", on_node, silent)),
        _entry("p", "b", v2=_version(2, "ready", _replica(0))),
    )
    models = ModelMetricsCollector(routes, tmp_path / "gw")
    asyncio.run(models.fetch_remote(timeout=1.5))
    assert on_node.remote.asked == [1.5] and silent.remote.asked == [1.5]
    text = render(metrics_registry(routes, None, models)).decode()
    hits = {
        (s.labels["model"], s.labels["replica"], s.labels["exported_model"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "hits_total"
    }
    assert hits == {("a", "0", "remote"): 5, ("b", "0", "local"): 3}
