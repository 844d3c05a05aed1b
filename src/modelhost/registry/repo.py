"""`Registry`: the only code that talks to the registry database.

Every method opens a short session, converts what it read into frozen rows and closes the
session, so callers never hold ORM objects or open transactions. Writes go through a
second session factory whose transactions start with ``BEGIN IMMEDIATE`` on SQLite: a
read-then-write transaction there would otherwise fail with "database is locked" when two
writers race, and taking the write lock up front turns that race into a plain wait.
On PostgreSQL the same code relies on row locks and unique constraints instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, overload

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, delete, event, func, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from modelhost.errors import BadRequest, Conflict, NotFound
from modelhost.registry import notices
from modelhost.registry.rows import (
    AccessSnapshot,
    AccessTokenRow,
    ActiveVersionRow,
    AuditEventRow,
    DeploymentRow,
    GrantRow,
    GroupRow,
    ModelRow,
    PrefixRow,
    RefreshTokenRow,
    RevocationSnapshot,
    UserRow,
    VersionRow,
    VersionState,
)
from modelhost.registry.schema import (
    AccessToken,
    AuditEvent,
    Deployment,
    Grant,
    Group,
    GroupMember,
    LoginFailure,
    Model,
    Prefix,
    RefreshToken,
    RevokedJti,
    User,
    Version,
    utcnow,
)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Execution option that marks the write engine; read by the SQLite "begin" hook.
_WRITE_OPTION = "modelhost_write"
# Arbitrary constant: the PostgreSQL advisory lock that serialises concurrent `migrate()`.
_MIGRATION_LOCK_ID = 0x6D6F64656C68
# Expired jtis are deleted at most this often; the snapshot filters them out regardless.
_PURGE_INTERVAL_S = 60.0
# create_version retries on a unique violation only if another writer slipped past the lock.
_VERSION_ATTEMPTS = 5


def _prefix_missing(key: str) -> NotFound:
    return NotFound(
        f"prefix {key!r} does not exist; create it with `modelhost admin prefix create {key}`"
    )


def _deployment_missing(key: str) -> NotFound:
    return NotFound(
        f"deployment {key!r} does not exist; "
        f"create it with `modelhost admin deployment create {key}`"
    )


def _normalize_email(email: str) -> str:
    """Emails are matched case-insensitively, so they are stored lower-cased."""
    return email.strip().lower()


@overload
def _as_utc(value: datetime) -> datetime: ...
@overload
def _as_utc(value: None) -> None: ...
def _as_utc(value: datetime | None) -> datetime | None:
    """Convert to UTC so rows built from the input match rows read back later.

    Naive datetimes are rejected: their zone would be a guess, and the guess would be stored.
    """
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("the registry needs timezone-aware datetimes (e.g. datetime.now(UTC))")
    return value.astimezone(UTC)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Stop pysqlite from issuing its own BEGIN so `_sqlite_on_begin` decides the kind.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    immediate = connection.get_execution_options().get(_WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(database_url: str) -> Engine:
    """Build the engine for ``sqlite:///path`` (parent dir created) or PostgreSQL."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        _private_file(Path(database).expanduser())
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _private_file(path: Path) -> None:
    """The SQLite file (password hashes, token hashes) is created 0600, and an existing one
    made so; SQLite gives its -wal/-shm/-journal files the database file's mode."""
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))
    for name in (path, *(Path(f"{path}{x}") for x in ("-wal", "-shm", "-journal"))):
        if name.exists():
            os.chmod(name, 0o600)


