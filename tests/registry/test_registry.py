"""Behaviour of `modelhost.registry.Registry` on SQLite and PostgreSQL (see conftest.py)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select

from modelhost.errors import BadRequest, Conflict, NotFound
from modelhost.registry import ModelRow, Registry, VersionState
from modelhost.registry.repo import MIGRATIONS_DIR
from modelhost.registry.schema import Base, RevokedJti


def _model(registry: Registry, name: str = "churn") -> ModelRow:
    registry.ensure_prefix("models/marketing")
    registry.ensure_deployment("cpu")
    return registry.get_or_create_model("models/marketing", name, "cpu")


def _aware_utc(value: datetime) -> bool:
    return value.tzinfo is not None and value.utcoffset() == timedelta(0)


# -- migrations ------------------------------------------------------------------------


def test_migrate_twice_is_idempotent(database_url: str) -> None:
    with Registry(database_url) as registry:
        registry.migrate()
        registry.create_prefix("kept")
        registry.migrate()
        with registry.engine.connect() as connection:
            head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
            assert head is not None and head >= "0004"  # the newest file, not a stale one
            assert MigrationContext.configure(connection).get_current_revision() == head
        assert [p.key for p in registry.list_prefixes()] == ["kept"]


def test_migrations_match_schema(registry: Registry) -> None:
    with registry.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


# -- users -----------------------------------------------------------------------------


def test_users(registry: Registry) -> None:
    assert registry.count_users() == 0
    admin = registry.create_user("Admin@Example.com", "hash-1", is_admin=True)
    user = registry.create_user("user@example.com", "hash-2")
    assert admin.email == "admin@example.com"
    assert admin.is_admin and admin.is_active and not user.is_admin
    assert _aware_utc(admin.created_at)
    assert "hash-1" not in repr(admin)
    assert registry.count_users() == 2
    assert registry.get_user(admin.id) == admin
    assert registry.get_user(999_999) is None
    assert registry.get_user_by_email("ADMIN@example.com") == admin
    assert registry.get_user_by_email("nobody@example.com") is None

    disabled = registry.set_user_active(user.id, False)
    assert not disabled.is_active
    assert registry.get_user(user.id) == disabled
    assert registry.set_user_active(user.id, True).is_active

    with pytest.raises(Conflict, match="already exists"):
        registry.create_user("admin@example.com", "other")
    with pytest.raises(NotFound):
        registry.set_user_active(999_999, False)


# -- prefixes and deployments ----------------------------------------------------------


def test_prefixes(registry: Registry) -> None:
    llm = registry.create_prefix("llm-models", "chat models")
    assert llm.description == "chat models" and _aware_utc(llm.created_at)
    with pytest.raises(Conflict, match="llm-models"):
        registry.create_prefix("llm-models")
    nested = registry.ensure_prefix("models/marketing")
    assert registry.ensure_prefix("models/marketing") == nested
    assert registry.ensure_prefix("llm-models") == llm
    assert registry.get_prefix("llm-models") == llm
    assert registry.get_prefix("missing") is None
    assert [p.key for p in registry.list_prefixes()] == ["llm-models", "models/marketing"]


def test_deployments(registry: Registry) -> None:
    gpu = registry.create_deployment("gpu", replicas=2)
    assert gpu.replicas == 2
    with pytest.raises(Conflict, match="gpu"):
        registry.create_deployment("gpu")
    cpu = registry.ensure_deployment("cpu")
    assert cpu.replicas == 1
    assert registry.ensure_deployment("cpu") == cpu
    assert registry.ensure_deployment("cpu", replicas=3).replicas == 3
    assert registry.set_replicas("gpu", 4).replicas == 4
    assert registry.get_deployment("gpu") == registry.set_replicas("gpu", 4)
    assert registry.get_deployment("missing") is None
    assert [(d.key, d.replicas) for d in registry.list_deployments()] == [("cpu", 3), ("gpu", 4)]
    with pytest.raises(NotFound, match="modelhost admin deployment create missing"):
        registry.set_replicas("missing", 1)
    with pytest.raises(BadRequest):
        registry.set_replicas("gpu", -1)
    with pytest.raises(BadRequest):
        registry.create_deployment("neg", replicas=-1)


# -- models ----------------------------------------------------------------------------


def test_model_needs_existing_parents(registry: Registry) -> None:
    with pytest.raises(NotFound) as missing_prefix:
        registry.get_or_create_model("nope", "m", "cpu")
    assert "prefix 'nope' does not exist" in missing_prefix.value.message
    assert "modelhost admin prefix create nope" in missing_prefix.value.message
    registry.create_prefix("nope")
    with pytest.raises(NotFound) as missing_deployment:
        registry.get_or_create_model("nope", "m", "cpu")
    assert missing_deployment.value.message == (
        "deployment 'cpu' does not exist; create it with `modelhost admin deployment create cpu`"
    )
    assert registry.list_models() == []


def test_models(registry: Registry) -> None:
    model = _model(registry)
    assert model.prefix_key == "models/marketing" and model.name == "churn"
    assert model.deployment_key == "cpu" and model.path == "models/marketing/churn"
    assert _aware_utc(model.created_at)
    assert _model(registry) == model

    registry.create_deployment("gpu")
    moved = registry.get_or_create_model("models/marketing", "churn", "gpu")
    assert moved.id == model.id and moved.deployment_key == "gpu"
    assert moved.deployment_id != model.deployment_id

    other = registry.get_or_create_model("models/marketing", "ads", "cpu")
    registry.create_prefix("llm-models")
    same_name = registry.get_or_create_model("llm-models", "churn", "cpu")
    assert len({model.id, other.id, same_name.id}) == 3

    assert registry.get_model("models/marketing", "churn") == moved
    assert registry.get_model("models/marketing", "nope") is None
    assert registry.get_model("nope", "churn") is None
    assert registry.get_model_by_id(other.id) == other
    assert registry.get_model_by_id(999_999) is None
    assert [m.path for m in registry.list_models()] == [
        "llm-models/churn",
        "models/marketing/ads",
        "models/marketing/churn",
    ]


# -- versions --------------------------------------------------------------------------


def test_versions(registry: Registry) -> None:
    model = _model(registry)
    first = registry.create_version(model.id, "models/1", {"name": "churn"}, ["predict"])
    second = registry.create_version(model.id, "models/2", {"nested": {"a": [1]}}, [])
    assert (first.version, second.version) == (1, 2)
    assert first.state == "pending" and VersionState(first.state) is VersionState.PENDING
    assert first.traffic_weight == 100 and first.error is None
    assert first.model_json == {"name": "churn"} and first.hooks == ("predict",)
    assert second.model_json == {"nested": {"a": [1]}} and second.hooks == ()
    assert _aware_utc(first.created_at)

    assert registry.get_version(model.id, 2) == second
    assert registry.get_version(model.id, 3) is None
    assert registry.get_version_by_id(first.id) == first
    assert registry.list_versions(model.id) == [first, second]
    assert registry.list_versions(999_999) == []

    failed = registry.set_version_state(first.id, "failed", error="ImportError: torch")
    assert failed.state == "failed" and failed.error == "ImportError: torch"
    ready = registry.set_version_state(first.id, VersionState.READY)
    assert ready.state == "ready" and ready.error is None
    assert registry.set_traffic_weight(second.id, 0).traffic_weight == 0
    assert registry.get_version(model.id, 2) == registry.get_version_by_id(second.id)

    with pytest.raises(BadRequest, match="unknown version state"):
        registry.set_version_state(first.id, "running")
    with pytest.raises(BadRequest):
        registry.set_traffic_weight(first.id, -5)
    with pytest.raises(NotFound):
        registry.set_version_state(999_999, "ready")
    with pytest.raises(NotFound):
        registry.set_traffic_weight(999_999, 10)
    with pytest.raises(NotFound, match="model id 999999"):
        registry.create_version(999_999, "k", {}, [])


def test_version_numbers_are_per_model(registry: Registry) -> None:
    churn = _model(registry, "churn")
    ads = _model(registry, "ads")
    assert registry.create_version(churn.id, "a", {}, []).version == 1
    assert registry.create_version(ads.id, "b", {}, []).version == 1
    assert registry.create_version(churn.id, "c", {}, []).version == 2


def test_list_active_versions(registry: Registry) -> None:
    registry.create_deployment("gpu", replicas=3)
    churn = _model(registry)
    registry.create_prefix("llm-models")
    llm = registry.get_or_create_model("llm-models", "qwen", "gpu")
    v1 = registry.create_version(churn.id, "a", {}, [])
    v2 = registry.create_version(churn.id, "b", {}, [])
    v3 = registry.create_version(llm.id, "c", {}, [])
    registry.set_version_state(v1.id, "stopped")
    registry.set_version_state(v3.id, "failed", error="boom")

    active = registry.list_active_versions()
    assert [(a.model.path, a.version.version, a.replicas) for a in active] == [
        ("models/marketing/churn", 2, 1),
        ("llm-models/qwen", 1, 3),
    ]
    assert active[0].version == v2 and active[0].model == churn
    assert active[1].version.error == "boom" and active[1].model.deployment_key == "gpu"


def test_concurrent_versions_have_no_gaps_or_duplicates(registry: Registry) -> None:
    model = _model(registry)
    threads = 8
    barrier = threading.Barrier(threads)
    numbers: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def deploy(i: int) -> None:
        try:
            barrier.wait()
            row = registry.create_version(model.id, f"store/{i}", {"i": i}, [])
            with lock:
                numbers.append(row.version)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    workers = [threading.Thread(target=deploy, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert errors == []
    assert sorted(numbers) == list(range(1, threads + 1))
    assert [v.version for v in registry.list_versions(model.id)] == list(range(1, threads + 1))


# -- tokens and revocation -------------------------------------------------------------


def test_access_tokens(registry: Registry) -> None:
    user = registry.create_user("u@example.com", "h")
    model = _model(registry)
    prefix = registry.get_prefix("models/marketing")
    assert prefix is not None
    later = datetime.now(timezone(timedelta(hours=2))) + timedelta(hours=1)

    scoped = registry.create_access_token(
        "ci", "a" * 64, user.id, prefix_id=prefix.id, expires_at=later
    )
    assert scoped.prefix_id == prefix.id and scoped.prefix_key == "models/marketing"
    assert scoped.model_id is None and not scoped.revoked
    assert scoped.expires_at == later and scoped.expires_at is not None
    assert _aware_utc(scoped.expires_at) and _aware_utc(scoped.created_at)
    assert "a" * 64 not in repr(scoped)
    assert scoped.is_usable(datetime.now(UTC))
    assert not scoped.is_usable(later + timedelta(seconds=1))

    by_model = registry.create_access_token("m", "b" * 64, user.id, model_id=model.id)
    assert by_model.model_id == model.id and by_model.prefix_key is None
    assert by_model.expires_at is None and by_model.is_usable(datetime.now(UTC))

    assert registry.get_access_token("a" * 64) == scoped
    assert registry.get_access_token("c" * 64) is None

    revoked = registry.revoke_access_token(scoped.id)
    assert revoked.revoked and not revoked.is_usable(datetime.now(UTC))
    assert registry.revoke_access_token(scoped.id) == revoked
    assert registry.get_access_token("a" * 64) == revoked

    with pytest.raises(Conflict):
        registry.create_access_token("dup", "a" * 64, user.id)
    with pytest.raises(NotFound, match="user id"):
        registry.create_access_token("x", "d" * 64, 999_999)
    with pytest.raises(NotFound, match="prefix id"):
        registry.create_access_token("x", "d" * 64, user.id, prefix_id=999_999)
    with pytest.raises(NotFound, match="model id"):
        registry.create_access_token("x", "d" * 64, user.id, model_id=999_999)
    with pytest.raises(NotFound):
        registry.revoke_access_token(999_999)
    with pytest.raises(ValueError, match="timezone-aware"):
        registry.create_access_token("x", "d" * 64, user.id, expires_at=datetime(2030, 1, 1))


def test_revocation_snapshot(registry: Registry) -> None:
    empty = registry.revocation_snapshot()
    assert empty.revoked_jtis == frozenset() and empty.inactive_user_ids == frozenset()
    assert empty.revoked_token_hashes == frozenset()

    now = datetime.now(UTC)
    active = registry.create_user("active@example.com", "h")
    gone = registry.create_user("gone@example.com", "h")
    registry.set_user_active(gone.id, False)
    kept = registry.create_access_token("kept", "1" * 64, active.id)
    dropped = registry.create_access_token("dropped", "2" * 64, active.id)
    registry.revoke_access_token(dropped.id)
    registry.revoke_jti("live", now + timedelta(hours=1))
    registry.revoke_jti("live", now + timedelta(minutes=1))  # never shortens a revocation
    registry.revoke_jti("expired", now - timedelta(seconds=1))
    with pytest.raises(ValueError):
        registry.revoke_jti("naive", datetime(2030, 1, 1))

    registry._next_purge = 0.0  # let this poll purge, whatever earlier polls did
    snapshot = registry.revocation_snapshot()
    assert snapshot.revoked_jtis == frozenset({"live"})
    assert snapshot.inactive_user_ids == frozenset({gone.id})
    assert snapshot.revoked_token_hashes == frozenset({dropped.token_hash})
    assert kept.token_hash not in snapshot.revoked_token_hashes

    with registry.engine.connect() as connection:
        rows = connection.execute(select(RevokedJti.jti, RevokedJti.expires_at)).all()
        assert [jti for jti, _ in rows] == ["live"]
        count = connection.execute(select(func.count()).select_from(RevokedJti)).scalar_one()
        assert count == 1

    # An expired jti stays out of the snapshot even between purges.
    registry.revoke_jti("expired-again", now - timedelta(seconds=1))
    assert "expired-again" not in registry.revocation_snapshot().revoked_jtis


# -- audit -----------------------------------------------------------------------------


def test_audit(registry: Registry) -> None:
    assert registry.list_audit() == []
    first = registry.audit("admin@example.com", "deploy", {"model": "churn", "version": 1})
    for i in range(4):
        registry.audit("cli", "token.create", {"i": i})
    assert first.detail == {"model": "churn", "version": 1} and _aware_utc(first.ts)
    events = registry.list_audit()
    assert len(events) == 5 and events[-1] == first
    assert [e.detail.get("i") for e in registry.list_audit(limit=2)] == [3, 2]
