"""/metrics in Prometheus' format, rendered by prometheus-client at scrape time.

The hot path only increments plain integers on each route entry; this collector turns them
into counter families when Prometheus asks, so counting costs no lock and no label lookup.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from modelhost.gateway.routes import RouteTable


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
            for number, workers in e.versions.items():
                ready.add_metric([e.prefix, e.name, str(number)], len(workers.ready))
                busy += sum(c.inflight for c in workers.ready)
            inflight.add_metric([e.prefix, e.name], busy)
        yield from (requests, errors, ready, inflight)


def metrics_registry(routes: RouteTable) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouteCollector(routes))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
