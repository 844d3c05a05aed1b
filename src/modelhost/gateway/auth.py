"""Who is calling, and may they: the one authentication backend of model routes and console.

Every bearer credential becomes a `Principal` of one kind:

- ``user``: a console access JWT (after a password login); acts with the user's own rights
  (admin, or the grants of the user and their groups). The console, and a model's
  ``?get_meta=true`` (model_routes: Practicus' REST flow reads the model id there).
- ``scoped``: a long-lived ``mh_`` access token for a prefix or one model. It is its own
  principal: it may call models inside its scope and mint session tokens for them, and
  nothing else — never its creator's rights, never an admin endpoint.
- ``session``: a model session JWT, for exactly one model. Model routes only.

Verified tokens are cached in memory until they expire, so the hot path costs one dict
lookup. Revocations (revoked token ids, disabled users, revoked or expired access tokens and
the sessions minted from them) and grants are polled from the registry every `poll_s`
seconds and checked on every hit: a revocation or a removed grant applies within that bound.
On PostgreSQL a change made through another gateway also arrives as a change notice
(gateway/changes.py), which refreshes them at once (milliseconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Literal

import jwt

from modelhost.auth.grants import GrantIndex, Need, prefix_covers
from modelhost.auth.tokens import OPAQUE_PREFIX, TokenService, hash_opaque
from modelhost.errors import Forbidden, Unauthorized
from modelhost.registry import Registry

log = logging.getLogger("modelhost.auth")
_CACHE_MAX = 100_000

Kind = Literal["user", "scoped", "session"]
MODEL_KINDS: frozenset[str] = frozenset({"session", "scoped"})
CONSOLE_KINDS: frozenset[str] = frozenset({"user", "scoped"})
_JWT_KIND: dict[str, Kind] = {"access": "user", "model": "session"}
_WRONG_PLACE = {
    "user": "a console access token cannot call a model; trade it for a session token "
    "(GET /console/api/modelhost/model-auth/, or get_session_token(api_url))",
    "session": "a model session token only calls its model; for the console log in "
    "(POST /console/api/auth/)",
    "scoped": "this access token cannot be used here",
}


@dataclass(frozen=True, slots=True)
class Principal:
    kind: Kind
    user_id: int
    expires: float  # epoch seconds; inf for access tokens without expiry
    model_id: int | None = None  # session, or a model-scoped access token
    prefix: str | None = None  # a prefix-scoped access token: every model under it
    jti: str = ""
    parent_jti: str = ""  # session: its console token's login; user: the login (family)
    token_hash: str = ""  # scoped: sha-256 of the mh_ token
    token_id: int | None = None  # scoped: its own id; session: the access token it came from

    def in_scope(self, prefix: str, model_id: int) -> bool:
        """For scoped tokens and sessions: is this model inside what the token names?"""
        if self.model_id is not None:
            return self.model_id == model_id
        return self.prefix is not None and prefix_covers(self.prefix, prefix)


class Authenticator:
    def __init__(self, tokens: TokenService, registry: Registry, poll_s: float) -> None:
        self.tokens = tokens
        self.registry = registry
        self.poll_s = poll_s
        self.grants = GrantIndex()
        self._cache: dict[bytes, Principal] = {}
        self._revoked_jtis: frozenset[str] = frozenset()
        self._inactive_users: frozenset[int] = frozenset()
        self._revoked_hashes: frozenset[str] = frozenset()
        self._revoked_token_ids: frozenset[int] = frozenset()
        self._task: asyncio.Task[None] | None = None

    # -- authentication ----------------------------------------------------------------

    async def authenticate(
        self, authorization: bytes | None, accept: frozenset[str] = MODEL_KINDS
    ) -> Principal:
        """The caller; verifies (and caches) a token seen for the first time."""
        principal = self.cached(authorization, accept)
        if principal is None:
            assert authorization is not None  # `cached` raised otherwise
            principal = self._checked(authorization, await self._verify(authorization), accept)
        return principal

    def cached(
        self, authorization: bytes | None, accept: frozenset[str] = MODEL_KINDS
    ) -> Principal | None:
        """The caller if this token was verified before (no await on the hot path), else None."""
        if not authorization:
            raise Unauthorized(
                "no token: send 'Authorization: Bearer <token>'; for a model get one with "
                "get_session_token(api_url), for the console log in (POST /console/api/auth/)"
            )
        principal = self._cache.get(authorization)
        return None if principal is None else self._checked(authorization, principal, accept)

    def _checked(
        self, authorization: bytes, principal: Principal, accept: frozenset[str]
    ) -> Principal:
        if principal.expires < time.time():
            self._cache.pop(authorization, None)
            raise Unauthorized("the token has expired; get a new one")
        if self._revoked(principal):
            raise Unauthorized("the token was revoked; ask for a new one")
        if principal.kind not in accept:
            raise Unauthorized(_WRONG_PLACE[principal.kind])
        return principal

    def _revoked(self, p: Principal) -> bool:
        return (
            p.user_id in self._inactive_users
            or (bool(p.jti) and p.jti in self._revoked_jtis)
            or (bool(p.parent_jti) and p.parent_jti in self._revoked_jtis)
            or (bool(p.token_hash) and p.token_hash in self._revoked_hashes)
            or (p.token_id is not None and p.token_id in self._revoked_token_ids)
        )

    async def _verify(self, authorization: bytes) -> Principal:
        scheme, _, raw = authorization.decode("latin-1").partition(" ")
        token = raw.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        if token.startswith(OPAQUE_PREFIX):
            principal = await asyncio.to_thread(self._lookup_access_token, token)
        else:
            principal = self._from_jwt(token)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[authorization] = principal
        return principal

    def _from_jwt(self, token: str) -> Principal:
        try:
            typ = jwt.decode(token, options={"verify_signature": False}).get("typ")
        except jwt.PyJWTError:
            raise Unauthorized("the token is malformed (neither a JWT nor an mh_ token)") from None
        kind = _JWT_KIND.get(str(typ))
        if kind is None:
            raise Unauthorized(
                "a refresh token is only for POST /console/api/auth/refresh/, not a bearer token"
            )
        claims = self.tokens.verify(token, str(typ))
        return Principal(
            kind=kind,
            user_id=claims.sub,
            expires=claims.exp,
            model_id=claims.mid,
            jti=claims.jti,
            parent_jti=claims.pjt or claims.fam or "",  # session: what minted it; user: login
            token_id=claims.atk,
        )

    def _lookup_access_token(self, token: str) -> Principal:
        digest = hash_opaque(token)
        row = self.registry.get_access_token(digest)
        if row is None or row.revoked:
            raise Unauthorized("unknown or revoked access token")
        expires = row.expires_at.timestamp() if row.expires_at else float("inf")
        return Principal(
            kind="scoped",
            user_id=row.user_id,
            expires=expires,
            model_id=row.model_id,
            prefix=row.prefix_key,
            token_hash=digest,
            token_id=row.id,
        )

    # -- authorization -----------------------------------------------------------------

    def may_use(self, principal: Principal, prefix: str, model_id: int) -> bool:
        """May this caller get a session for, call, or see the model?"""
        if principal.kind != "user" and not principal.in_scope(prefix, model_id):
            return False
        # Scoped tokens and sessions also need their owner to still hold the right.
        return self.grants.allows(principal.user_id, prefix, model_id, "use")

    def may(self, principal: Principal, need: Need, prefix: str, model_id: int | None) -> bool:
        if need == "use" and model_id is not None:
            return self.may_use(principal, prefix, model_id)
        return principal.kind == "user" and self.grants.allows(
            principal.user_id, prefix, model_id, need
        )

    def authorize(self, principal: Principal, prefix: str, name: str, model_id: int) -> None:
        if not self.may_use(principal, prefix, model_id):
            raise Forbidden(
                f"this token is not valid for {prefix}/{name}; get a session token for this "
                "model's URL (and a 'use' grant on it from an admin)"
            )

    def is_admin(self, principal: Principal) -> bool:
        return principal.kind == "user" and self.grants.is_admin(principal.user_id)

    # -- polling -----------------------------------------------------------------------

    def refresh_revocations(self) -> None:
        if self.tokens.reload_if_changed():
            # Keys were rotated (maybe `--drop-old` after a leak): verify every token again.
            self._cache.clear()
        snap = self.registry.revocation_snapshot()
        access = self.registry.access_snapshot()
        self._revoked_jtis = snap.revoked_jtis
        self._inactive_users = snap.inactive_user_ids
        self._revoked_hashes = snap.revoked_token_hashes
        self._revoked_token_ids = snap.revoked_token_ids
        self.grants = GrantIndex(access)

    async def run_poller(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.refresh_revocations)
            except Exception:
                log.exception("could not read revocations from the registry")
            await asyncio.sleep(self.poll_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run_poller())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
