"""The console REST API (Practicus-compatible auth, model session tokens, deploy, admin).

Not the hot path, so Starlette routing is fine here. Every handler raises domain errors;
`_on_error` turns them into HTTP through `http_errors`, the one mapping.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelhost.auth.passwords import verify_password
from modelhost.auth.tokens import hash_opaque, new_opaque_token
from modelhost.errors import (
    BadRequest,
    Forbidden,
    InvalidJSON,
    ModelhostError,
    NotFound,
    Unauthorized,
)
from modelhost.gateway.http_errors import error_body, error_headers, status_of
from modelhost.registry.rows import UserRow

if TYPE_CHECKING:
    from modelhost.gateway.app import Gateway

API = "/console/api"


async def _json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def _field(data: dict[str, Any], name: str, kind: type = str) -> Any:
    value = data.get(name)
    if value is None or value == "":
        raise BadRequest(f"'{name}' is required")
    if not isinstance(value, kind):
        raise BadRequest(f"'{name}' must be a {kind.__name__}")
    return value


class Console:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def app(self) -> Starlette:
        routes = [
            Route("/healthz", self.health, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route(f"{API}/auth/", self.login, methods=["POST"]),
            Route(f"{API}/auth/refresh/", self.refresh, methods=["POST"]),
            Route(f"{API}/modelhost/model-auth/", self.model_auth, methods=["GET", "POST"]),
            Route(f"{API}/modelhost/deploy/", self.deploy, methods=["POST"]),
            Route(f"{API}/modelhost/models/", self.list_models, methods=["GET"]),
            Route(f"{API}/modelhost/prefixes/", self.prefixes, methods=["GET", "POST"]),
            Route(f"{API}/modelhost/deployments/", self.deployments, methods=["GET", "POST"]),
            Route(f"{API}/modelhost/access-tokens/", self.create_access_token, methods=["POST"]),
            Route(f"{API}/modelhost/users/", self.create_user, methods=["POST"]),
            Route(
                f"{API}/modelhost/users/{{user_id:int}}/{{action:str}}/",
                self.set_user_active,
                methods=["POST"],
            ),
            Route(f"{API}/modelhost/session-tokens/revoke/", self.revoke_session, methods=["POST"]),
            Route(
                f"{API}/modelhost/access-tokens/{{token_id:int}}/",
                self.revoke_access_token,
                methods=["DELETE"],
            ),
        ]
        return Starlette(routes=routes, exception_handlers={ModelhostError: self._on_error})  # type: ignore[dict-item]

    @staticmethod
    async def _on_error(request: Request, exc: ModelhostError) -> Response:
        headers = {k.decode(): v.decode() for k, v in error_headers(exc)}
        return Response(error_body(exc), status_code=status_of(exc), headers=headers)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": len(self.gw.routes.entries())})

    async def metrics(self, request: Request) -> Response:
        return Response(self.gw.metrics_text(), media_type="text/plain; version=0.0.4")

    # --- identity -------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        data = await _json(request)
        email, password = _field(data, "email"), _field(data, "password")
        user = await asyncio.to_thread(self.gw.registry.get_user_by_email, email)
        if user is None or not user.is_active or not verify_password(user.password_hash, password):
            raise Unauthorized("wrong email or password")
        tokens = self.gw.tokens
        return JSONResponse(
            {"access": tokens.issue_access(user.id), "refresh": tokens.issue_refresh(user.id)}
        )

    async def refresh(self, request: Request) -> Response:
        data = await _json(request)
        claims = self.gw.tokens.verify(_field(data, "refresh"), "refresh")
        user = await asyncio.to_thread(self.gw.registry.get_user, claims.sub)
        if user is None or not user.is_active:
            raise Unauthorized("the user of this refresh token is disabled")
        return JSONResponse({"access": self.gw.tokens.issue_access(user.id)})

    async def _user(self, request: Request) -> UserRow:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(
                "send 'Authorization: Bearer <console access token>' (POST /console/api/auth/)"
            )
        registry = self.gw.registry
        if token.startswith("mh_"):
            row = await asyncio.to_thread(registry.get_access_token, hash_opaque(token))
            if (
                row is None
                or row.revoked
                or (row.expires_at and row.expires_at.timestamp() < time.time())
            ):
                raise Unauthorized("unknown, expired or revoked access token")
            user_id = row.user_id
        else:
            user_id = self.gw.tokens.verify(token, "access").sub
        user = await asyncio.to_thread(registry.get_user, user_id)
        if user is None or not user.is_active:
            raise Unauthorized("this user is disabled")
        return user

    async def _admin(self, request: Request) -> UserRow:
        user = await self._user(request)
        if not user.is_admin:
            raise Forbidden("this needs an admin account")
        return user

    async def model_auth(self, request: Request) -> Response:
        user = await self._user(request)
        data = {**request.query_params, **await _json(request)}
        entry = self._find_model(data)
        token = self.gw.tokens.issue_model_session(
            user.id, entry.model_id, entry.prefix, entry.name
        )
        return JSONResponse({"token": token, "model_id": entry.model_id})

    def _find_model(self, data: dict[str, Any]) -> Any:
        routes = self.gw.routes
        if data.get("model_id") not in (None, ""):
            try:
                entry = routes.by_id(int(data["model_id"]))
            except (TypeError, ValueError):
                raise BadRequest("'model_id' must be an integer") from None
            if entry is None:
                raise NotFound(f"no model with id {data['model_id']}")
            return entry
        url = data.get("model_url") or data.get("api_url")
        if not url:
            raise BadRequest("send 'model_id' or 'model_url'")
        match = routes.resolve(urlparse(str(url)).path)
        if match is None:
            raise NotFound(f"no model at {url}")
        return match.entry

    # --- deploy and admin -----------------------------------------------------------

    async def deploy(self, request: Request) -> Response:
        user = await self._admin(request)
        q = request.query_params
        deployment, prefix, name = q.get("deployment"), q.get("prefix"), q.get("name")
        if not (deployment and prefix and name):
            raise BadRequest("deploy needs ?deployment=...&prefix=...&name=...")
        archive = await request.body()
        wait = q.get("wait", "true").lower() != "false"
        result = await self.gw.deployer.deploy(
            user.email, deployment, prefix.strip("/"), name, archive, wait=wait
        )
        return JSONResponse(result)

    async def list_models(self, request: Request) -> Response:
        await self._user(request)
        out = []
        for entry in self.gw.routes.entries():
            latest = entry.latest_ready() or entry.latest()
            out.append(self.gw.model_meta(entry, latest) if latest else {"name": entry.name})
        return JSONResponse(out)

    async def prefixes(self, request: Request) -> Response:
        user = await self._admin(request)
        registry = self.gw.registry
        if request.method == "POST":
            data = await _json(request)
            row = await asyncio.to_thread(
                registry.create_prefix, _field(data, "key").strip("/"), data.get("description", "")
            )
            await asyncio.to_thread(registry.audit, user.email, "prefix.create", {"key": row.key})
            return JSONResponse({"id": row.id, "key": row.key}, status_code=201)
        rows = await asyncio.to_thread(registry.list_prefixes)
        return JSONResponse([{"id": r.id, "key": r.key} for r in rows])

    async def deployments(self, request: Request) -> Response:
        user = await self._admin(request)
        registry = self.gw.registry
        if request.method == "POST":
            data = await _json(request)
            replicas = data.get("replicas", 1)
            if not isinstance(replicas, int) or not 1 <= replicas <= 64:
                raise BadRequest("'replicas' must be an integer from 1 to 64")
            row = await asyncio.to_thread(registry.create_deployment, _field(data, "key"), replicas)
            await asyncio.to_thread(
                registry.audit, user.email, "deployment.create", {"key": row.key}
            )
            return JSONResponse(
                {"id": row.id, "key": row.key, "replicas": row.replicas}, status_code=201
            )
        rows = await asyncio.to_thread(registry.list_deployments)
        return JSONResponse([{"id": r.id, "key": r.key, "replicas": r.replicas} for r in rows])

    async def create_access_token(self, request: Request) -> Response:
        user = await self._admin(request)
        data = await _json(request)
        registry = self.gw.registry
        prefix_id = model_id = None
        if data.get("prefix"):
            prefix = await asyncio.to_thread(registry.get_prefix, str(data["prefix"]).strip("/"))
            if prefix is None:
                raise NotFound(f"no prefix '{data['prefix']}'")
            prefix_id = prefix.id
        elif data.get("model_id") is not None or data.get("model_url"):
            model_id = self._find_model(data).model_id
        else:
            raise BadRequest("an access token needs a 'prefix' or a 'model_id'")
        ttl = data.get("ttl_s")
        if ttl is not None and (not isinstance(ttl, int) or ttl <= 0):
            raise BadRequest("'ttl_s' must be a positive integer (seconds)")
        from datetime import UTC, datetime, timedelta

        expires = datetime.now(UTC) + timedelta(seconds=ttl) if ttl else None
        token = new_opaque_token()
        row = await asyncio.to_thread(
            registry.create_access_token,
            str(data.get("name", "")),
            hash_opaque(token),
            user.id,
            prefix_id,
            model_id,
            expires,
        )
        await asyncio.to_thread(registry.audit, user.email, "access_token.create", {"id": row.id})
        return JSONResponse({"id": row.id, "token": token}, status_code=201)

    async def create_user(self, request: Request) -> Response:
        admin = await self._admin(request)
        data = await _json(request)
        email, password = _field(data, "email"), _field(data, "password")
        if len(password) < 8:
            raise BadRequest("'password' must have at least 8 characters")
        is_admin = bool(data.get("is_admin", False))
        from modelhost.auth.passwords import hash_password

        row = await asyncio.to_thread(
            self.gw.registry.create_user, email, hash_password(password), is_admin
        )
        await asyncio.to_thread(self.gw.registry.audit, admin.email, "user.create", {"id": row.id})
        return JSONResponse({"id": row.id, "email": row.email, "is_admin": row.is_admin}, 201)

    async def set_user_active(self, request: Request) -> Response:
        admin = await self._admin(request)
        user_id, action = request.path_params["user_id"], request.path_params["action"]
        if action not in ("disable", "enable"):
            raise NotFound(f"no action '{action}'; use disable or enable")
        if user_id == admin.id and action == "disable":
            raise BadRequest("an admin cannot disable their own account")
        registry = self.gw.registry
        row = await asyncio.to_thread(registry.set_user_active, user_id, action == "enable")
        await asyncio.to_thread(registry.audit, admin.email, f"user.{action}", {"id": user_id})
        return JSONResponse({"id": row.id, "is_active": row.is_active})

    async def revoke_session(self, request: Request) -> Response:
        user = await self._user(request)
        data = await _json(request)
        claims = self.gw.tokens.verify(_field(data, "token"), "model")
        if claims.sub != user.id and not user.is_admin:
            raise Forbidden("only the token's owner or an admin can revoke it")
        from datetime import UTC, datetime

        expires = datetime.fromtimestamp(claims.exp, UTC)
        await asyncio.to_thread(self.gw.registry.revoke_jti, claims.jti, expires)
        await asyncio.to_thread(
            self.gw.registry.audit, user.email, "session_token.revoke", {"jti": claims.jti}
        )
        return JSONResponse({"revoked": True})

    async def revoke_access_token(self, request: Request) -> Response:
        user = await self._admin(request)
        token_id = request.path_params["token_id"]
        await asyncio.to_thread(self.gw.registry.revoke_access_token, token_id)
        await asyncio.to_thread(
            self.gw.registry.audit, user.email, "access_token.revoke", {"id": token_id}
        )
        return JSONResponse({"revoked": token_id})
