"""The console REST API (Practicus-compatible auth, model session tokens, deploy, admin).

Not the hot path, so Starlette routing is fine here. Handlers live in three small modules
(`console_auth`, `console_models`, `console_admin`) and get only the collaborators they use.
Every handler raises domain errors; `_on_error` turns them into HTTP through `http_errors`,
the one mapping. Authentication happens before any body is read, and bodies are read within
a cap (`console_io.read_body`).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
from starlette.applications import Starlette
from starlette.convertors import IntegerConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelhost.auth.login_guard import LoginThrottle
from modelhost.auth.tokens import TokenService
from modelhost.errors import ModelhostError
from modelhost.gateway.auth import Authenticator
from modelhost.gateway.console_admin import AdminHandlers
from modelhost.gateway.console_auth import AuthHandlers
from modelhost.gateway.console_io import API
from modelhost.gateway.console_models import MetaFn, ModelHandlers
from modelhost.gateway.console_versions import VersionHandlers
from modelhost.gateway.deployer import Deployer
from modelhost.gateway.http_errors import error_body, error_headers, status_of
from modelhost.gateway.openapi import openapi_document
from modelhost.gateway.routes import RouteTable
from modelhost.gateway.version_admin import VersionAdmin
from modelhost.registry import Registry
from modelhost.settings import Settings


@dataclass(frozen=True)
class ConsoleParts:
    """What the console uses, handed in by the gateway (never the gateway itself)."""

    settings: Settings
    registry: Registry
    tokens: TokenService
    auth: Authenticator
    routes: RouteTable
    deployer: Deployer
    versions: VersionAdmin
    model_meta: MetaFn
    metrics_text: Callable[[], Awaitable[bytes]]


class _IdConvertor(IntegerConvertor):
    """A database id in a path: at most 18 digits (ids are 64-bit integers in SQLite and
    PostgreSQL), so a longer number is an unknown URL (404), not an overflow in the database
    (a 500 found by tests/security/test_openapi_fuzz.py)."""

    regex = "[0-9]{1,18}"


def console_app(parts: ConsoleParts) -> Starlette:
    register_url_convertor("id", _IdConvertor())  # `{name:id}` in the routes below
    s = parts.settings
    throttle = LoginThrottle(
        parts.registry,
        max_failures=s.login_max_failures,
        window_s=s.login_window_s,
        max_lock_s=s.login_lock_max_s,
    )
    auth = AuthHandlers(
        parts.registry, parts.tokens, parts.auth, throttle, s.console_max_body_bytes
    )
    models = ModelHandlers(
        parts.auth,
        parts.tokens,
        parts.routes,
        parts.registry,
        parts.deployer,
        parts.model_meta,
        (s.console_max_body_bytes, s.max_deploy_bytes),
    )
    admin = AdminHandlers(
        parts.registry, parts.auth, parts.tokens, parts.routes, s.console_max_body_bytes
    )
    versions = VersionHandlers(admin, parts.versions, s.console_max_body_bytes)
    status = StatusHandlers(parts.routes, parts.metrics_text, admin, s.metrics_token)
    mh = f"{API}/modelhost"
    routes = [
        Route("/healthz", status.health, methods=["GET"]),
        Route("/readyz", status.ready, methods=["GET"]),
        Route("/metrics", status.metrics, methods=["GET"]),
        Route(f"{API}/auth/", auth.login, methods=["POST"]),
        Route(f"{API}/auth/refresh/", auth.refresh, methods=["POST"]),
        Route(f"{API}/auth/logout/", auth.logout, methods=["POST"]),
        Route(f"{mh}/model-auth/", models.model_auth, methods=["GET", "POST"]),
        Route(f"{mh}/deploy/", models.deploy, methods=["POST"]),
        Route(f"{mh}/models/", models.list_models, methods=["GET"]),
        Route(f"{mh}/prefixes/", admin.prefixes, methods=["GET", "POST"]),
        Route(f"{mh}/deployments/", admin.deployments, methods=["GET", "POST"]),
        Route(
            f"{mh}/deployments/{{key:str}}/",
            versions.update_deployment,
            methods=["PATCH", "POST"],
        ),
        Route(f"{mh}/models/{{model_id:id}}/versions/", versions.list_versions, methods=["GET"]),
        Route(
            f"{mh}/models/{{model_id:id}}/versions/{{version:str}}/",
            versions.delete_version,
            methods=["DELETE"],
        ),
        Route(f"{mh}/models/{{model_id:id}}/traffic/", versions.traffic, methods=["POST"]),
        Route(f"{mh}/models/{{model_id:id}}/pin/", versions.pin, methods=["POST", "DELETE"]),
        Route(f"{mh}/models/{{model_id:id}}/rollback/", versions.rollback, methods=["POST"]),
        Route(f"{mh}/access-tokens/", admin.create_access_token, methods=["POST"]),
        Route(
            f"{mh}/access-tokens/{{token_id:id}}/", admin.revoke_access_token, methods=["DELETE"]
        ),
        Route(f"{mh}/users/", admin.users, methods=["GET", "POST"]),
        Route(
            f"{mh}/users/{{user_id:id}}/{{action:str}}/", admin.set_user_active, methods=["POST"]
        ),
        Route(f"{mh}/groups/", admin.groups, methods=["GET", "POST"]),
        Route(f"{mh}/groups/{{group_id:id}}/members/", admin.group_members, methods=["POST"]),
        Route(
            f"{mh}/groups/{{group_id:id}}/members/{{user_id:id}}/",
            admin.group_members,
            methods=["DELETE"],
        ),
        Route(f"{mh}/grants/", admin.grants, methods=["GET", "POST"]),
        Route(f"{mh}/grants/{{grant_id:id}}/", admin.delete_grant, methods=["DELETE"]),
        Route(f"{mh}/audit/", admin.audit, methods=["GET"]),
        Route(f"{mh}/session-tokens/revoke/", admin.revoke_session, methods=["POST"]),
        _openapi_route(),
    ]
    return Starlette(routes=routes, exception_handlers={ModelhostError: _on_error})  # type: ignore[dict-item]


def _openapi_route() -> Route:
    """`GET /console/api/openapi.json`: the document of this API (`gateway/openapi.py`), no
    authentication (it names no model), serialized once."""
    body = orjson.dumps(openapi_document())

    async def document(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return Route(f"{API}/openapi.json", document, methods=["GET"])


async def _on_error(request: Request, exc: ModelhostError) -> Response:
    headers = {k.decode(): v.decode() for k, v in error_headers(exc)}
    return Response(error_body(exc), status_code=status_of(exc), headers=headers)


class StatusHandlers:
    def __init__(
        self,
        routes: RouteTable,
        metrics_text: Callable[[], Awaitable[bytes]],
        admin: AdminHandlers,
        metrics_token: str,
    ) -> None:
        self.routes = routes
        self.metrics_text = metrics_text
        self.admin = admin
        self.metrics_token = metrics_token

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        """200 only when every version that is not stopped is ready, else 503. A failed
        version older than a ready one of the same model does not count: a fixed redeploy
        supersedes it (it serves nothing, and it never becomes ready by itself). Anyone gets
        the verdict and the count of versions not ready; the per-model detail names every
        prefix and model, so only the metrics token or an admin gets it."""
        models: dict[str, dict[str, object]] = {}
        not_ready = 0
        for entry in self.routes.entries():
            states = {n: w.state for n, w in sorted(entry.versions.items())}
            live = {n: s for n, s in states.items() if s != "stopped"}
            newest_ready = max((n for n, s in live.items() if s == "ready"), default=0)
            not_ready += sum(
                1
                for n, s in live.items()
                if s != "ready" and not (s == "failed" and n < newest_ready)
            )
            serving = entry.serving
            models[f"{entry.prefix}/{entry.name}"] = {
                "version": serving.info.version if serving is not None else None,
                "state": serving.state if serving is not None else None,
                "versions": {f"v{n}": s for n, s in live.items()},
            }
        body: dict[str, object] = {"ready": not_ready == 0, "not_ready": not_ready}
        if request.headers.get("authorization") and await self._privileged(request):
            body["models"] = models
        return JSONResponse(body, status_code=200 if not_ready == 0 else 503)

    async def metrics(self, request: Request) -> Response:
        """Metrics name every prefix and model: only the metrics token or an admin reads them."""
        if not self._metrics_token(request):
            await self.admin.admin(request)
        return Response(await self.metrics_text(), media_type="text/plain; version=0.0.4")

    def _metrics_token(self, request: Request) -> bool:
        presented = request.headers.get("authorization", "")
        expected = f"Bearer {self.metrics_token}"
        return bool(self.metrics_token) and hmac.compare_digest(
            presented.encode(), expected.encode()
        )

    async def _privileged(self, request: Request) -> bool:
        """The metrics token or an admin's console token (a wrong one is just not privileged)."""
        if self._metrics_token(request):
            return True
        try:
            await self.admin.admin(request)
        except ModelhostError:
            return False
        return True
