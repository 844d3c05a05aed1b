"""Password checks that never hold the event loop, and throttling of failed logins.

- argon2 verification takes tens of milliseconds of CPU; it runs in a worker thread (argon2
  releases the GIL), on at most half the cores at a time, with a bounded queue: a login storm
  waits or gets 429, model requests keep flowing.
- An unknown email is checked against a dummy hash, so it costs the same as a known one and
  answer times do not tell which accounts exist.
- Failures are counted per account and per client address. Past `max_failures` each further
  failure locks the key for twice as long as the last (from `base_lock_s`, capped at
  `max_lock_s`); a locked key gets 429 with Retry-After without any hashing. A success
  clears the account's count. Counts older than `window_s` since the last failure are
  forgotten. State is per gateway process (in memory).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from modelhost.auth.passwords import hash_password, verify_password
from modelhost.errors import TooManyRequests

_MAX_KEYS = 100_000


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    locked_until: float = 0.0


class LoginThrottle:
    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 900.0,
        base_lock_s: float = 1.0,
        max_lock_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.base_lock_s = base_lock_s
        self.max_lock_s = max_lock_s
        self._clock = clock
        self._keys: dict[str, _Failures] = {}

    def check(self, *keys: str) -> None:
        """Raise 429 when any key is locked now."""
        now = self._clock()
        states = [self._keys.get(k) for k in keys]
        wait = max((s.locked_until - now for s in states if s is not None), default=0.0)
        if wait > 0:
            raise TooManyRequests(
                f"too many failed logins; try again in {wait:.0f} s", retry_after=wait
            )

    def failed(self, key: str, threshold: int | None = None) -> None:
        now = self._clock()
        state = self._state(key, now)
        state.count += 1
        state.last = now
        over = state.count - (threshold or self.max_failures)
        if over >= 0:
            lock = min(self.max_lock_s, self.base_lock_s * 2**over)
            state.locked_until = now + lock

    def succeeded(self, key: str) -> None:
        self._keys.pop(key, None)

    def _state(self, key: str, now: float) -> _Failures:
        state = self._keys.get(key)
        if state is None or (now - state.last > self.window_s and now >= state.locked_until):
            if len(self._keys) >= _MAX_KEYS:
                self._prune(now)
            state = self._keys[key] = _Failures()
        return state

    def _prune(self, now: float) -> None:
        stale = [
            k
            for k, s in self._keys.items()
            if now - s.last > self.window_s and now >= s.locked_until
        ]
        for key in stale or list(self._keys)[: _MAX_KEYS // 10]:
            del self._keys[key]


class PasswordChecker:
    """argon2 verification off the event loop, bounded, with equal cost for unknown users."""

    def __init__(self, concurrency: int | None = None, max_waiting: int = 64) -> None:
        # Half the cores at most: the other half keeps serving models during a login storm.
        slots = concurrency or max(1, min(4, (os.cpu_count() or 2) // 2))
        self._slots = asyncio.Semaphore(slots)
        self._max_waiting = max_waiting
        self._waiting = 0
        self._dummy: str | None = None

    async def check(self, password_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; ``password_hash`` None means an unknown user."""
        if self._waiting >= self._max_waiting:
            raise TooManyRequests("too many logins in progress; try again shortly", 1.0)
        self._waiting += 1
        try:
            async with self._slots:
                target = password_hash or await self._dummy_hash()
                ok = await asyncio.to_thread(verify_password, target, password)
        finally:
            self._waiting -= 1
        return ok and password_hash is not None

    async def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = await asyncio.to_thread(hash_password, secrets.token_urlsafe(16))
        return self._dummy
