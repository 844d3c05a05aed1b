"""Immutable rows the registry hands to the rest of modelhost.

Callers never see ORM objects: those are bound to a session, lazy-load on attribute access
and can be mutated by accident. A frozen dataclass is a plain value that can be cached by
the gateway, passed between threads and compared in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class VersionState(StrEnum):
    """Lifecycle of one model version's workers; stored as its string value."""

    PENDING = "pending"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"  # unloaded (or retired): not started at restart; can be again
    DELETED = "deleted"  # removed by an admin: its URL is gone for good


@dataclass(frozen=True, slots=True)
class UserRow:
    id: int
    email: str
    # Kept out of repr so a logged row never leaks the hash.
    password_hash: str = field(repr=False)
    is_admin: bool
    is_active: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PrefixRow:
    id: int
    key: str
    description: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DeploymentRow:
    id: int
    key: str
    replicas: int
    created_at: datetime
    # Per-deployment overrides; None = the server's setting.
    predict_timeout_s: float | None = None
    max_queue: int | None = None
    memory_mb: int | None = None
    # Autoscaling (None: a fixed `replicas`); see gateway/autoscale.py.
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    scale_down_delay_s: float | None = None
    # Placement on a Ray cluster (MODELHOST_RUNTIME=ray); ignored by the local runtime.
    num_cpus: float | None = None
    num_gpus: float | None = None
    ray_resources: dict[str, float] | None = None
    placement: str | None = None  # "pack" | "spread"


@dataclass(frozen=True, slots=True)
class ModelRow:
    id: int
    prefix_id: int
    prefix_key: str
    name: str
    deployment_id: int
    deployment_key: str
    created_at: datetime
    pinned_version: int | None = None  # the versionless URL serves only this version
    weighted: bool = False  # ready versions share the versionless URL by traffic_weight

    @property
    def path(self) -> str:
        """URL path of the model without slashes around it, e.g. ``models/marketing/churn``."""
        return f"{self.prefix_key}/{self.name}"


@dataclass(frozen=True, slots=True)
class VersionRow:
    id: int
    model_id: int
    version: int
    state: str
    traffic_weight: int
    store_key: str
    model_json: dict[str, Any]
    hooks: tuple[str, ...]
    error: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ActiveVersionRow:
    """A version that should have workers, with everything the supervisor needs to spawn them."""

    version: VersionRow
    model: ModelRow
    deployment: DeploymentRow

    @property
    def replicas(self) -> int:
        return self.deployment.replicas


@dataclass(frozen=True, slots=True)
class AccessTokenRow:
    id: int
    name: str
    token_hash: str = field(repr=False)
    user_id: int
    prefix_id: int | None
    # Joined from prefixes so a scope check needs no second query.
    prefix_key: str | None
    model_id: int | None
    expires_at: datetime | None
    revoked: bool
    created_at: datetime

    def is_usable(self, now: datetime) -> bool:
        """True when the token is neither revoked nor expired at ``now`` (timezone-aware)."""
        return not self.revoked and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class RevocationSnapshot:
    """Everything the gateway's token cache must reject, read in one cheap poll."""

    revoked_jtis: frozenset[str]
    inactive_user_ids: frozenset[int]
    revoked_token_hashes: frozenset[str]
    # Ids of revoked or expired long-lived access tokens: session tokens minted with one die too.
    revoked_token_ids: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class GroupRow:
    id: int
    name: str
    members: tuple[str, ...]  # emails
    created_at: datetime


@dataclass(frozen=True, slots=True)
class GrantRow:
    id: int
    group_id: int | None
    group_name: str | None
    user_id: int | None
    user_email: str | None
    prefix_key: str | None
    model_id: int | None
    permission: str  # "use" | "deploy"
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "group": self.group_name,
            "user": self.user_email,
            "prefix": self.prefix_key,
            "model_id": self.model_id,
            "permission": self.permission,
        }


@dataclass(frozen=True, slots=True)
class AccessSnapshot:
    """Who may reach what: read with the revocations, so grant changes apply within one poll."""

    admin_ids: frozenset[int]
    groups_of: dict[int, frozenset[int]]  # user id -> group ids
    grants: tuple[GrantRow, ...]


@dataclass(frozen=True, slots=True)
class RefreshTokenRow:
    jti: str
    family: str
    user_id: int
    expires_at: datetime
    used: bool
    revoked: bool


@dataclass(frozen=True, slots=True)
class AuditEventRow:
    id: int
    ts: datetime
    actor: str
    action: str
    detail: dict[str, Any]
