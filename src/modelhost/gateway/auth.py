"""Who is calling a model route, and may they: the gateway's one authentication backend.

Verified tokens are cached in memory until they expire, so the hot path costs one dict
lookup. Revocations (revoked session-token ids, disabled users, revoked access tokens) are
polled from the registry every `revocation_poll_s` seconds and checked on every hit: a
revoked token stops working within that bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from modelhost.auth.tokens import TokenService, hash_opaque
from modelhost.errors import Forbidden, Unauthorized
from modelhost.gateway.routes import ModelEntry
from modelhost.registry import Registry

log = logging.getLogger("modelhost.auth")
_CACHE_MAX = 100_000


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: int
    expires: float  # epoch seconds; inf for access tokens without expiry
    model_id: int | None = None  # session tokens: exactly this model
    prefix: str | None = None  # access tokens: every model under this prefix
    jti: str = ""
    token_hash: str = ""

    def may_call(self, entry: ModelEntry) -> bool:
        if self.model_id is not None:
            return self.model_id == entry.model_id
        if self.prefix is not None:
            return entry.prefix == self.prefix or entry.prefix.startswith(self.prefix + "/")
        return False


class Authenticator:
    def __init__(self, tokens: TokenService, registry: Registry, poll_s: float) -> None:
        self.tokens = tokens
        self.registry = registry
        self.poll_s = poll_s
        self._cache: dict[bytes, Principal] = {}
        self._revoked_jtis: frozenset[str] = frozenset()
        self._inactive_users: frozenset[int] = frozenset()
        self._revoked_hashes: frozenset[str] = frozenset()
        self._task: asyncio.Task[None] | None = None

    async def authenticate(self, authorization: bytes | None) -> Principal:
        """The caller; verifies (and caches) a token seen for the first time."""
        principal = self.cached(authorization)
        if principal is None:
            assert authorization is not None  # `cached` raised otherwise
            principal = self._checked(authorization, await self._verify(authorization))
        return principal

    def cached(self, authorization: bytes | None) -> Principal | None:
        """The caller if this token was verified before (no await on the hot path), else None."""
        if not authorization:
            raise Unauthorized(
                "no token: send 'Authorization: Bearer <session token>'; "
                "get one with get_session_token(api_url)"
            )
        principal = self._cache.get(authorization)
        return None if principal is None else self._checked(authorization, principal)

    def _checked(self, authorization: bytes, principal: Principal) -> Principal:
        if principal.expires < time.time():
            self._cache.pop(authorization, None)
            raise Unauthorized(
                "the token has expired; get a new one with get_session_token(api_url)"
            )
        if (
            principal.user_id in self._inactive_users
            or (principal.jti and principal.jti in self._revoked_jtis)
            or (principal.token_hash and principal.token_hash in self._revoked_hashes)
        ):
            raise Unauthorized("the token was revoked; ask for a new one")
        return principal

    @staticmethod
    def authorize(principal: Principal, entry: ModelEntry) -> None:
        if not principal.may_call(entry):
            raise Forbidden(
                f"this token is not valid for {entry.prefix}/{entry.name}; "
                "get a session token for this model's URL"
            )

    async def _verify(self, authorization: bytes) -> Principal:
        scheme, _, raw = authorization.decode("latin-1").partition(" ")
        token = raw.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        if token.startswith("mh_"):
            principal = await asyncio.to_thread(self._lookup_access_token, token)
        else:
            claims = self.tokens.verify(token, "model")
            principal = Principal(
                user_id=claims.sub, expires=claims.exp, model_id=claims.mid, jti=claims.jti
            )
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[authorization] = principal
        return principal

    def _lookup_access_token(self, token: str) -> Principal:
        digest = hash_opaque(token)
        row = self.registry.get_access_token(digest)
        if row is None or row.revoked:
            raise Unauthorized("unknown or revoked access token")
        expires = row.expires_at.timestamp() if row.expires_at else float("inf")
        return Principal(
            user_id=row.user_id,
            expires=expires,
            model_id=row.model_id,
            prefix=row.prefix_key,
            token_hash=digest,
        )

    def refresh_revocations(self) -> None:
        snap = self.registry.revocation_snapshot()
        self._revoked_jtis = snap.revoked_jtis
        self._inactive_users = snap.inactive_user_ids
        self._revoked_hashes = snap.revoked_token_hashes

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
