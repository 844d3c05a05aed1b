"""ORM tables of the registry.

`migrations/versions/*.py` must describe exactly this metadata; a test runs alembic's
autogenerate comparison against a migrated database to keep the two from drifting.
Each class converts itself to the frozen row of `rows.py` with ``to_row()``, the only way
data leaves a session. Constraint names come from the naming convention so SQLite and
PostgreSQL agree on them and future migrations can drop them by name.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from modelhost.registry.rows import (
    AccessTokenRow,
    AuditEventRow,
    DeploymentRow,
    GrantRow,
    GroupRow,
    ModelRow,
    PrefixRow,
    RefreshTokenRow,
    UserRow,
    VersionRow,
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    SQLite has no timezone type and returns naive values; storing UTC everywhere and
    re-attaching the zone on read keeps comparisons (``expires_at < now``) correct on both
    backends and keeps the lexical order of SQLite's text timestamps chronological.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the registry; use a timezone-aware one")
        value = value.astimezone(UTC)
        # SQLite's storage format has no zone field; drop it after converting to UTC.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class JSONText(TypeDecorator[Any]):
    """JSON stored as plain TEXT, so both backends hold byte-identical documents."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else json.dumps(value, separators=(",", ":"))

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        return None if value is None else json.loads(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def to_row(self) -> UserRow:
        return UserRow(
            id=self.id,
            email=self.email,
            password_hash=self.password_hash,
            is_admin=self.is_admin,
            is_active=self.is_active,
            created_at=self.created_at,
        )


class Prefix(Base):
    __tablename__ = "prefixes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def to_row(self) -> PrefixRow:
        return PrefixRow(
            id=self.id, key=self.key, description=self.description, created_at=self.created_at
        )


class Deployment(Base):
    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    replicas: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # None = the server's setting (MODELHOST_PREDICT_TIMEOUT_S, MODELHOST_MAX_QUEUE, none).
    predict_timeout_s: Mapped[float | None] = mapped_column(Float)
    max_queue: Mapped[int | None] = mapped_column(Integer)
    memory_mb: Mapped[int | None] = mapped_column(Integer)
    min_replicas: Mapped[int | None] = mapped_column(Integer)
    max_replicas: Mapped[int | None] = mapped_column(Integer)
    target_ongoing_requests: Mapped[float | None] = mapped_column(Float)
    scale_down_delay_s: Mapped[float | None] = mapped_column(Float)
    num_cpus: Mapped[float | None] = mapped_column(Float)
    num_gpus: Mapped[float | None] = mapped_column(Float)
    ray_resources: Mapped[dict[str, float] | None] = mapped_column(JSON)
    placement: Mapped[str | None] = mapped_column(String(16))

    def to_row(self) -> DeploymentRow:
        return DeploymentRow(
            id=self.id,
            key=self.key,
            replicas=self.replicas,
            created_at=self.created_at,
            predict_timeout_s=self.predict_timeout_s,
            max_queue=self.max_queue,
            memory_mb=self.memory_mb,
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            target_ongoing_requests=self.target_ongoing_requests,
            scale_down_delay_s=self.scale_down_delay_s,
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            ray_resources=dict(self.ray_resources) if self.ray_resources else None,
            placement=self.placement,
        )


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("prefix_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prefix_id: Mapped[int] = mapped_column(ForeignKey("prefixes.id"))
    name: Mapped[str] = mapped_column(String(255))
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Traffic of the versionless URL: a pinned version serves alone; else, when `weighted`,
    # ready versions share it by their traffic_weight; else the newest ready one serves.
    pinned_version: Mapped[int | None] = mapped_column(Integer)
    weighted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    # Always joined: every ModelRow carries the prefix and deployment keys.
    prefix: Mapped[Prefix] = relationship(lazy="joined", innerjoin=True)
    deployment: Mapped[Deployment] = relationship(lazy="joined", innerjoin=True)

    def to_row(self) -> ModelRow:
        return ModelRow(
            id=self.id,
            prefix_id=self.prefix_id,
            prefix_key=self.prefix.key,
            name=self.name,
            deployment_id=self.deployment_id,
            deployment_key=self.deployment.key,
            created_at=self.created_at,
            pinned_version=self.pinned_version,
            weighted=self.weighted,
        )


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    traffic_weight: Mapped[int] = mapped_column(Integer, default=100)
    store_key: Mapped[str] = mapped_column(String(1024))
    model_json: Mapped[dict[str, Any]] = mapped_column(JSONText)
    hooks: Mapped[list[str]] = mapped_column(JSONText)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def to_row(self) -> VersionRow:
        return VersionRow(
            id=self.id,
            model_id=self.model_id,
            version=self.version,
            state=self.state,
            traffic_weight=self.traffic_weight,
            store_key=self.store_key,
            model_json=dict(self.model_json),
            hooks=tuple(self.hooks),
            error=self.error,
            created_at=self.created_at,
        )


class AccessToken(Base):
    __tablename__ = "access_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    prefix_id: Mapped[int | None] = mapped_column(ForeignKey("prefixes.id"))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    prefix: Mapped[Prefix | None] = relationship(lazy="joined")

    def to_row(self) -> AccessTokenRow:
        return AccessTokenRow(
            id=self.id,
            name=self.name,
            token_hash=self.token_hash,
            user_id=self.user_id,
            prefix_id=self.prefix_id,
            prefix_key=self.prefix.key if self.prefix is not None else None,
            model_id=self.model_id,
            expires_at=self.expires_at,
            revoked=self.revoked,
            created_at=self.created_at,
        )


class RevokedJti(Base):
    __tablename__ = "revoked_jtis"

    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LoginFailure(Base):
    """Failed logins of one account (``user:<email>``) or client address (``ip:<address>``),
    shared by every gateway on this registry (`auth.login_guard.LoginThrottle`). Times are
    Unix epoch seconds: the gateways' clocks, not one process's monotonic clock."""

    __tablename__ = "login_failures"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    last_at: Mapped[float] = mapped_column(Float, index=True)
    locked_until: Mapped[float] = mapped_column(Float)


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONText)

    def to_row(self) -> AuditEventRow:
        return AuditEventRow(
            id=self.id, ts=self.ts, actor=self.actor, action=self.action, detail=dict(self.detail)
        )


class Group(Base):
    """A named set of users; grants given to a group apply to each member."""

    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def to_row(self, members: tuple[str, ...] = ()) -> GroupRow:
        return GroupRow(id=self.id, name=self.name, members=members, created_at=self.created_at)


class GroupMember(Base):
    __tablename__ = "group_members"

    group_id: Mapped[int] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )


