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

A worker's files are emptied when it starts (a restart counts afresh, like any restarted
process); the `live*` gauges of a worker that has exited are dropped (`mark_process_dead`).
Stopped versions are not rendered.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from modelhost.supervision.worker_env import metrics_dir, replica_home

if TYPE_CHECKING:
    from modelhost.gateway.routes import RouteTable

log = logging.getLogger("modelhost.metrics")
ADDED_LABELS = ("prefix", "model", "version", "replica")
# The gateway's own families; `modelhost_llm_*` are written by the worker's LLM service.
RESERVED_PREFIX = "modelhost_"
WORKER_PREFIX = "modelhost_llm_"


class ModelMetricsCollector(Collector):
    def __init__(self, routes: RouteTable, workers_dir: Path) -> None:
        self.routes = routes
        self.workers_dir = workers_dir

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for labels, folder in self._replica_dirs():
            files = glob.glob(os.path.join(folder, "*.db"))
            if not files:
                continue
            try:
                merged = MultiProcessCollector.merge(files, accumulate=True)
            except Exception as exc:  # a file being replaced as we read: next scrape
                log.debug("could not read the metrics in %s: %s", folder, exc)
                continue
            for metric in merged:
                _add(families, metric, labels)
        yield from families.values()

    def _replica_dirs(self) -> Iterator[tuple[dict[str, str], str]]:
        """(labels, folder) of every replica of every version that is not stopped."""
        for entry in self.routes.entries():
            for number, workers in sorted(getattr(entry, "versions", {}).items()):
                if getattr(workers, "state", "") == "stopped":
                    continue
                version_id = getattr(getattr(workers, "info", None), "version_id", None)
                if version_id is None:
                    continue
                for position, replica in enumerate(getattr(workers, "replicas", ())):
                    index = getattr(replica, "index", position)
                    folder = metrics_dir(replica_home(self.workers_dir, version_id, index))
                    if not folder.is_dir():
                        continue
                    _forget_if_exited(replica, folder)
                    labels = {
                        "prefix": entry.prefix,
                        "model": entry.name,
                        "version": str(number),
                        "replica": str(index),
                    }
                    yield labels, str(folder)


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
