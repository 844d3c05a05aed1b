"""The registry: users, prefixes, deployments, models, versions, tokens and the audit log.

Use `Registry` (``repo.py``); it returns the frozen rows of ``rows.py`` and raises the
domain errors of `modelhost.errors`. ``schema.py`` and ``migrations/`` are internal.
"""

from modelhost.registry.repo import DEPLOYMENT_LIMITS, DEPLOYMENT_SETTINGS, Registry
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

__all__ = [
    "DEPLOYMENT_LIMITS",
    "DEPLOYMENT_SETTINGS",
    "AccessSnapshot",
    "AccessTokenRow",
    "ActiveVersionRow",
    "AuditEventRow",
    "DeploymentRow",
    "GrantRow",
    "GroupRow",
    "ModelRow",
    "PrefixRow",
    "RefreshTokenRow",
    "Registry",
    "RevocationSnapshot",
    "UserRow",
    "VersionRow",
    "VersionState",
]
