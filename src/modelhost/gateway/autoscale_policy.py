"""How many replicas a version should run, from its recent load: the pure part of autoscaling.

Ray Serve's rule: desired = ceil(average requests in flight / target per replica), within
the deployment's bounds. More replicas start at once; fewer only once the desired count has
stayed lower for `scale_down_delay_s`, and then one replica at a time (each further step
waits a full delay again), so a short lull does not stop replicas that the next burst needs,
and a drain finishes before the next one starts. `gateway/autoscale.py` runs it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from modelhost.supervision.supervisor import WorkerLimits

DEFAULT_MIN_REPLICAS = 1
DEFAULT_TARGET_ONGOING_REQUESTS = 2.0
DEFAULT_SCALE_DOWN_DELAY_S = 30.0
# 2.0000001 requests over a target of 1 is 2 replicas, not 3
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Bounds:
    """A deployment's autoscaling settings, defaults filled in."""

    min_replicas: int
    max_replicas: int
    target: float  # requests in flight per replica
    delay_s: float  # scale-down delay


def bounds_of(limits: WorkerLimits) -> Bounds | None:
    """The autoscaling bounds of a deployment, None when it has a fixed `replicas` (no
    `max_replicas`). A minimum above the maximum (each set by a separate call) is the
    maximum."""
    if limits.max_replicas is None:
        return None
    high = limits.max_replicas
    low = DEFAULT_MIN_REPLICAS if limits.min_replicas is None else limits.min_replicas
    target = limits.target_ongoing_requests or DEFAULT_TARGET_ONGOING_REQUESTS
    delay = limits.scale_down_delay_s
    return Bounds(
        min(low, high), high, target, DEFAULT_SCALE_DOWN_DELAY_S if delay is None else delay
    )


def starting_replicas(replicas: int, limits: WorkerLimits) -> int:
    """A version's replicas when it starts: the deployment's `replicas`, within its
    autoscaling bounds, and at least one (a deploy shows that the model loads)."""
    bounds = bounds_of(limits)
    if bounds is None:
        return replicas
    return max(1, bounds.min_replicas, min(bounds.max_replicas, replicas))


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int  # what the load asks for, within the bounds
    replicas: int  # what to run from now on
    lower_since: float | None  # when the desired count went below the current one, or None


def decide(
    current: int, ongoing: float, bounds: Bounds, lower_since: float | None, now: float
) -> Decision:
    """The replicas to run now, given `current` ones, `ongoing` requests in flight on
    average, and since when (if at all) fewer were wanted."""
    wanted = math.ceil(ongoing / bounds.target - _EPSILON) if ongoing > 0 else 0
    desired = max(bounds.min_replicas, min(bounds.max_replicas, wanted))
    if desired > current:
        return Decision(desired, desired, None)  # up at once
    if current > bounds.max_replicas:
        return Decision(desired, bounds.max_replicas, None)  # the bound was lowered: at once
    if desired == current:
        return Decision(desired, current, None)
    since = now if lower_since is None else lower_since
    if now - since >= bounds.delay_s:
        return Decision(desired, current - 1, None)  # one step; the next waits a delay again
    return Decision(desired, current, since)


class LoadWindow:
    """Samples of requests in flight over the last `span_s` seconds, and their average."""

    def __init__(self, span_s: float) -> None:
        self.span_s = span_s
        self._samples: deque[tuple[float, float]] = deque()
        self._sum = 0.0

    def add(self, now: float, value: float) -> None:
        self._samples.append((now, value))
        self._sum += value
        while len(self._samples) > 1 and self._samples[0][0] <= now - self.span_s:
            self._sum -= self._samples.popleft()[1]

    def average(self) -> float:
        if not self._samples:
            return 0.0
        return max(0.0, self._sum / len(self._samples))
