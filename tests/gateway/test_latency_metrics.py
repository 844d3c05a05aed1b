"""The request-duration histogram: preallocated buckets, rendered at scrape time."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from modelhost.gateway.metrics import (
    LATENCY_BUCKETS,
    LatencyRecorder,
    metrics_registry,
    render,
)
from modelhost.gateway.routes import RouteTable


def _entry(model_id: int, prefix: str, name: str) -> Any:
    return SimpleNamespace(model_id=model_id, prefix=prefix, name=name)


def _workers(version: int) -> Any:
    return SimpleNamespace(info=SimpleNamespace(version=version))


def _samples(recorder: LatencyRecorder) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = render(metrics_registry(RouteTable(), recorder)).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_buckets_are_cumulative_and_labelled_by_status_class() -> None:
    recorder = LatencyRecorder()
    echo, v2 = _entry(1, "p/q", "echo"), _workers(2)
    recorder.observe(echo, v2, 200, 0.0005)
    recorder.observe(echo, v2, 201, 0.003)
    recorder.observe(echo, v2, 404, 0.003)
    recorder.observe(echo, v2, 200, 500.0)  # beyond the last bucket: +Inf only
    recorder.observe(None, None, 401, 0.001)  # no model matched: empty labels
    samples = _samples(recorder)
    ok = (("model", "echo"), ("prefix", "p/q"), ("status", "2xx"), ("version", "2"))
    name = "modelhost_request_duration_seconds"
    assert samples[(f"{name}_bucket", (("le", "0.001"), *ok))] == 1
    assert samples[(f"{name}_bucket", (("le", "0.005"), *ok))] == 2
    assert samples[(f"{name}_bucket", (("le", repr(LATENCY_BUCKETS[-1])), *ok))] == 2
    assert samples[(f"{name}_bucket", (("le", "+Inf"), *ok))] == 3
    assert samples[(f"{name}_count", ok)] == 3
    assert abs(samples[(f"{name}_sum", ok)] - 500.0035) < 1e-9
    client_errors = (("model", "echo"), ("prefix", "p/q"), ("status", "4xx"), ("version", "2"))
    assert samples[(f"{name}_count", client_errors)] == 1
    unmatched = (("model", ""), ("prefix", ""), ("status", "4xx"), ("version", ""))
    assert samples[(f"{name}_count", unmatched)] == 1


def test_an_observation_on_a_bucket_bound_counts_in_that_bucket() -> None:
    recorder = LatencyRecorder()
    recorder.observe(_entry(1, "p", "m"), _workers(1), 200, 0.005)
    samples = _samples(recorder)
    labels = (("model", "m"), ("prefix", "p"), ("status", "2xx"), ("version", "1"))
    bucket = "modelhost_request_duration_seconds_bucket"
    assert samples[(bucket, (("le", "0.0025"), *labels))] == 0
    assert samples[(bucket, (("le", "0.005"), *labels))] == 1


def test_series_are_bounded_by_models_versions_and_status_classes() -> None:
    recorder = LatencyRecorder()
    entry, workers = _entry(7, "p", "m"), _workers(1)
    for status in range(200, 600):
        recorder.observe(entry, workers, status, 0.01)
    assert len(recorder.series()) == 4  # 2xx, 3xx, 4xx, 5xx


def test_in_flight_gauge() -> None:
    recorder = LatencyRecorder()
    recorder.in_flight = 3
    assert _samples(recorder)[("modelhost_http_requests_in_flight", ())] == 3
