"""How long the decode loop holds the next step for requests that follow finished ones.

A client that sends its next request as soon as the last one ends (an agent, a pipeline, a
closed-loop benchmark) reaches the engine a few milliseconds after the step that finished
its request; the loop has started the next step by then, so the new request waits for the
one after it: a whole step (130 ms at 16 clients behind a 500-token system prompt) added to
its time to first token. After a step that finished requests while others still run, the
loop waits up to ``seconds`` for as many new requests as finished, so they join the next
step. A wait that catches nobody makes the next ones skipped (1, then 3, 7, up to 15
chances), so traffic that does not follow up pays at most one wait in 16 such steps.
"""

from __future__ import annotations

_MAX_SKIP = 15


class FollowerWait:
    def __init__(self, seconds: float) -> None:
        self.seconds = max(0.0, seconds)
        self._skip = 0
        self._misses = 0

    def budget(self) -> float:
        """Seconds to wait now (0: do not); each call is one chance."""
        if not self.seconds:
            return 0.0
        if self._skip:
            self._skip -= 1
            return 0.0
        return self.seconds

    def caught(self, arrived: int) -> None:
        """The wait just taken saw ``arrived`` new requests."""
        if arrived:
            self._misses = 0
            return
        self._misses += 1
        self._skip = min(_MAX_SKIP, 2**self._misses - 1)
