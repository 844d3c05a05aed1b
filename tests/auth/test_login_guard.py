"""Login throttling (counted in a real registry, SQLite and PostgreSQL, with a settable
clock) and off-loop password checks."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text

from modelhost.auth.login_guard import LoginThrottle, PasswordChecker
from modelhost.auth.passwords import hash_password
from modelhost.errors import TooManyRequests
from modelhost.registry import Registry


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty registry database on each backend (where the counts live)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        url = str(request.getfixturevalue("pg_url"))
    with Registry(url) as registry:
        registry.migrate()
    return url


@pytest.fixture
def registry(database_url: str) -> Iterator[Registry]:
    with Registry(database_url) as reg:
        yield reg


def _locked(guard: LoginThrottle, *keys: str) -> float | None:
    """The Retry-After a login with these keys gets now; None when it may go on."""
    try:
        asyncio.run(guard.check(*keys))
    except TooManyRequests as exc:
        return exc.retry_after
    return None


def _fail(guard: LoginThrottle, key: str, times: int = 1, threshold: int | None = None) -> None:
    for _ in range(times):
        asyncio.run(guard.failed({key: threshold}))


def test_lockout_starts_after_max_failures_and_doubles(registry: Registry) -> None:
    clock = Clock()
    guard = LoginThrottle(
        registry, max_failures=3, window_s=60, base_lock_s=1, max_lock_s=8, clock=clock
    )
    for _ in range(2):
        _fail(guard, "user:a")
        assert _locked(guard, "user:a") is None  # below the threshold: no lock
    _fail(guard, "user:a")
    assert _locked(guard, "user:a") == pytest.approx(1)
    clock.now += 1.01
    assert _locked(guard, "user:a") is None
    _fail(guard, "user:a")  # the 4th failure locks for 2 s
    assert _locked(guard, "user:a") == pytest.approx(2)
    _fail(guard, "user:a", 10)
    assert _locked(guard, "user:a") == pytest.approx(8)  # capped


def test_other_keys_and_success_and_window(registry: Registry) -> None:
    clock = Clock()
    guard = LoginThrottle(registry, max_failures=1, window_s=60, clock=clock)
    _fail(guard, "user:a")
    assert _locked(guard, "user:b", "user:a") is not None  # any locked key blocks
    assert _locked(guard, "user:b") is None
    asyncio.run(guard.succeeded("user:a"))
    assert _locked(guard, "user:a") is None
    _fail(guard, "user:c", threshold=3)
    assert _locked(guard, "user:c") is None
    clock.now += 61
    _fail(guard, "user:c", threshold=2)  # the old failure was forgotten
    assert _locked(guard, "user:c") is None


def test_gateways_sharing_a_registry_count_the_same_failures(database_url: str) -> None:
    """Two gateways (each its own registry connection): 3 failures on one and 2 on the other
    lock the account on both at 5; a success on either clears it for both."""
    clock = Clock()
    with Registry(database_url) as one, Registry(database_url) as two:
        first = LoginThrottle(one, max_failures=5, window_s=60, clock=clock)
        second = LoginThrottle(two, max_failures=5, window_s=60, clock=clock)
        _fail(first, "user:shared", 3)
        _fail(second, "user:shared", 1)
        assert _locked(first, "user:shared") is None
        _fail(second, "user:shared", 1)
        assert _locked(first, "user:shared") == pytest.approx(1)
        assert _locked(second, "user:shared") == pytest.approx(1)
        clock.now += 2
        asyncio.run(second.succeeded("user:shared"))
        _fail(first, "user:shared", 4)
        assert _locked(first, "user:shared") is None  # counting started again


def test_failures_at_the_same_moment_are_all_counted(database_url: str) -> None:
    """Four gateways fail one key 10 times each at once: the count is 40 (no lost update).
    The lock here is `count` seconds, so the lockout's end shows the final count."""
    now = 1_800_000_000.0
    registries = [Registry(database_url) for _ in range(4)]
    try:

        def fail_ten(registry: Registry) -> None:
            for _ in range(10):
                registry.record_login_failures({"user:raced": float}, now, 60.0)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(fail_ten, registries))
        assert registries[0].login_locked_until(["user:raced"]) == now + 40
    finally:
        for registry in registries:
            registry.close()


def test_a_failure_counts_against_its_account_and_its_address_together(
    database_url: str,
) -> None:
    """One write per failed login for both keys. Four gateways fail the same two keys 10
    times each at once, half naming them in the other order: nobody deadlocks (the rows are
    locked in key order) and each key counts 40; the answer is the later lockout."""
    now = 1_800_000_000.0
    registries = [Registry(database_url) for _ in range(4)]
    try:

        def fail_ten(index: int) -> float:
            keys = ["user:both", "ip:10.0.0.9"]
            if index % 2:
                keys.reverse()
            locks = {keys[0]: float, keys[1]: float}
            until = 0.0
            for _ in range(10):
                until = registries[index].record_login_failures(locks, now, 60.0)
            return until

        with ThreadPoolExecutor(4) as pool:
            assert max(pool.map(fail_ten, range(4))) == now + 40
        for key in ("user:both", "ip:10.0.0.9"):
            assert registries[0].login_locked_until([key]) == now + 40
        until = registries[0].record_login_failures(
            {"ip:new": lambda count: 5.0, "user:both": float}, now, 60.0
        )
        assert until == now + 41  # the later of the two lockouts (the 41st failure's)
        assert registries[0].login_locked_until(["ip:new"]) == now + 5
    finally:
        for registry in registries:
            registry.close()


def test_a_success_after_no_failure_writes_nothing(tmp_path: Path) -> None:
    """Most logins follow no failure: clearing their count must not wait for the write lock
    (on SQLite another writer holding it would stall every login). With a count, it does."""
    path = tmp_path / "registry.db"
    with Registry(f"sqlite:///{path}") as registry:
        registry.migrate()
        registry.record_login_failures({"user:had": lambda count: 0.0}, 1_800_000_000.0, 60.0)
        writer = sqlite3.connect(path, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")  # another gateway's write transaction
        try:
            with ThreadPoolExecutor(1) as pool:
                clean = pool.submit(registry.clear_login_failures, "user:never")
                clean.result(timeout=10)  # answered while the lock is held
                had = pool.submit(registry.clear_login_failures, "user:had")
                assert not had.done()  # this one deletes: it waits for the lock
                writer.execute("COMMIT")
                had.result(timeout=30)
        finally:
            writer.close()
        assert registry.login_locked_until(["user:had"]) == 0.0
        with registry.engine.connect() as connection:
            left = connection.execute(text("SELECT count(*) FROM login_failures")).scalar()
            assert left == 0


def test_old_counts_are_purged_from_the_registry(registry: Registry) -> None:
    now = 1_800_000_000.0
    registry.record_login_failures({"user:old": lambda count: 0.0}, now, 60.0)
    registry.record_login_failures({"user:locked": lambda count: 3600.0}, now, 60.0)
    registry._next_login_purge = 0.0  # the purge runs at most once a minute
    registry.record_login_failures({"user:new": lambda count: 0.0}, now + 120, 60.0)
    with registry.engine.connect() as connection:
        keys = connection.execute(text("SELECT key FROM login_failures ORDER BY key"))
        assert [row[0] for row in keys] == ["user:locked", "user:new"]


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
