"""Console identity: password login, refresh-token rotation, logout.

Refresh tokens rotate: each use retires the token and returns the next one of its family;
presenting a retired token again means two parties hold it, so the whole family is revoked
and both must log in again. A family is one login: its access tokens carry the family id
(`fam`), and revoking that id (reuse, logout) ends them and the sessions minted with them.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modelhost.auth.login_guard import LoginThrottle, PasswordChecker
from modelhost.auth.tokens import TokenService
from modelhost.errors import Unauthorized
from modelhost.gateway.auth import Authenticator
from modelhost.gateway.console_io import authorization, client_ip, field, read_json
from modelhost.registry import Registry

# A client address may fail this many times more often than one account.
_IP_FACTOR = 10


class AuthHandlers:
    def __init__(
        self,
        registry: Registry,
        tokens: TokenService,
        auth: Authenticator,
        throttle: LoginThrottle,
        body_limit: int,
    ) -> None:
        self.registry = registry
        self.tokens = tokens
        self.auth = auth
        self.throttle = throttle
        self.passwords = PasswordChecker()
        self.body_limit = body_limit

    async def login(self, request: Request) -> Response:
        data = await read_json(request, self.body_limit)
        email, password = field(data, "email"), field(data, "password")
        account, ip = f"user:{email.strip().lower()[:320]}", f"ip:{client_ip(request)}"
        await self.throttle.check(account, ip)
        user = await asyncio.to_thread(self.registry.get_user_by_email, email)
        ok = await self.passwords.check(user.password_hash if user else None, password)
        if user is None or not ok or not user.is_active:
            await self.throttle.failed({account: None, ip: self.throttle.max_failures * _IP_FACTOR})
            await self._audit(email, "login.failure", request)
            raise Unauthorized("wrong email or password")
        await self.throttle.succeeded(account)
        await self._audit(user.email, "login.success", request)
        refresh, family = await self._refresh(user.id)
        access = self.tokens.issue_access(user.id, family=family)
        return JSONResponse({"access": access, "refresh": refresh})

    async def refresh(self, request: Request) -> Response:
        data = await read_json(request, self.body_limit)
        claims = self.tokens.verify(field(data, "refresh"), "refresh")
        row = await asyncio.to_thread(self.registry.use_refresh_token, claims.jti)
        if row is None:
            raise Unauthorized("unknown refresh token; log in again (POST /console/api/auth/)")
        if row.used or row.revoked:
            await self._end_login(row.family)
            await self._audit(f"user:{row.user_id}", "refresh.reuse", request)
            raise Unauthorized(
                "this refresh token was already used or revoked; every token of this login is "
                "now revoked; log in again (POST /console/api/auth/)"
            )
        user = await asyncio.to_thread(self.registry.get_user, claims.sub)
        if user is None or not user.is_active:
            raise Unauthorized("the user of this refresh token is disabled")
        refresh, _ = await self._refresh(user.id, row.family)
        access = self.tokens.issue_access(user.id, family=row.family)
        return JSONResponse({"access": access, "refresh": refresh})

    async def logout(self, request: Request) -> Response:
        data = await read_json(request, self.body_limit)
        claims = self.tokens.verify(field(data, "refresh"), "refresh")
        row = await asyncio.to_thread(self.registry.revoke_refresh_family, claims.jti)
        if row is None:
            raise Unauthorized("unknown refresh token")
        await self._end_login(row.family)
        await self._revoke_presented_access(request)
        await self._audit(f"user:{row.user_id}", "logout", request)
        return JSONResponse({"revoked": True})

    async def _revoke_presented_access(self, request: Request) -> None:
        """The console access token sent with a logout dies too (and its sessions)."""
        header = authorization(request)
        if not header:
            return
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or token.strip().startswith("mh_"):
            return
        try:
            claims = self.tokens.verify(token.strip(), "access")
        except Unauthorized:
            return
        expires = datetime.fromtimestamp(claims.exp, UTC)
        await asyncio.to_thread(self.registry.revoke_jti, claims.jti, expires)
        await asyncio.to_thread(self.auth.refresh_revocations)

    async def _end_login(self, family: str) -> None:
        """Every access token of this login, and the sessions minted with them, stop working."""
        lasting = max(self.tokens.access_ttl_s, self.tokens.session_ttl_s)
        until = datetime.now(UTC) + timedelta(seconds=lasting)
        await asyncio.to_thread(self.registry.revoke_jti, family, until)
        await asyncio.to_thread(self.auth.refresh_revocations)

    async def _refresh(self, user_id: int, family: str | None = None) -> tuple[str, str]:
        """A new refresh token of ``family`` (a new login when None) and the family id."""
        token = self.tokens.issue_refresh(user_id)
        claims = self.tokens.verify(token, "refresh")
        expires = datetime.fromtimestamp(claims.exp, UTC)
        family = family or claims.jti
        await asyncio.to_thread(
            self.registry.add_refresh_token, claims.jti, family, user_id, expires
        )
        return token, family

    async def _audit(self, actor: str, action: str, request: Request) -> None:
        detail = {"ip": client_ip(request)}
        await asyncio.to_thread(self.registry.audit, actor[:320], action, detail)
