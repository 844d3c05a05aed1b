"""The workers' own Prometheus metrics in the gateway's `/metrics`.

Each worker runs with `PROMETHEUS_MULTIPROC_DIR` set to a folder in its HOME
(`supervision/worker_env.py`), so whatever prometheus_client metric its process makes (a
`Counter` in model.py, the LLM engine's `vllm:*` metrics from `llm/metrics.py`) is kept in
memory-mapped files there, with no server, port or frame of its own. At scrape time this
collector merges each replica's files (prometheus_client's `MultiProcessCollector.merge`)
and adds the labels `prefix`, `model`, `version` and `replica`; a label of the model's own
with one of those names is kept as `exported_<name>`. Families of the same name from several
models are rendered as one. Names starting `modelhost_` belong to the gateway and are not
taken from workers (but `modelhost_llm_*`, the worker's LLM service's).

A Ray replica's files are on its node (under its `MODELHOST_NODE_HOME`, or on another
machine): its actor merges them there (`ReplicaActor.metrics`), and the gateway asks every
Ray replica's actor for them, at once and with a timeout, before it renders (`fetch_remote`);
a replica that does not answer in time is left out of that scrape.

A worker's files are emptied when it starts (a restart counts afresh, like any restarted
process); the `live*` gauges of a worker that has exited are dropped (`mark_process_dead`).
Stopped versions are not rendered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import Metric
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from modelhost.supervision.worker_env import merged_metrics, metrics_dir, replica_home

if TYPE_CHECKING:
    from modelhost.gateway.routes import RouteTable

log = logging.getLogger("modelhost.metrics")
ADDED_LABELS = ("prefix", "model", "version", "replica")
# The gateway's own families; `modelhost_llm_*` are written by the worker's LLM service.
RESERVED_PREFIX = "modelhost_"
WORKER_PREFIX = "modelhost_llm_"
# How long a scrape waits for the Ray replicas' actors (asked all at once).
REMOTE_TIMEOUT_S = 2.0


class ModelMetricsCollector(Collector):
    def __init__(self, routes: RouteTable, workers_dir: Path) -> None:
        self.routes = routes
        self.workers_dir = workers_dir
        # What each Ray replica's actor answered at the last `fetch_remote`, by
        # (version id, replica index).
        self.remote: dict[tuple[int, int], list[Metric]] = {}

    async def fetch_remote(self, timeout: float = REMOTE_TIMEOUT_S) -> None:
        """Ask the actor of every Ray replica for its worker's metrics, all at once."""
        asked = [
            (key, remote)
            for key, _labels, replica in self._replicas()
            if (remote := getattr(replica, "remote", None)) is not None
        ]
        answers = await asyncio.gather(*(remote.metrics(timeout) for _key, remote in asked))
        self.remote = {key: answer for (key, _r), answer in zip(asked, answers, strict=True)}

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for key, labels, replica in self._replicas():
            if getattr(replica, "remote", None) is not None:
                merged = self.remote.get(key, [])
            else:
                folder = metrics_dir(replica_home(self.workers_dir, *key))
                if not folder.is_dir():
                    continue
                _forget_if_exited(replica, folder)
                merged = merged_metrics(folder)
            for metric in merged:
                _add(families, metric, labels)
        yield from families.values()

    def _replicas(self) -> Iterator[tuple[tuple[int, int], dict[str, str], Any]]:
        """((version id, index), labels, replica) of every replica of every version that is
        not stopped."""
        for entry in self.routes.entries():
            for number, workers in sorted(getattr(entry, "versions", {}).items()):
                if getattr(workers, "state", "") == "stopped":
                    continue
                version_id = getattr(getattr(workers, "info", None), "version_id", None)
                if version_id is None:
                    continue
                for position, replica in enumerate(getattr(workers, "replicas", ())):
                    index = getattr(replica, "index", position)
                    labels = {
                        "prefix": entry.prefix,
                        "model": entry.name,
                        "version": str(number),
                        "replica": str(index),
                    }
                    yield (version_id, index), labels, replica


def _forget_if_exited(replica: Any, folder: Path) -> None:
    """Drop the `live*` gauges of the replica's process once it has exited."""
    proc = getattr(replica, "proc", None)
    if proc is not None and getattr(proc, "returncode", None) is not None:
        mark_process_dead(proc.pid, str(folder))


def _add(families: dict[str, Metric], metric: Metric, labels: dict[str, str]) -> None:
    if metric.name.startswith(RESERVED_PREFIX) and not metric.name.startswith(WORKER_PREFIX):
        return
    family = families.get(metric.name)
    if family is None:
        family = families[metric.name] = Metric(metric.name, metric.documentation, metric.type)
    elif family.type != metric.type:
        log.debug(
            "metric %s is a %s and a %s: the latter dropped", metric.name, family.type, metric.type
        )
        return
    family.samples.extend(_labelled(metric.samples, labels))


def _labelled(samples: Iterable[Sample], added: dict[str, str]) -> Iterator[Sample]:
    for sample in samples:
        own = {(f"exported_{k}" if k in added else k): v for k, v in sample.labels.items()}
        yield sample._replace(labels={**own, **added})
