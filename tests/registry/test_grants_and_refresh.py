"""Groups, grants and refresh-token families on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modelhost.errors import BadRequest, Conflict, NotFound
from modelhost.registry import Registry


def _setup(registry: Registry) -> tuple[int, int, int, int]:
    alice = registry.create_user("alice@example.com", "h").id
    bob = registry.create_user("bob@example.com", "h").id
    prefix = registry.create_prefix("team-a").id
    registry.create_deployment("d")
    model = registry.get_or_create_model("team-a", "m", "d").id
    return alice, bob, prefix, model


def test_groups_and_members(registry: Registry) -> None:
    alice, bob, _, _ = _setup(registry)
    group = registry.create_group("ds")
    with pytest.raises(Conflict):
        registry.create_group("ds")
    registry.add_group_member(group.id, alice)
    registry.add_group_member(group.id, alice)  # idempotent
    registry.add_group_member(group.id, bob)
    assert registry.get_group("ds").members == ("alice@example.com", "bob@example.com")  # type: ignore[union-attr]
    registry.remove_group_member(group.id, bob)
    assert [g.members for g in registry.list_groups()] == [("alice@example.com",)]
    with pytest.raises(NotFound):
        registry.remove_group_member(group.id, bob)
    with pytest.raises(NotFound):
        registry.add_group_member(group.id, 9999)


def test_grants_and_access_snapshot(registry: Registry) -> None:
    alice, bob, prefix, model = _setup(registry)
    group = registry.create_group("ds")
    registry.add_group_member(group.id, alice)
    by_group = registry.create_grant("use", group_id=group.id, prefix_id=prefix)
    by_user = registry.create_grant("deploy", user_id=bob, model_id=model)
    assert by_group.to_json() == {
        "id": by_group.id,
        "group": "ds",
        "user": None,
        "prefix": "team-a",
        "model_id": None,
        "permission": "use",
    }
    assert by_user.user_email == "bob@example.com"
    snap = registry.access_snapshot()
    assert snap.groups_of == {alice: frozenset({group.id})}
    assert {g.id for g in snap.grants} == {by_group.id, by_user.id}
    root = registry.create_user("root@example.com", "h", is_admin=True).id
    assert registry.access_snapshot().admin_ids == frozenset({root})
    registry.delete_grant(by_group.id)
    assert [g.id for g in registry.list_grants()] == [by_user.id]
    with pytest.raises(BadRequest):
        registry.create_grant("admin", user_id=bob, prefix_id=prefix)
    with pytest.raises(BadRequest):
        registry.create_grant("use", user_id=bob, group_id=group.id, prefix_id=prefix)
    with pytest.raises(BadRequest):
        registry.create_grant("use", user_id=bob)
    with pytest.raises(NotFound):
        registry.create_grant("use", user_id=bob, prefix_id=9999)


def test_refresh_family_rotation_and_reuse(registry: Registry) -> None:
    alice, _, _, _ = _setup(registry)
    later = datetime.now(UTC) + timedelta(days=1)
    registry.add_refresh_token("r1", "r1", alice, later)
    first = registry.use_refresh_token("r1")
    assert first is not None and not first.used and not first.revoked
    registry.add_refresh_token("r2", "r1", alice, later)
    # r1 presented again: it was used, so the family (r2 too) is revoked
    again = registry.use_refresh_token("r1")
    assert again is not None and again.used
    r2 = registry.use_refresh_token("r2")
    assert r2 is not None and r2.revoked
    assert registry.use_refresh_token("unknown") is None


def test_logout_revokes_the_family(registry: Registry) -> None:
    alice, _, _, _ = _setup(registry)
    later = datetime.now(UTC) + timedelta(days=1)
    registry.add_refresh_token("a1", "a1", alice, later)
    registry.add_refresh_token("b1", "b1", alice, later)  # another login stays valid
    assert registry.revoke_refresh_family("a1") is not None
    a1 = registry.use_refresh_token("a1")
    assert a1 is not None and a1.revoked
    b1 = registry.use_refresh_token("b1")
    assert b1 is not None and not b1.revoked and not b1.used
    assert registry.revoke_refresh_family("nope") is None


def test_snapshot_lists_revoked_and_expired_access_token_ids(registry: Registry) -> None:
    alice, _, prefix, _ = _setup(registry)
    live = registry.create_access_token("live", "h1", alice, prefix_id=prefix)
    revoked = registry.create_access_token("revoked", "h2", alice, prefix_id=prefix)
    expired = registry.create_access_token(
        "old", "h3", alice, prefix_id=prefix, expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    registry.revoke_access_token(revoked.id)
    ids = registry.revocation_snapshot().revoked_token_ids
    assert revoked.id in ids and expired.id in ids and live.id not in ids
