"""Login throttling and off-loop password checks (pure logic, a fake clock)."""

from __future__ import annotations

import asyncio

import pytest

from modelhost.auth.login_guard import LoginThrottle, PasswordChecker
from modelhost.auth.passwords import hash_password
from modelhost.errors import TooManyRequests


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lockout_starts_after_max_failures_and_doubles() -> None:
    clock = Clock()
    guard = LoginThrottle(max_failures=3, window_s=60, base_lock_s=1, max_lock_s=8, clock=clock)
    for _ in range(2):
        guard.failed("user:a")
        guard.check("user:a")  # below the threshold: no lock
    guard.failed("user:a")
    with pytest.raises(TooManyRequests) as exc:
        guard.check("user:a")
    assert exc.value.retry_after == pytest.approx(1)
    clock.now += 1.01
    guard.check("user:a")
    guard.failed("user:a")  # the 4th failure locks for 2 s
    with pytest.raises(TooManyRequests) as exc:
        guard.check("user:a")
    assert exc.value.retry_after == pytest.approx(2)
    for _ in range(10):
        guard.failed("user:a")
    with pytest.raises(TooManyRequests) as exc:
        guard.check("user:a")
    assert exc.value.retry_after == pytest.approx(8)  # capped


def test_other_keys_and_success_and_window() -> None:
    clock = Clock()
    guard = LoginThrottle(max_failures=1, window_s=60, clock=clock)
    guard.failed("user:a")
    with pytest.raises(TooManyRequests):
        guard.check("user:b", "user:a")  # any locked key blocks
    guard.check("user:b")
    guard.succeeded("user:a")
    guard.check("user:a")
    guard.failed("user:c", threshold=3)
    guard.check("user:c")
    clock.now += 61
    guard.failed("user:c", threshold=2)  # the old failure was forgotten
    guard.check("user:c")


def test_unknown_user_costs_a_hash_and_is_refused() -> None:
    async def run() -> tuple[bool, bool, bool]:
        checker = PasswordChecker()
        stored = hash_password("right-password")
        return (
            await checker.check(stored, "right-password"),
            await checker.check(stored, "wrong"),
            await checker.check(None, "right-password"),
        )

    assert asyncio.run(run()) == (True, False, False)


def test_hashing_never_holds_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A password check held blocked inside argon2 leaves the event loop free."""
    import threading

    from modelhost.auth import login_guard

    entered, release = threading.Event(), threading.Event()

    def blocked_verify(stored: str, password: str) -> bool:
        entered.set()
        release.wait(30)
        return False

    monkeypatch.setattr(login_guard, "verify_password", blocked_verify)

    async def run() -> int:
        checker = PasswordChecker()
        login = asyncio.create_task(checker.check("$argon2id$stored", "pw"))
        while not entered.is_set():
            await asyncio.sleep(0.001)
        turns = 0
        for _ in range(100):  # the loop keeps serving other work while the hash is held
            await asyncio.sleep(0)
            turns += 1
        assert not login.done()
        release.set()
        assert await login is False
        return turns

    assert asyncio.run(run()) == 100


def test_queue_is_bounded() -> None:
    async def run() -> None:
        checker = PasswordChecker(concurrency=1, max_waiting=2)
        stored = hash_password("pw")
        results = await asyncio.gather(
            *(checker.check(stored, "x") for _ in range(6)), return_exceptions=True
        )
        assert any(isinstance(r, TooManyRequests) for r in results)
        assert any(r is False for r in results)

    asyncio.run(run())
