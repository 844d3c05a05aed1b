"""Change notices: every committed registry write that other gateways must apply is announced
with ``NOTIFY modelhost_changes`` (PostgreSQL only), so several gateways on one registry
converge within milliseconds instead of a poll period.

One hook on the write sessions (`install`) looks at what each flush wrote and sends one
notice per changed thing, in the same transaction: PostgreSQL delivers them on commit and
drops them on rollback, and folds identical ones within a transaction. The write methods in
`repo.py` need not remember to announce anything. Payloads are small JSON objects:

- ``{"kind": "model", "id": 7}``: a version added, deleted or given weight; a pin; weights.
- ``{"kind": "deployment", "key": "d1"}``: replicas or a per-deployment limit.
- ``{"kind": "auth"}``: users, groups, grants, access tokens, revoked JWT ids.

Each also names its sender (``"from"``: the gateway id; a gateway skips its own) and the
schema (``"db"``): LISTEN channels are per database, and schemas of one database (the tests
use one per test) must not act on each other's ids. A version's loading/ready/failed
reports are not announced: they are each gateway's own (see gateway/reconcile.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, inspect, text
from sqlalchemy.orm import Session, sessionmaker

from modelhost.registry.rows import VersionState
from modelhost.registry.schema import (
    AccessToken,
    Deployment,
    Grant,
    Group,
    GroupMember,
    Model,
    RevokedJti,
    User,
    Version,
)

CHANNEL = "modelhost_changes"
_AUTH_TABLES = (User, Group, GroupMember, Grant, AccessToken, RevokedJti)
# A version's own reports (each gateway's workers): not news for the others.
_REPORTED = frozenset({"state", "error"})


@dataclass(frozen=True, slots=True)
class Notice:
    """One change, as sent and as received."""

    kind: str  # "model", "deployment", "auth" (and "all" for a full reconcile, never sent)
    id: int | None = None
    key: str | None = None
    sender: str = ""
    db: str = ""

    def payload(self) -> str:
        body: dict[str, Any] = {"kind": self.kind, "from": self.sender, "db": self.db}
        if self.id is not None:
            body["id"] = self.id
        if self.key is not None:
            body["key"] = self.key
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def parse(cls, payload: str) -> Notice | None:
        """None for anything that is not a notice of ours (someone else's NOTIFY)."""
        try:
            body = json.loads(payload)
            kind = body["kind"]
        except (ValueError, KeyError, TypeError):
            return None
        ident, key = body.get("id"), body.get("key")
        return cls(
            kind=str(kind),
            id=ident if isinstance(ident, int) else None,
            key=key if isinstance(key, str) else None,
            sender=str(body.get("from", "")),
            db=str(body.get("db", "")),
        )


def install(factory: sessionmaker[Session], sender: str) -> None:
    """Announce what every flush of sessions made by `factory` writes (PostgreSQL only)."""
    hook = _Announcer(sender)
    event.listen(factory, "after_flush", hook)


class _Announcer:
    def __init__(self, sender: str) -> None:
        self.sender = sender
        self.schema: str | None = None  # read once: the same for every connection of the URL

    def __call__(self, session: Session, _context: Any) -> None:
        connection = session.connection()
        if connection.dialect.name != "postgresql":
            return
        found = set(_changes(session))
        if not found:
            return
        if self.schema is None:
            self.schema = str(connection.execute(text("SELECT current_schema()")).scalar())
        for kind, ident, key in sorted(found, key=repr):
            notice = Notice(kind, ident, key, self.sender, self.schema)
            connection.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": CHANNEL, "payload": notice.payload()},
            )


def _changes(session: Session) -> Iterable[tuple[str, int | None, str | None]]:
    """(kind, id, key) of everything this flush changed that other gateways must apply."""
    for obj in session.new:
        yield from _about(obj, new=True)
    for obj in session.dirty:
        if session.is_modified(obj):
            yield from _about(obj, new=False)
    for obj in session.deleted:
        yield from _about(obj, new=True)


def _about(obj: object, new: bool) -> Iterable[tuple[str, int | None, str | None]]:
    if isinstance(obj, Version):
        if new or _news_of_version(obj):
            yield ("model", obj.model_id, None)
    elif isinstance(obj, Model):
        yield ("model", obj.id, None)
    elif isinstance(obj, Deployment):
        yield ("deployment", None, obj.key)
    elif isinstance(obj, _AUTH_TABLES):
        yield ("auth", None, None)


def _news_of_version(version: Version) -> bool:
    """Changed beyond its own state report, or deleted (final, for every gateway)."""
    attrs = inspect(version).attrs
    changed = {a.key for a in attrs if a.history.has_changes()}
    return bool(changed - _REPORTED) or version.state == VersionState.DELETED.value