class Grant(Base):
    """`use` or `deploy` on a prefix (and every prefix below it) or on one model.

    Exactly one of group/user and exactly one of prefix/model is set (checked in `Registry`).
    """

    __tablename__ = "grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_id: Mapped[int | None] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    prefix_id: Mapped[int | None] = mapped_column(ForeignKey("prefixes.id", ondelete="CASCADE"))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    permission: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    group: Mapped[Group | None] = relationship(lazy="joined")
    user: Mapped[User | None] = relationship(lazy="joined")
    prefix: Mapped[Prefix | None] = relationship(lazy="joined")

    def to_row(self) -> GrantRow:
        return GrantRow(
            id=self.id,
            group_id=self.group_id,
            group_name=self.group.name if self.group is not None else None,
            user_id=self.user_id,
            user_email=self.user.email if self.user is not None else None,
            prefix_key=self.prefix.key if self.prefix is not None else None,
            model_id=self.model_id,
            permission=self.permission,
            created_at=self.created_at,
        )


class RefreshToken(Base):
    """One issued refresh token. Each use retires it and issues the next one of its family;
    presenting a retired one again means it was stolen, and the whole family is revoked."""

    __tablename__ = "refresh_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    family: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def to_row(self) -> RefreshTokenRow:
        return RefreshTokenRow(
            jti=self.jti,
            family=self.family,
            user_id=self.user_id,
            expires_at=self.expires_at,
            used=self.used,
            revoked=self.revoked,
        )
