"""What the versionless URL serves: pin, weights, newest ready (pure logic of
`ModelEntry.refresh` and `TrafficSplit`)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

from modelhost.gateway.routes import ModelEntry
from modelhost.gateway.traffic import SESSION_HEADER, TrafficSplit, session_key


def _workers(version: int, state: str = "ready") -> Any:
    return SimpleNamespace(info=SimpleNamespace(version=version), state=state)


def _entry(*versions: Any, **policy: Any) -> ModelEntry:
    entry = ModelEntry(1, "p", "m", "d", {w.info.version: w for w in versions}, **policy)
    entry.refresh()
    return entry


def test_without_weights_the_newest_ready_version_serves() -> None:
    entry = _entry(_workers(1), _workers(2), _workers(3, "loading"))
    assert entry.serving is not None and entry.serving.info.version == 2
    assert entry.split is None


def test_weights_split_among_ready_versions_with_weight() -> None:
    v1, v2, v3 = _workers(1), _workers(2), _workers(3)
    entry = _entry(v1, v2, v3, weighted=True, weights={1: 70, 2: 30, 3: 0})
    assert entry.split is not None and entry.serving is v1  # the heaviest, for meta
    assert entry.split.shares() == {1: 70, 2: 30}
    picks = Counter(entry.split.pick().info.version for _ in range(20_000))
    assert set(picks) == {1, 2}
    assert 0.67 < picks[1] / 20_000 < 0.73


def test_weighted_versions_not_ready_fall_back_to_newest_ready() -> None:
    entry = _entry(
        _workers(1, "loading"), _workers(2), _workers(3, "failed"), weighted=True, weights={1: 5}
    )
    assert entry.split is None
    assert entry.serving is not None and entry.serving.info.version == 2


def test_one_weighted_version_serves_alone() -> None:
    v1 = _workers(1)
    entry = _entry(v1, _workers(2), weighted=True, weights={1: 10, 2: 0})
    assert entry.split is None and entry.serving is v1


def test_a_pin_wins_once_the_pinned_version_is_ready() -> None:
    v1, v2 = _workers(1, "loading"), _workers(2)
    entry = _entry(v1, v2, pinned=1)
    assert entry.serving is v2  # what served before keeps serving while v1 loads
    v1.state = "ready"
    entry.refresh()
    assert entry.serving is v1 and entry.split is None


def test_session_keys_are_sticky_and_spread() -> None:
    v1, v2 = _workers(1), _workers(2)
    split = TrafficSplit([(v1, 50), (v2, 50)])
    for n in range(50):
        key = f"client-{n}".encode()
        assert len({split.pick(key).info.version for _ in range(20)}) == 1
    chosen = Counter(split.pick(f"client-{n}".encode()).info.version for n in range(2000))
    assert 800 < chosen[1] < 1200
    assert session_key([(b"a", b"1"), (SESSION_HEADER, b"k")]) == b"k"
    assert session_key([(b"a", b"1")]) is None


def test_refresh_bumps_the_generation() -> None:
    entry = _entry(_workers(1))
    before = entry.generation
    entry.refresh()
    assert entry.generation == before + 1
