"""A stand-in console server for the SDK unit tests.

It implements only the console endpoints the SDK calls (auth, model-auth, deploy) with
one fixed user, and records what it received. It is a test double for these tests only;
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


def build_app(state: ConsoleState) -> Starlette:
    async def auth(request: Request) -> JSONResponse:
        state.calls.append("auth")
        body = await request.json()
        if (body.get("email"), body.get("password")) != (EMAIL, PASSWORD):
            return _error(401, "unauthorized", "wrong email or password")
        ttl = state.access_ttl_s
        access = TokenService(SECRET, access_ttl_s=ttl).issue_access(1)
        return JSONResponse({"access": access, "refresh": state.tokens.issue_refresh(1)})

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
            Route("/console/api/modelhost/model-auth/", model_auth, methods=["GET", "POST"]),
            Route("/console/api/modelhost/deploy/", deploy, methods=["POST"]),
        ]
    )
