"""A stand-in console server for the SDK unit tests.

It implements only the console endpoints the SDK calls (auth, refresh, logout, model-auth,
deploy) with one fixed user, and records what it received. Refresh tokens rotate as on the
real server: each is good once, and presenting a used one again revokes its whole family
(every refresh token descended from the same login). It is a test double for these tests only;
end-to-end tests run the SDK against the real gateway.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from modelhost.auth import TokenService

EMAIL = "dev@example.com"
PASSWORD = "s3cret-pw"
ACCESS_TOKEN = "mh_fixed-long-lived-token"
SECRET = "test-secret-" * 4


@dataclass
class ConsoleState:
    """What the fake console saw and how it behaves; reset for every test."""

    calls: list[str] = field(default_factory=list)
    bearers: list[str] = field(default_factory=list)
    model_urls: list[dict[str, Any]] = field(default_factory=list)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)
    access_ttl_s: float = 3600
    tokens: TokenService = field(default_factory=lambda: TokenService(SECRET))
    # refresh token jti -> family (login) id; used jtis; revoked families
    refresh_family: dict[str, str] = field(default_factory=dict)
    refresh_used: set[str] = field(default_factory=set)
    revoked_families: set[str] = field(default_factory=set)
    refresh_seen: list[str] = field(default_factory=list)
    # False: answer refresh with {"access"} only, as the server did before rotation
    rotate_refresh: bool = True

    def new_refresh(self, family: str) -> str:
        token = self.tokens.issue_refresh(1)
        self.refresh_family[self.tokens.verify(token, "refresh").jti] = family
        return token

    def live_family(self, token: str) -> str | None:
        """The login `token` belongs to, if it may still be used; a reuse revokes it."""
        try:
            jti = self.tokens.verify(token, "refresh").jti
        except Exception:
            return None
        family = self.refresh_family.get(jti)
        if family is None or family in self.revoked_families:
            return None
        if jti in self.refresh_used:  # reuse: someone has a copy; end the whole login
            self.revoked_families.add(family)
            return None
        return family


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


def _authorized(request: Request, state: ConsoleState) -> bool:
    bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
    state.bearers.append(bearer)
    if bearer == ACCESS_TOKEN:
        return True
    if bearer in state.revoked:
        return False
    try:
        state.tokens.verify(bearer, "access")
    except Exception:
        return False
    return True


def _refresh_routes(state: ConsoleState) -> list[Route]:
    """POST /auth/refresh/ (rotating) and /auth/logout/ (revokes the login)."""

    async def refresh(request: Request) -> JSONResponse:
        state.calls.append("refresh")
        token = str((await request.json()).get("refresh", ""))
        state.refresh_seen.append(token)
        family = state.live_family(token)
        if family is None:
            return _error(401, "unauthorized", "refresh token expired or revoked; log in again")
        access = TokenService(SECRET, access_ttl_s=state.access_ttl_s).issue_access(1)
        if not state.rotate_refresh:
            return JSONResponse({"access": access})
        state.refresh_used.add(state.tokens.verify(token, "refresh").jti)
        return JSONResponse({"access": access, "refresh": state.new_refresh(family)})

    async def logout(request: Request) -> JSONResponse:
        state.calls.append("logout")
        family = state.live_family(str((await request.json()).get("refresh", "")))
        if family is None:
            return _error(401, "unauthorized", "refresh token expired or revoked")
        state.revoked_families.add(family)
        return JSONResponse({"revoked": True})

    return [
        Route("/console/api/auth/refresh/", refresh, methods=["POST"]),
        Route("/console/api/auth/logout/", logout, methods=["POST"]),
    ]


def build_app(state: ConsoleState) -> Starlette:
    async def auth(request: Request) -> JSONResponse:
        state.calls.append("auth")
        body = await request.json()
        if (body.get("email"), body.get("password")) != (EMAIL, PASSWORD):
            return _error(401, "unauthorized", "wrong email or password")
        ttl = state.access_ttl_s
        access = TokenService(SECRET, access_ttl_s=ttl).issue_access(1)
        family = f"f{len(state.refresh_family)}"
        return JSONResponse({"access": access, "refresh": state.new_refresh(family)})

    async def model_auth(request: Request) -> JSONResponse:
        state.calls.append("model-auth")
        if not _authorized(request, state):
            return _error(401, "unauthorized", "console access token expired; log in again")
        body = await request.json() if await request.body() else {}
        state.model_urls.append({"json": body, "query": dict(request.query_params)})
        token = state.tokens.issue_model_session(1, 9, "llm-models", "llama")
        return JSONResponse({"token": token, "model_id": 9})

    async def deploy(request: Request) -> JSONResponse:
        state.calls.append("deploy")
        if not _authorized(request, state):
            return _error(401, "unauthorized", "console access token expired; log in again")
        raw = await request.body()
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            names = sorted(tar.getnames())
        params = dict(request.query_params)
        state.uploads.append(
            {"params": params, "names": names, "type": request.headers.get("content-type")}
        )
        if params.get("name") == "broken":
            return _error(400, "invalid_model_folder", "model.py, line 3: invalid syntax")
        url = f"{request.base_url}{params['prefix']}/{params['name']}/"
        return JSONResponse(
            {
                "api_url": url,
                "api_version_url": url + "v1/",
                "api_meta_url": url + "?get_meta=true",
                "version": 1,
            }
        )

    return Starlette(
        routes=[
            Route("/console/api/auth/", auth, methods=["POST"]),
            *_refresh_routes(state),
            Route("/console/api/modelhost/model-auth/", model_auth, methods=["GET", "POST"]),
            Route("/console/api/modelhost/deploy/", deploy, methods=["POST"]),
        ]
    )
