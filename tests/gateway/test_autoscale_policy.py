"""The autoscaling decision (gateway/autoscale_policy.py): pure logic, no server."""

from __future__ import annotations

import pytest

from modelhost.gateway.autoscale_policy import (
    DEFAULT_SCALE_DOWN_DELAY_S,
    DEFAULT_TARGET_ONGOING_REQUESTS,
    Bounds,
    LoadWindow,
    bounds_of,
    decide,
    starting_replicas,
)
from modelhost.supervision.supervisor import WorkerLimits

BOUNDS = Bounds(min_replicas=1, max_replicas=3, target=1.0, delay_s=2.0)


def test_fixed_replicas_are_not_autoscaled() -> None:
    assert bounds_of(WorkerLimits()) is None
    assert bounds_of(WorkerLimits(min_replicas=2)) is None


def test_bounds_defaults_and_a_minimum_above_the_maximum() -> None:
    assert bounds_of(WorkerLimits(max_replicas=4)) == Bounds(
        1, 4, DEFAULT_TARGET_ONGOING_REQUESTS, DEFAULT_SCALE_DOWN_DELAY_S
    )
    zero = bounds_of(WorkerLimits(min_replicas=0, max_replicas=2, scale_down_delay_s=0))
    assert zero == Bounds(0, 2, DEFAULT_TARGET_ONGOING_REQUESTS, 0.0)
    assert bounds_of(WorkerLimits(min_replicas=5, max_replicas=3)) == Bounds(
        3, 3, DEFAULT_TARGET_ONGOING_REQUESTS, DEFAULT_SCALE_DOWN_DELAY_S
    )


@pytest.mark.parametrize(
    ("ongoing", "target", "desired"),
    [(0.0, 1.0, 1), (0.5, 1.0, 1), (1.0, 1.0, 1), (1.01, 1.0, 2), (2.0, 1.0, 2), (9.0, 1.0, 3)]
    + [(2.0000000001, 1.0, 2), (4.0, 2.0, 2), (5.0, 2.0, 3), (100.0, 0.5, 3)],
)
def test_desired_is_ongoing_over_target_within_bounds(
    ongoing: float, target: float, desired: int
) -> None:
    bounds = Bounds(1, 3, target, 2.0)
    assert decide(1, ongoing, bounds, None, now=10.0).desired == desired


def test_scales_up_at_once_to_the_desired_count() -> None:
    decision = decide(1, 2.6, BOUNDS, lower_since=None, now=0.0)
    assert (decision.desired, decision.replicas, decision.lower_since) == (3, 3, None)


def test_a_rise_forgets_a_pending_scale_down() -> None:
    assert decide(2, 2.0, BOUNDS, lower_since=5.0, now=6.0).lower_since is None


def test_scales_down_one_step_after_the_delay_only() -> None:
    first = decide(3, 0.2, BOUNDS, lower_since=None, now=100.0)
    assert (first.desired, first.replicas, first.lower_since) == (1, 3, 100.0)
    waiting = decide(3, 0.2, BOUNDS, first.lower_since, now=101.9)
    assert (waiting.replicas, waiting.lower_since) == (3, 100.0)
    step = decide(3, 0.2, BOUNDS, waiting.lower_since, now=102.0)
    assert (step.replicas, step.lower_since) == (2, None)
    # the next step waits a full delay again
    again = decide(2, 0.2, BOUNDS, step.lower_since, now=102.5)
    assert (again.replicas, again.lower_since) == (2, 102.5)
    assert decide(2, 0.2, BOUNDS, again.lower_since, now=104.5).replicas == 1
    assert decide(1, 0.0, BOUNDS, None, now=200.0).replicas == 1  # never below min_replicas


def test_scales_to_zero_only_when_nothing_was_in_flight() -> None:
    bounds = Bounds(0, 2, 1.0, 0.0)
    assert decide(1, 0.01, bounds, None, now=0.0).replicas == 1
    assert decide(1, 0.0, bounds, None, now=0.0).replicas == 0


def test_a_lowered_maximum_applies_at_once_and_a_raised_minimum_too() -> None:
    assert decide(5, 0.0, BOUNDS, None, now=0.0).replicas == 3
    assert decide(0, 0.0, Bounds(2, 4, 1.0, 30.0), None, now=0.0).replicas == 2


def test_load_window_averages_the_last_span() -> None:
    window = LoadWindow(span_s=2.0)
    assert window.average() == 0.0
    for t, value in [(0.0, 4.0), (1.0, 2.0), (1.5, 0.0)]:
        window.add(t, value)
    assert window.average() == pytest.approx(2.0)
    window.add(2.5, 0.0)  # the sample at 0.0 is older than the span now
    assert window.average() == pytest.approx(2 / 3)
    window.add(10.0, 1.0)
    assert window.average() == 1.0


def test_load_window_of_no_span_keeps_the_last_sample() -> None:
    window = LoadWindow(span_s=0.0)
    window.add(1.0, 3.0)
    window.add(1.0, 5.0)
    assert window.average() == 5.0


def test_a_version_starts_with_the_deployments_replicas_within_the_bounds() -> None:
    assert starting_replicas(5, WorkerLimits()) == 5  # not autoscaled
    assert starting_replicas(1, WorkerLimits(min_replicas=2, max_replicas=4)) == 2
    assert starting_replicas(6, WorkerLimits(min_replicas=2, max_replicas=4)) == 4
    assert starting_replicas(3, WorkerLimits(min_replicas=2, max_replicas=4)) == 3
    assert starting_replicas(1, WorkerLimits(min_replicas=0, max_replicas=4)) == 1
