"""Registry writes announce themselves on PostgreSQL (registry/notices.py), in the writing
transaction: a committed change is announced once, a rolled-back one never, a gateway's own
state reports not at all."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from modelhost.registry import Registry
from modelhost.registry.notices import CHANNEL, Notice
from modelhost.registry.schema import Deployment


class Listener:
    def __init__(self, url: str) -> None:
        conninfo = make_url(url).set(drivername="postgresql").render_as_string(False)
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.conn.execute(f"LISTEN {CHANNEL}")

    def take(self, wait_s: float = 0.5) -> list[Notice]:
        """Every notice delivered within `wait_s` (a bound on waiting, not on the result:
        notices are delivered at commit, before the write call returns)."""
        out = []
        for raw in self.conn.notifies(timeout=wait_s):
            notice = Notice.parse(raw.payload)
            assert notice is not None, raw.payload
            out.append(notice)
        return out


@pytest.fixture
def registry(pg_url: str) -> Iterator[Registry]:
    with Registry(pg_url, sender="gw-a") as reg:
        reg.migrate()
        yield reg


@pytest.fixture
def listener(pg_url: str) -> Iterator[Listener]:
    listener = Listener(pg_url)
    yield listener
    listener.conn.close()


def kinds(notices: list[Notice]) -> list[tuple[str, int | None, str | None]]:
    return [(n.kind, n.id, n.key) for n in notices]


def test_model_changes_are_announced_once_with_sender_and_schema(
    registry: Registry, listener: Listener
) -> None:
    registry.ensure_prefix("p")
    registry.ensure_deployment("d")
    model = registry.get_or_create_model("p", "m", "d")
    listener.take()
    v1 = registry.create_version(model.id, "k1", {}, [])
    got = listener.take()
    assert kinds(got) == [("model", model.id, None)]
    assert got[0].sender == "gw-a" and got[0].db.startswith("mh_test_")

    registry.set_version_state(v1.id, "ready")  # a gateway's own report
    assert listener.take() == []

    registry.set_pinned_version(model.id, 1)
    assert kinds(listener.take()) == [("model", model.id, None)]
    registry.create_version(model.id, "k2", {}, [])
    registry.set_traffic_weights(model.id, {1: 30, 2: 70})
    assert kinds(listener.take()) == [("model", model.id, None)] * 2
    registry.delete_version(v1.id)
    assert kinds(listener.take()) == [("model", model.id, None)]


def test_deployment_and_auth_changes(registry: Registry, listener: Listener) -> None:
    registry.ensure_deployment("d")
    user = registry.create_user("u@example.com", "hash")
    listener.take()
    registry.update_deployment("d", replicas=3)
    assert kinds(listener.take()) == [("deployment", None, "d")]
    registry.set_user_active(user.id, False)
    assert kinds(listener.take()) == [("auth", None, None)]
    registry.revoke_jti("jti-1", datetime.now(UTC) + timedelta(hours=1))
    assert kinds(listener.take()) == [("auth", None, None)]


def test_a_rolled_back_write_announces_nothing(registry: Registry, listener: Listener) -> None:
    registry.ensure_deployment("d")
    listener.take()
    with pytest.raises(RuntimeError), registry._write.begin() as session:
        row = session.scalar(select(Deployment).where(Deployment.key == "d"))
        assert row is not None
        row.replicas = 5
        session.flush()  # announced inside the transaction...
        raise RuntimeError("...which then rolls back")
    assert listener.take() == []
    assert registry.get_deployment("d").replicas == 1  # type: ignore[union-attr]


def test_sqlite_registries_send_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Registry(f"sqlite:///{tmp_path / 'r.db'}", sender="gw") as reg:
        reg.migrate()
        reg.ensure_deployment("d")
        reg.update_deployment("d", replicas=2)  # no pg_notify on SQLite: no error either
        assert reg.get_deployment("d").replicas == 2  # type: ignore[union-attr]
