"""The follower wait's policy alone: wait while waits catch requests, back off when not."""

from __future__ import annotations

from modelhost.llm.followers import FollowerWait


def _chances(policy: FollowerWait, n: int) -> list[bool]:
    """``n`` chances in which nobody follows: which ones waited."""
    waited = []
    for _ in range(n):
        took = policy.budget() > 0
        waited.append(took)
        if took:
            policy.caught(0)
    return waited


def test_waits_every_time_while_followers_come() -> None:
    policy = FollowerWait(0.02)
    for _ in range(5):
        assert policy.budget() == 0.02
        policy.caught(3)


def test_a_wait_that_catches_nobody_skips_more_chances_each_time_up_to_15() -> None:
    policy = FollowerWait(0.02)
    waited = _chances(policy, 47)
    positions = [i for i, took in enumerate(waited) if took]
    assert positions == [0, 2, 6, 14, 30, 46]


def test_one_catch_ends_the_back_off() -> None:
    policy = FollowerWait(0.02)
    _chances(policy, 7)  # waits at 0, 2, 6: now skipping 7
    while policy.budget() == 0:
        pass
    policy.caught(1)
    assert policy.budget() == 0.02


def test_zero_never_waits() -> None:
    policy = FollowerWait(0)
    assert not any(policy.budget() for _ in range(10))
