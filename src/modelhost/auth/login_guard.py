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
  forgotten. The counts live in the registry (`FailureStore`, the table `login_failures`):
  every gateway sharing it counts the same failures, so N gateways do not allow N times as
  many guesses. Times are wall-clock seconds, which gateways on several hosts share.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Protocol

from modelhost.auth.passwords import hash_password, verify_password
from modelhost.errors import TooManyRequests


class FailureStore(Protocol):
    """Where failed logins are counted (`registry.Registry`); blocking calls."""

    def login_locked_until(self, keys: Sequence[str]) -> float: ...

    def record_login_failures(
        self, keys: Mapping[str, Callable[[int], float]], now: float, window_s: float
    ) -> float: ...

    def clear_login_failures(self, key: str) -> None: ...


class LoginThrottle:
    def __init__(
        self,
        store: FailureStore,
        max_failures: int = 5,
        window_s: float = 900.0,
        base_lock_s: float = 1.0,
        max_lock_s: float = 900.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.max_failures = max_failures
        self.window_s = window_s
        self.base_lock_s = base_lock_s
        self.max_lock_s = max_lock_s
        self._clock = clock

    async def check(self, *keys: str) -> None:
        """Raise 429 when any key is locked now."""
        until = await asyncio.to_thread(self.store.login_locked_until, keys)
        wait = until - self._clock()
        if wait > 0:
            raise TooManyRequests(
                f"too many failed logins; try again in {wait:.0f} s", retry_after=wait
            )

    async def failed(self, keys: Mapping[str, int | None]) -> None:
        """Count a failed login against each key (its account, its address), in one write;
        a key's value: the failures it may have before it locks (None: `max_failures`)."""
        locks = {
            key: partial(self._lock_s, limit or self.max_failures) for key, limit in keys.items()
        }
        await asyncio.to_thread(
            self.store.record_login_failures, locks, self._clock(), self.window_s
        )

    def _lock_s(self, limit: int, count: int) -> float:
        """The lockout the `count`-th failure earns a key allowed `limit` failures."""
        over = count - limit
        if over < 0:
            return 0.0
        return min(self.max_lock_s, self.base_lock_s * 2 ** min(over, 60))

    async def succeeded(self, key: str) -> None:
        await asyncio.to_thread(self.store.clear_login_failures, key)


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
