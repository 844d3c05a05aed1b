"""GrantIndex: who may use or deploy what."""

from __future__ import annotations

from datetime import UTC, datetime

from modelhost.auth.grants import GrantIndex, prefix_covers
from modelhost.registry.rows import AccessSnapshot, GrantRow

NOW = datetime.now(UTC)


def grant(
    gid: int,
    permission: str,
    *,
    group: int | None = None,
    user: int | None = None,
    prefix: str | None = None,
    model: int | None = None,
) -> GrantRow:
    return GrantRow(gid, group, None, user, None, prefix, model, permission, NOW)


def index() -> GrantIndex:
    return GrantIndex(
        AccessSnapshot(
            admin_ids=frozenset({1}),
            groups_of={2: frozenset({10}), 3: frozenset({11})},
            grants=(
                grant(1, "use", group=10, prefix="team-a"),
                grant(2, "deploy", user=3, prefix="team-b/sub"),
                grant(3, "use", user=4, model=77),
            ),
        )
    )


def test_prefix_covers_only_whole_segments() -> None:
    assert prefix_covers("a", "a") and prefix_covers("a", "a/b")
    assert not prefix_covers("a", "ab") and not prefix_covers("a/b", "a")


def test_admin_may_everything() -> None:
    assert index().allows(1, "anything", 5, "deploy")


def test_group_use_grant() -> None:
    idx = index()
    assert idx.allows(2, "team-a", 5, "use")
    assert idx.allows(2, "team-a/x", 5, "use")
    assert not idx.allows(2, "team-a", 5, "deploy")
    assert not idx.allows(2, "team-ab", 5, "use")
    assert not idx.allows(2, "team-b/sub", 5, "use")


def test_user_deploy_grant_implies_use_and_covers_new_models() -> None:
    idx = index()
    assert idx.allows(3, "team-b/sub", None, "deploy")
    assert idx.allows(3, "team-b/sub", 9, "use")
    assert not idx.allows(3, "team-b", None, "deploy")


def test_model_grant() -> None:
    idx = index()
    assert idx.allows(4, "whatever", 77, "use")
    assert not idx.allows(4, "whatever", 78, "use")
    assert not idx.allows(4, "whatever", None, "deploy")
    assert not idx.allows(99, "team-a", 5, "use")
