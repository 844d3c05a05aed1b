"""/metrics in Prometheus' format, rendered by prometheus-client at scrape time.

The hot path only increments plain integers on each route entry, and files each request's
duration into a preallocated bucket list (`LatencyRecorder.observe`: one dict lookup, one
bisect, two additions); the collectors turn them into counter, gauge and histogram families
when Prometheus asks, so observing costs no lock and no label lookup. (prometheus-client's
own `Histogram.labels(...).observe` takes a lock and builds the label key per call: several
times the cost, on every request.)

Versions and workers (state, replicas, queue depth, restarts, last exit) are read from the
supervisor's objects when Prometheus asks (`VersionCollector`); the workers' own metrics
(a model's prometheus_client metrics, the LLM engine's `vllm:*`) come from their
multiprocess files (`model_metrics.py`). The list of families is in docs/architecture.md.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from modelhost.gateway.model_metrics import ModelMetricsCollector
    from modelhost.gateway.routes import ModelEntry, RouteTable
    from modelhost.supervision.supervisor import VersionWorkers

# Upper bounds (seconds) of the request-duration buckets: from a sub-millisecond echo to a
# long LLM stream. `+Inf` is implied.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
_LE = [repr(b) for b in LATENCY_BUCKETS] + ["+Inf"]


class _Series:
    """One histogram series: a count per bucket (the last is +Inf, not cumulative) and
    the sum of the observed seconds."""

    __slots__ = ("counts", "labels", "total")

    def __init__(self, labels: list[str]) -> None:
        self.labels = labels
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0


class LatencyRecorder:
    """Request durations by prefix, model, version and status class (`2xx`, `4xx`, `5xx`).

    Label values come from the route table, never from the request, so the number of series
    is bounded by models x loaded versions x status classes; requests that match no model
    (or fail before one is known) share the series with empty prefix and model.
    """

    def __init__(self) -> None:
        self._series: dict[tuple[int, int, int], _Series] = {}
        self.in_flight = 0  # model-route requests being handled by this gateway

    def observe(
        self,
        entry: ModelEntry | None,
        workers: VersionWorkers | None,
        status: int,
        seconds: float,
    ) -> None:
        version = workers.info.version if workers is not None else 0
        key = (entry.model_id if entry is not None else 0, version, status // 100)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(
                [
                    entry.prefix if entry is not None else "",
                    entry.name if entry is not None else "",
                    str(version) if version else "",
                    f"{status // 100}xx",
                ]
            )
        series.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        series.total += seconds

    def series(self) -> list[_Series]:
        return list(self._series.values())


class LatencyCollector(Collector):
    def __init__(self, recorder: LatencyRecorder) -> None:
        self.recorder = recorder

    def collect(self) -> Iterator[Metric]:
        histogram = HistogramMetricFamily(
            "modelhost_request_duration_seconds",
            "Model requests by prefix, model, version and status class: seconds from the "
            "request's arrival to the end of its response (the last chunk for streams).",
            labels=["prefix", "model", "version", "status"],
        )
        for series in self.recorder.series():
            cumulative = 0
            buckets = []
            for le, count in zip(_LE, series.counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            histogram.add_metric(series.labels, buckets, series.total)
        in_flight = GaugeMetricFamily(
            "modelhost_http_requests_in_flight",
            "Model-route HTTP requests being handled by the gateway (reading the body, at a "
            "worker, or streaming the answer).",
            value=self.recorder.in_flight,
        )
        yield from (histogram, in_flight)


class RouteCollector(Collector):
    def __init__(self, routes: RouteTable) -> None:
        self.routes = routes

    def collect(self) -> Iterator[Metric]:
        labels = ["prefix", "model"]
        requests = CounterMetricFamily(
            "modelhost_requests", "Model requests received by the gateway.", labels=labels
        )
        errors = CounterMetricFamily(
            "modelhost_request_errors", "Model requests answered with an error.", labels=labels
        )
        ready = GaugeMetricFamily(
            "modelhost_ready_replicas",
            "Worker replicas ready to serve.",
            labels=[*labels, "version"],
        )
        inflight = GaugeMetricFamily(
            "modelhost_inflight_requests",
            "Requests sent to workers and not yet answered.",
            labels=labels,
        )
        for e in self.routes.entries():
            requests.add_metric([e.prefix, e.name], e.requests)
            errors.add_metric([e.prefix, e.name], e.errors)
            busy = 0
            for number, workers in getattr(e, "versions", {}).items():
                channels = getattr(workers, "ready", ())
                ready.add_metric([e.prefix, e.name, str(number)], len(channels))
                busy += sum(getattr(c, "inflight", 0) for c in channels)
            inflight.add_metric([e.prefix, e.name], busy)
        yield from (requests, errors, ready, inflight)


VERSION_STATES = ("loading", "ready", "failed", "stopped")


class VersionCollector(Collector):
    """Per version: state, replicas, queue depth; per replica: restarts and last exit.

    Read at scrape time from the supervisor's objects, attribute by attribute with
    defaults: they are the supervisor's, and a field it drops must not break `/metrics`.
    """

    def __init__(self, routes: RouteTable) -> None:
        self.routes = routes

    def collect(self) -> Iterator[Metric]:
        labels = ["prefix", "model", "version"]
        per_replica = [*labels, "replica"]
        state = GaugeMetricFamily(
            "modelhost_version_state",
            "1 for the state each loaded version is in (loading, ready, failed, stopped), "
            "0 for the others.",
            labels=[*labels, "state"],
        )
        replicas = GaugeMetricFamily(
            "modelhost_replicas", "Worker replicas of the version (any state).", labels=labels
        )
        queue = GaugeMetricFamily(
            "modelhost_queue_depth",
            "Requests sent to the version's workers and not answered yet (running in the "
            "worker or waiting there for a slot).",
            labels=labels,
        )
        restarts = CounterMetricFamily(
            "modelhost_worker_restarts",
            "Restarts of the replica's worker process since the server started.",
            labels=per_replica,
        )
        last_exit = GaugeMetricFamily(
            "modelhost_worker_last_exit_info",
            "How the replica's last worker process ended (1, with the reason as a label).",
            labels=[*per_replica, "reason"],
        )
        for values, workers in _versions(self.routes):
            current = str(getattr(workers, "state", ""))
            for name in dict.fromkeys((*VERSION_STATES, current)):
                if name:
                    state.add_metric([*values, name], 1.0 if name == current else 0.0)
            members = list(getattr(workers, "replicas", ()))
            replicas.add_metric(values, len(members))
            queue.add_metric(values, sum(_inflight(r) for r in members))
            for position, replica in enumerate(members):
                index = str(getattr(replica, "index", position))
                restarts.add_metric([*values, index], getattr(replica, "restarts", 0))
                reason = getattr(replica, "last_exit", "")
                if reason:
                    last_exit.add_metric([*values, index, str(reason)], 1.0)
        yield from (state, replicas, queue, restarts, last_exit)


def _versions(routes: RouteTable) -> Iterator[tuple[list[str], VersionWorkers]]:
    for entry in routes.entries():
        for number, workers in sorted(getattr(entry, "versions", {}).items()):
            yield [entry.prefix, entry.name, str(number)], workers


def _inflight(replica: object) -> int:
    channel = getattr(replica, "channel", None)
    return int(getattr(channel, "inflight", 0) or 0) if channel is not None else 0


def metrics_registry(
    routes: RouteTable,
    latency: LatencyRecorder | None = None,
    models: ModelMetricsCollector | None = None,
) -> CollectorRegistry:
    """The gateway's collectors; with `models`, also the workers' own metrics
    (`model_metrics.py`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouteCollector(routes))
    registry.register(VersionCollector(routes))
    if latency is not None:
        registry.register(LatencyCollector(latency))
    if models is not None:
        registry.register(models)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