def alembic_config(connection: Connection) -> Config:
    """An alembic Config for the packaged migrations, bound to ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


class Registry:
    """Query API over the registry database; thread-safe, one instance per process."""

    def __init__(self, database_url: str, sender: str = "") -> None:
        """`sender`: who writes (a gateway id), named in the change notices (notices.py)."""
        self._engine = make_engine(database_url)
        self._read = sessionmaker(self._engine, expire_on_commit=False)
        self._write_engine = self._engine.execution_options(**{_WRITE_OPTION: True})
        self._write = sessionmaker(self._write_engine, expire_on_commit=False)
        self._next_purge = 0.0
        self._next_login_purge = 0.0
        if self._engine.dialect.name == "postgresql":
            notices.install(self._write, sender)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        return self._engine

    def migrate(self) -> None:
        """Bring the schema to the newest revision (``alembic upgrade head``); idempotent."""
        with self._write_engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_ID}
                )
            command.upgrade(alembic_config(connection), "head")

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _writing(self, conflict: str) -> Iterator[Session]:
        """A write transaction whose unique-constraint violation becomes `Conflict`."""
        try:
            with self._write.begin() as session:
                yield session
        except IntegrityError as exc:
            raise Conflict(conflict) from exc

    # -- users -------------------------------------------------------------------------

    def create_user(self, email: str, password_hash: str, is_admin: bool = False) -> UserRow:
        email = _normalize_email(email)
        with self._writing(f"user {email!r} already exists") as session:
            user = User(email=email, password_hash=password_hash, is_admin=is_admin, is_active=True)
            session.add(user)
            session.flush()
            return user.to_row()

    def get_user(self, user_id: int) -> UserRow | None:
        with self._read.begin() as session:
            user = session.get(User, user_id)
            return user.to_row() if user else None

    def get_user_by_email(self, email: str) -> UserRow | None:
        with self._read.begin() as session:
            user = session.scalar(select(User).where(User.email == _normalize_email(email)))
            return user.to_row() if user else None

    def count_users(self) -> int:
        with self._read.begin() as session:
            return session.scalar(select(func.count()).select_from(User)) or 0

    def list_users(self) -> list[UserRow]:
        with self._read.begin() as session:
            return [u.to_row() for u in session.scalars(select(User).order_by(User.id))]

    def set_user_active(self, user_id: int, active: bool) -> UserRow:
        with self._write.begin() as session:
            user = session.get(User, user_id)
            if user is None:
                raise NotFound(f"user id {user_id} does not exist")
            user.is_active = active
            return user.to_row()

    # -- prefixes ----------------------------------------------------------------------

    def create_prefix(self, key: str, description: str = "") -> PrefixRow:
        with self._writing(f"prefix {key!r} already exists") as session:
            prefix = Prefix(key=key, description=description)
            session.add(prefix)
            session.flush()
            return prefix.to_row()

    def ensure_prefix(self, key: str) -> PrefixRow:
        """Get or create; a concurrent creator winning the race is not an error."""
        existing = self.get_prefix(key)
        if existing is not None:
            return existing
        try:
            return self.create_prefix(key)
        except Conflict:
            row = self.get_prefix(key)
            if row is None:
                raise
            return row

    def get_prefix(self, key: str) -> PrefixRow | None:
        with self._read.begin() as session:
            prefix = session.scalar(select(Prefix).where(Prefix.key == key))
            return prefix.to_row() if prefix else None

    def list_prefixes(self) -> list[PrefixRow]:
        with self._read.begin() as session:
            return [p.to_row() for p in session.scalars(select(Prefix).order_by(Prefix.key))]

    # -- deployments -------------------------------------------------------------------

    def create_deployment(self, key: str, replicas: int = 1, **limits: Any) -> DeploymentRow:
        """``limits``: `DEPLOYMENT_LIMITS` (None = the server's setting)."""
        _check_replicas(replicas)
        _check_limits(limits)
        with self._writing(f"deployment {key!r} already exists") as session:
            deployment = Deployment(key=key, replicas=replicas, **limits)
            session.add(deployment)
            session.flush()
            return deployment.to_row()

    def update_deployment(self, key: str, **changes: Any) -> DeploymentRow:
        """Change ``replicas`` and/or `DEPLOYMENT_LIMITS` (None clears a limit)."""
        if "replicas" in changes:
            replicas = changes.pop("replicas")
            if not isinstance(replicas, int):
                raise BadRequest("replicas must be an integer")
            _check_replicas(replicas)
            changes["replicas"] = replicas
            _check_limits({k: v for k, v in changes.items() if k != "replicas"})
        else:
            _check_limits(changes)
        with self._write.begin() as session:
            deployment = session.scalar(select(Deployment).where(Deployment.key == key))
            if deployment is None:
                raise _deployment_missing(key)
            for name, value in changes.items():
                setattr(deployment, name, value)
            # the bounds as they will be stored (one of them may be the row's own); raising
            # here rolls the transaction back
            low, high = deployment.min_replicas, deployment.max_replicas
            if low is not None and high is not None and low > high:
                raise BadRequest(
                    f"min_replicas ({low}) must not exceed max_replicas ({high}) of deployment "
                    f"{key!r}; change both in one call"
                )
            return deployment.to_row()

    def ensure_deployment(self, key: str, replicas: int | None = None) -> DeploymentRow:
        """Get or create; ``replicas``, when given, is applied to an existing one too."""
        row = self.get_deployment(key)
        if row is None:
            try:
                return self.create_deployment(key, 1 if replicas is None else replicas)
            except Conflict:
                row = self.get_deployment(key)
                if row is None:
                    raise
        if replicas is not None and row.replicas != replicas:
            return self.set_replicas(key, replicas)
        return row

    def get_deployment(self, key: str) -> DeploymentRow | None:
        with self._read.begin() as session:
            deployment = session.scalar(select(Deployment).where(Deployment.key == key))
            return deployment.to_row() if deployment else None

    def list_deployments(self) -> list[DeploymentRow]:
        with self._read.begin() as session:
            query = select(Deployment).order_by(Deployment.key)
            return [d.to_row() for d in session.scalars(query)]

    def set_replicas(self, key: str, n: int) -> DeploymentRow:
        _check_replicas(n)
        with self._write.begin() as session:
            deployment = session.scalar(select(Deployment).where(Deployment.key == key))
            if deployment is None:
                raise _deployment_missing(key)
            deployment.replicas = n
            return deployment.to_row()

    # -- models ------------------------------------------------------------------------

    def get_or_create_model(self, prefix_key: str, name: str, deployment_key: str) -> ModelRow:
        """The model ``prefix_key/name``, created or moved onto ``deployment_key``.

        Both parents must exist already: a typo in a deploy command should fail loudly
        rather than silently create a new prefix or deployment.
        """
        try:
            return self._upsert_model(prefix_key, name, deployment_key)
        except IntegrityError:
            pass  # a concurrent deploy created the same model (PostgreSQL only); now it exists
        try:
            return self._upsert_model(prefix_key, name, deployment_key)
        except IntegrityError as exc:
            raise Conflict(f"model {prefix_key}/{name} is being changed concurrently") from exc

    def _upsert_model(self, prefix_key: str, name: str, deployment_key: str) -> ModelRow:
        with self._write.begin() as session:
            prefix = session.scalar(select(Prefix).where(Prefix.key == prefix_key))
            if prefix is None:
                raise _prefix_missing(prefix_key)
            deployment = session.scalar(select(Deployment).where(Deployment.key == deployment_key))
            if deployment is None:
                raise _deployment_missing(deployment_key)
            model = session.scalar(
                select(Model).where(Model.prefix_id == prefix.id, Model.name == name)
            )
            if model is None:
                model = Model(prefix=prefix, name=name, deployment=deployment)
                session.add(model)
            elif model.deployment_id != deployment.id:
                model.deployment = deployment
            session.flush()
            return model.to_row()

    def get_model(self, prefix_key: str, name: str) -> ModelRow | None:
        with self._read.begin() as session:
            query = (
                select(Model)
                .join(Prefix, Model.prefix_id == Prefix.id)
                .where(Prefix.key == prefix_key, Model.name == name)
            )
            model = session.scalar(query)
            return model.to_row() if model else None

    def get_model_by_id(self, model_id: int) -> ModelRow | None:
        with self._read.begin() as session:
            model = session.get(Model, model_id)
            return model.to_row() if model else None

    def list_models(self) -> list[ModelRow]:
        with self._read.begin() as session:
            query = (
                select(Model)
                .join(Prefix, Model.prefix_id == Prefix.id)
                .order_by(Prefix.key, Model.name)
            )
            return [m.to_row() for m in session.scalars(query)]

    # -- versions ----------------------------------------------------------------------

    def create_version(
        self, model_id: int, store_key: str, model_json: dict[str, Any], hooks: list[str]
    ) -> VersionRow:
        """Add version ``max + 1`` of the model in state 'pending'.

        The model row is locked (``FOR UPDATE``) so concurrent deploys of one model take
        turns on PostgreSQL; on SQLite ``BEGIN IMMEDIATE`` does the same. The retry on a
        unique violation is a second line of defence, not the normal path.
        """
        for _ in range(_VERSION_ATTEMPTS):
            try:
                return self._insert_next_version(model_id, store_key, model_json, hooks)
            except IntegrityError:
                continue
        raise Conflict(f"could not allocate a version number for model id {model_id}")

    def _insert_next_version(
        self, model_id: int, store_key: str, model_json: dict[str, Any], hooks: list[str]
    ) -> VersionRow:
        with self._write.begin() as session:
            weighted = session.scalar(
                select(Model.weighted).where(Model.id == model_id).with_for_update()
            )
            if weighted is None:
                raise NotFound(f"model id {model_id} does not exist")
            current = session.scalar(
                select(func.max(Version.version)).where(Version.model_id == model_id)
            )
            version = Version(
                model_id=model_id,
                version=(current or 0) + 1,
                state=VersionState.PENDING.value,
                # explicit weights stay in force: a new version gets traffic once given some
                traffic_weight=0 if weighted else 100,
                store_key=store_key,
                model_json=dict(model_json),
                hooks=list(hooks),
            )
            session.add(version)
            session.flush()
            return version.to_row()

    def set_version_state(
        self, version_id: int, state: str, error: str | None = None
    ) -> VersionRow:
        """Move a version to ``state``; ``error`` replaces the stored one (None clears it).
        A deleted version stays deleted."""
        try:
            checked = VersionState(state)
        except ValueError:
            allowed = ", ".join(s.value for s in VersionState)
            raise BadRequest(
                f"unknown version state {state!r}; expected one of {allowed}"
            ) from None
        with self._write.begin() as session:
            version = _existing_version(session, version_id)
            if version.state == VersionState.DELETED.value:
                return version.to_row()  # final: a late state report does not revive it
            version.state = checked.value
            version.error = error
            return version.to_row()

    def set_traffic_weight(self, version_id: int, weight: int) -> VersionRow:
        if weight < 0:
            raise BadRequest(f"traffic weight must be >= 0, got {weight}")
        with self._write.begin() as session:
            version = _existing_version(session, version_id)
            version.traffic_weight = weight
            return version.to_row()

    def set_traffic_weights(self, model_id: int, weights: dict[int, int]) -> list[VersionRow]:
        """Split the versionless URL by ``weights`` (version number -> weight >= 0); versions
        not named get 0. An empty dict goes back to "newest ready version serves". Every
        version of the model, afterwards."""
        if any(not 0 <= w <= MAX_TRAFFIC_WEIGHT for w in weights.values()):
            raise BadRequest(f"traffic weights must be from 0 to {MAX_TRAFFIC_WEIGHT}")
        with self._write.begin() as session:
            model = session.get(Model, model_id, with_for_update=True)
            if model is None:
                raise NotFound(f"model id {model_id} does not exist")
            versions = _live_versions(session, model_id)
            missing = sorted(set(weights) - set(versions))
            if missing:
                raise NotFound(f"{model.prefix.key}/{model.name} has no version {missing[0]}")
            if weights and not any(weights.values()):
                raise BadRequest("at least one version needs a weight above 0")
            model.weighted = bool(weights)
            for number, version in versions.items():
                version.traffic_weight = weights.get(number, 0) if weights else 100
            return [v.to_row() for _, v in sorted(versions.items())]

    def set_pinned_version(self, model_id: int, version: int | None) -> ModelRow:
        """The versionless URL serves only ``version`` (None: unpinned)."""
        with self._write.begin() as session:
            model = session.get(Model, model_id, with_for_update=True)
            if model is None:
                raise NotFound(f"model id {model_id} does not exist")
            if version is not None and version not in _live_versions(session, model_id):
                raise NotFound(f"{model.prefix.key}/{model.name} has no version {version}")
            model.pinned_version = version
            session.flush()
            return model.to_row()

    def delete_version(self, version_id: int) -> VersionRow:
        """Mark a version deleted (never started again, its URL gone); a pin on it is
        lifted and its weight dropped."""
        with self._write.begin() as session:
            version = _existing_version(session, version_id)
            model = session.get(Model, version.model_id, with_for_update=True)
            if model is not None and model.pinned_version == version.version:
                model.pinned_version = None
            version.state = VersionState.DELETED.value
            version.traffic_weight = 0
            version.error = None
            return version.to_row()

    def get_version(self, model_id: int, version: int) -> VersionRow | None:
        with self._read.begin() as session:
            query = select(Version).where(Version.model_id == model_id, Version.version == version)
            row = session.scalar(query)
            return row.to_row() if row else None

    def get_version_by_id(self, version_id: int) -> VersionRow | None:
        with self._read.begin() as session:
            row = session.get(Version, version_id)
            return row.to_row() if row else None

    def list_versions(self, model_id: int) -> list[VersionRow]:
        with self._read.begin() as session:
            query = select(Version).where(Version.model_id == model_id).order_by(Version.version)
            return [v.to_row() for v in session.scalars(query)]

    def list_active_versions(self) -> list[ActiveVersionRow]:
        """Every version neither 'stopped' nor 'deleted', for the supervisor to spawn workers
        at start-up."""
        idle = (VersionState.STOPPED.value, VersionState.DELETED.value)
        with self._read.begin() as session:
            query = (
                select(Version, Model)
                .join(Model, Version.model_id == Model.id)
                .where(Version.state.not_in(idle))
                .order_by(Version.model_id, Version.version)
            )
            return [
                ActiveVersionRow(
                    version=version.to_row(),
                    model=model.to_row(),
                    deployment=model.deployment.to_row(),
                )
                for version, model in session.execute(query).unique()
            ]

    # -- tokens ------------------------------------------------------------------------

    def create_access_token(
        self,
        name: str,
        token_hash: str,
        user_id: int,
        prefix_id: int | None = None,
        model_id: int | None = None,
        expires_at: datetime | None = None,
    ) -> AccessTokenRow:
        expires_at = _as_utc(expires_at)
        with self._writing("an access token with this hash already exists") as session:
            _require(session, (User, "user", user_id), (Prefix, "prefix", prefix_id))
            _require(session, (Model, "model", model_id))
            token = AccessToken(
                name=name,
                token_hash=token_hash,
                user_id=user_id,
                prefix_id=prefix_id,
                model_id=model_id,
                expires_at=expires_at,
                revoked=False,
            )
            session.add(token)
            session.flush()
            session.refresh(token, ["prefix"])
            return token.to_row()

    def get_access_token(self, token_hash: str) -> AccessTokenRow | None:
        with self._read.begin() as session:
            token = session.scalar(select(AccessToken).where(AccessToken.token_hash == token_hash))
            return token.to_row() if token else None

    def revoke_access_token(self, token_id: int) -> AccessTokenRow:
        """Mark the token revoked (idempotent); the gateway sees it on its next poll."""
        with self._write.begin() as session:
            token = session.get(AccessToken, token_id)
            if token is None:
                raise NotFound(f"access token id {token_id} does not exist")
            token.revoked = True
            return token.to_row()

    def revoke_jti(self, jti: str, expires_at: datetime) -> None:
        """Deny one JWT until ``expires_at`` (its own expiry; after that it is dead anyway)."""
        expires_at = _as_utc(expires_at)
        try:
            with self._write.begin() as session:
                existing = session.get(RevokedJti, jti)
                if existing is None:
                    session.add(RevokedJti(jti=jti, expires_at=expires_at))
                elif existing.expires_at < expires_at:
                    existing.expires_at = expires_at
        except IntegrityError:
            pass  # revoked concurrently by someone else: the outcome is the same

    # -- failed logins (auth.login_guard.LoginThrottle) ----------------------------------------

    def login_locked_until(self, keys: Sequence[str]) -> float:
        """The latest lockout end (epoch seconds) among `keys`; 0 when none is recorded."""
        with self._read.begin() as session:
            found = session.scalar(
                select(func.max(LoginFailure.locked_until)).where(LoginFailure.key.in_(keys))
            )
            return float(found or 0.0)

    def record_login_failures(
        self, keys: Mapping[str, Callable[[int], float]], now: float, window_s: float
    ) -> float:
        """Count one more failed login for each key and return when the latest of their
        lockouts ends (epoch seconds; 0 = none locked). ``keys[key](count)``: the lockout the
        key's new count earns (0: none); a running lockout is never shortened. A count whose
        last failure is older than `window_s`, and whose lockout is over, starts again.

        One write transaction for all the keys (a login's account and address): their rows
        locked in key order on PostgreSQL (two gateways never wait on each other in a cycle),
        the database locked on SQLite, so gateways failing the same key at once each add one.
        """
        for attempt in range(2):
            try:
                with self._write.begin() as session:
                    locked_until = 0.0
                    for key in sorted(keys):
                        row = session.get(LoginFailure, key, with_for_update=True)
                        if row is None:
                            row = LoginFailure(key=key, count=0, last_at=now, locked_until=0.0)
                            session.add(row)
                        elif now - row.last_at > window_s and now >= row.locked_until:
                            row.count, row.locked_until = 0, 0.0
                        row.count += 1
                        row.last_at = now
                        lock = keys[key](row.count)
                        if lock > 0:
                            row.locked_until = max(row.locked_until, now + lock)
                        locked_until = max(locked_until, row.locked_until)
                break
            except IntegrityError:  # another gateway inserted a key first: count on it
                if attempt:
                    raise
        if time.monotonic() >= self._next_login_purge:
            self._next_login_purge = time.monotonic() + _PURGE_INTERVAL_S
            with self._write.begin() as session:
                session.execute(
                    delete(LoginFailure).where(
                        (LoginFailure.last_at < now - window_s) & (LoginFailure.locked_until <= now)
                    )
                )
        return locked_until

    def clear_login_failures(self, key: str) -> None:
        """Forget `key`'s failed logins (a successful login). Most successful logins follow
        no failure: they only read, and take no write lock."""
        with self._read.begin() as session:
            if session.get(LoginFailure, key) is None:
                return
        with self._write.begin() as session:
            session.execute(delete(LoginFailure).where(LoginFailure.key == key))

    def revocation_snapshot(self) -> RevocationSnapshot:
        """Everything the gateway must reject; three indexed-or-tiny reads per poll."""
        now = utcnow()
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + _PURGE_INTERVAL_S
            with self._write.begin() as session:
                session.execute(delete(RevokedJti).where(RevokedJti.expires_at <= now))
        with self._read.begin() as session:
            jtis = session.scalars(select(RevokedJti.jti).where(RevokedJti.expires_at > now))
            users = session.scalars(select(User.id).where(User.is_active.is_(False)))
            dead = session.execute(
                select(AccessToken.id, AccessToken.token_hash).where(
                    AccessToken.revoked.is_(True)
                    | (AccessToken.expires_at.is_not(None) & (AccessToken.expires_at <= now))
                )
            ).all()
            return RevocationSnapshot(
                revoked_jtis=frozenset(jtis),
                inactive_user_ids=frozenset(users),
                revoked_token_hashes=frozenset(row.token_hash for row in dead),
                revoked_token_ids=frozenset(row.id for row in dead),
            )

    def list_access_tokens(self) -> list[AccessTokenRow]:
        with self._read.begin() as session:
            query = select(AccessToken).order_by(AccessToken.id)
            return [t.to_row() for t in session.scalars(query)]

    # -- refresh-token families --------------------------------------------------------

    def add_refresh_token(self, jti: str, family: str, user_id: int, expires_at: datetime) -> None:
        with self._writing("refresh token id already exists") as session:
            session.add(
                RefreshToken(
                    jti=jti,
                    family=family,
                    user_id=user_id,
                    expires_at=_as_utc(expires_at),
                    used=False,
                    revoked=False,
                )
            )

    def use_refresh_token(self, jti: str) -> RefreshTokenRow | None:
        """Retire ``jti`` and return it as it was before; a second use revokes its family.

        None when the token is unknown. The caller refuses the token when the returned row
        was already used or revoked (the family is revoked here in that case).
        """
        with self._write.begin() as session:
            token = session.get(RefreshToken, jti, with_for_update=True)
            if token is None:
                return None
            before = token.to_row()
            if token.used or token.revoked:
                _revoke_family(session, token.family)
            else:
                token.used = True
            return before

    def revoke_refresh_family(self, jti: str) -> RefreshTokenRow | None:
        """Logout: revoke the family of ``jti``; None when the token is unknown."""
        with self._write.begin() as session:
            token = session.get(RefreshToken, jti)
            if token is None:
                return None
            _revoke_family(session, token.family)
            return token.to_row()

    # -- groups and grants -------------------------------------------------------------

    def create_group(self, name: str) -> GroupRow:
        with self._writing(f"group {name!r} already exists") as session:
            group = Group(name=name)
            session.add(group)
            session.flush()
            return group.to_row()

    def get_group(self, name: str) -> GroupRow | None:
        with self._read.begin() as session:
            group = session.scalar(select(Group).where(Group.name == name))
            return None if group is None else group.to_row(_member_emails(session, group.id))

    def list_groups(self) -> list[GroupRow]:
        with self._read.begin() as session:
            groups = session.scalars(select(Group).order_by(Group.name)).all()
            return [g.to_row(_member_emails(session, g.id)) for g in groups]

    def add_group_member(self, group_id: int, user_id: int) -> None:
        with self._write.begin() as session:
            if session.get(Group, group_id) is None:
                raise NotFound(f"group id {group_id} does not exist")
            if session.get(User, user_id) is None:
                raise NotFound(f"user id {user_id} does not exist")
            if session.get(GroupMember, (group_id, user_id)) is None:
                session.add(GroupMember(group_id=group_id, user_id=user_id))

    def remove_group_member(self, group_id: int, user_id: int) -> None:
        with self._write.begin() as session:
            member = session.get(GroupMember, (group_id, user_id))
            if member is None:
                raise NotFound(f"user id {user_id} is not in group id {group_id}")
            session.delete(member)

    def create_grant(
        self,
        permission: str,
        *,
        group_id: int | None = None,
        user_id: int | None = None,
        prefix_id: int | None = None,
        model_id: int | None = None,
    ) -> GrantRow:
        if permission not in ("use", "deploy"):
            raise BadRequest(f"permission must be 'use' or 'deploy', got {permission!r}")
        if (group_id is None) == (user_id is None):
            raise BadRequest("a grant names exactly one of a group or a user")
        if (prefix_id is None) == (model_id is None):
            raise BadRequest("a grant names exactly one of a prefix or a model")
        with self._write.begin() as session:
            _require(session, (Group, "group", group_id), (User, "user", user_id))
            _require(session, (Prefix, "prefix", prefix_id), (Model, "model", model_id))
            grant = Grant(
                permission=permission,
                group_id=group_id,
                user_id=user_id,
                prefix_id=prefix_id,
                model_id=model_id,
            )
            session.add(grant)
            session.flush()
            session.refresh(grant, ["group", "user", "prefix"])
            return grant.to_row()

    def list_grants(self) -> list[GrantRow]:
        with self._read.begin() as session:
            return [g.to_row() for g in session.scalars(select(Grant).order_by(Grant.id))]

    def delete_grant(self, grant_id: int) -> None:
        with self._write.begin() as session:
            grant = session.get(Grant, grant_id)
            if grant is None:
                raise NotFound(f"grant id {grant_id} does not exist")
            session.delete(grant)

    def access_snapshot(self) -> AccessSnapshot:
        """Admins, memberships and grants: small tables, read whole on every poll."""
        with self._read.begin() as session:
            admins = session.scalars(
                select(User.id).where(User.is_admin.is_(True), User.is_active.is_(True))
            )
            groups_of: dict[int, set[int]] = {}
            for member in session.scalars(select(GroupMember)):
                groups_of.setdefault(member.user_id, set()).add(member.group_id)
            grants = tuple(g.to_row() for g in session.scalars(select(Grant)))
            return AccessSnapshot(
                admin_ids=frozenset(admins),
                groups_of={user: frozenset(ids) for user, ids in groups_of.items()},
                grants=grants,
            )

    # -- audit -------------------------------------------------------------------------

    def audit(self, actor: str, action: str, detail: dict[str, Any]) -> AuditEventRow:
        with self._write.begin() as session:
            event_ = AuditEvent(actor=actor, action=action, detail=dict(detail))
            session.add(event_)
            session.flush()
            return event_.to_row()

    def list_audit(self, limit: int = 100) -> list[AuditEventRow]:
        """Newest first."""
        with self._read.begin() as session:
            query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
            return [e.to_row() for e in session.scalars(query)]


def _require(session: Session, *rows: tuple[type[Any], str, int | None]) -> None:
    """NotFound for the first given id (not None) that has no row."""
    for kind, label, value in rows:
        if value is not None and session.get(kind, value) is None:
            raise NotFound(f"{label} id {value} does not exist")


def _revoke_family(session: Session, family: str) -> None:
    for token in session.scalars(select(RefreshToken).where(RefreshToken.family == family)):
        token.revoked = True


def _member_emails(session: Session, group_id: int) -> tuple[str, ...]:
    query = (
        select(User.email)
        .join(GroupMember, GroupMember.user_id == User.id)
        .where(GroupMember.group_id == group_id)
        .order_by(User.email)
    )
    return tuple(session.scalars(query))


def _check_replicas(n: int) -> None:
    if n < 0:
        raise BadRequest(f"replicas must be >= 0, got {n}")


# Per-deployment numbers: name -> (type, least, most). None = the server's setting.
DEPLOYMENT_LIMITS: dict[str, tuple[type, float, float]] = {
    "predict_timeout_s": (float, 0.0, 7 * 24 * 3600.0),
    "max_queue": (int, 0, 1_000_000),
    "memory_mb": (int, 0, 1 << 24),  # 16 TiB
    # autoscaling (gateway/autoscale.py)
    "min_replicas": (int, 0, 64),
    "max_replicas": (int, 1, 64),
    "target_ongoing_requests": (float, 0.01, 1_000_000.0),
    "scale_down_delay_s": (float, 0.0, 24 * 3600.0),
    # placement on a Ray cluster
    "num_cpus": (float, 0.0, 1024.0),
    "num_gpus": (float, 0.0, 64.0),
}
PLACEMENTS = ("pack", "spread")
# Every per-deployment setting besides `replicas`, in the registry's order.
DEPLOYMENT_SETTINGS = (*DEPLOYMENT_LIMITS, "ray_resources", "placement")
MAX_TRAFFIC_WEIGHT = 1_000_000


def _check_limits(limits: dict[str, Any]) -> None:
    for name, value in limits.items():
        if name not in DEPLOYMENT_SETTINGS:
            raise BadRequest(f"unknown deployment setting {name!r}")
        if value is None:
            continue
        if name == "placement":
            if value not in PLACEMENTS:
                raise BadRequest(f"placement must be one of {', '.join(PLACEMENTS)}, got {value!r}")
            continue
        if name == "ray_resources":
            _check_resources(value)
            continue
        kind, least, most = DEPLOYMENT_LIMITS[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadRequest(f"{name} must be a number")
        if kind is int and not isinstance(value, int):
            raise BadRequest(f"{name} must be an integer")
        if not least <= value <= most:
            raise BadRequest(f"{name} must be from {_num(least)} to {_num(most)}, got {value}")
    low, high = limits.get("min_replicas"), limits.get("max_replicas")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        raise BadRequest(f"min_replicas ({low}) must not exceed max_replicas ({high})")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _check_resources(value: Any) -> None:
    """Ray custom resources: `{"node_b": 0.01, "accelerator_type:A100": 1}`."""
    if not isinstance(value, dict) or len(value) > 32:
        raise BadRequest("ray_resources must be an object of at most 32 resource names")
    for key, amount in value.items():
        if not isinstance(key, str) or not 0 < len(key) <= 128 or key in ("CPU", "GPU", "memory"):
            raise BadRequest(
                f"ray_resources: {key!r} is not a custom resource name "
                "(CPUs, GPUs and memory have their own settings: num_cpus, num_gpus, memory_mb)"
            )
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise BadRequest(f"ray_resources[{key!r}] must be a number >= 0")


def _live_versions(session: Session, model_id: int) -> dict[int, Version]:
    """The model's versions that are not deleted, by number."""
    query = select(Version).where(
        Version.model_id == model_id, Version.state != VersionState.DELETED.value
    )
    return {v.version: v for v in session.scalars(query)}


def _existing_version(session: Session, version_id: int) -> Version:
    version = session.get(Version, version_id)
    if version is None:
        raise NotFound(f"version id {version_id} does not exist")
    return version
