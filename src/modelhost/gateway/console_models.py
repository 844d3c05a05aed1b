"""Console routes about models: session tokens (model-auth), deploy, listing.

Every answer honours grants: a caller sees, gets tokens for and deploys to only what its
grants (or its access token's scope) cover; a model outside them answers like a missing one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modelhost.auth.tokens import TokenService
from modelhost.errors import BadRequest, Forbidden, NotFound
from modelhost.gateway.auth import Authenticator
from modelhost.gateway.console_io import principal, read_body, read_json, user_principal
from modelhost.gateway.deployer import Deployer
from modelhost.gateway.routes import ModelEntry, RouteTable
from modelhost.registry import Registry
from modelhost.supervision.supervisor import VersionWorkers

MetaFn = Callable[[ModelEntry, VersionWorkers], dict[str, Any]]


class ModelHandlers:
    def __init__(
        self,
        auth: Authenticator,
        tokens: TokenService,
        routes: RouteTable,
        registry: Registry,
        deployer: Deployer,
        model_meta: MetaFn,
        limits: tuple[int, int],  # (JSON body bytes, deploy upload bytes)
    ) -> None:
        self.auth = auth
        self.tokens = tokens
        self.routes = routes
        self.registry = registry
        self.deployer = deployer
        self.model_meta = model_meta
        self.json_limit, self.deploy_limit = limits

    async def model_auth(self, request: Request) -> Response:
        who = await principal(request, self.auth)
        data = {**request.query_params, **await read_json(request, self.json_limit)}
        entry = find_model(self.routes, data)
        if entry is None or not self.auth.may_use(who, entry.prefix, entry.model_id):
            # The same answer for a missing model and a hidden one: no enumeration.
            where = data.get("model_url") or data.get("api_url") or f"id {data.get('model_id')}"
            raise NotFound(
                f"no model at {where} that this token may use; check the URL, or ask an admin "
                "for a 'use' grant (modelhost admin grant-create)"
            )
        ttl = self.tokens.session_ttl_s
        if who.expires != float("inf"):  # a session never outlives what minted it
            ttl = min(ttl, who.expires - time.time())
        token = self.tokens.issue_model_session(
            who.user_id,
            entry.model_id,
            entry.prefix,
            entry.name,
            ttl_s=max(1.0, ttl),
            parent_token_id=who.token_id if who.kind == "scoped" else None,
            # the login if known (logout or a stolen refresh token ends it), else the token
            parent_jti=(who.parent_jti or who.jti) if who.kind == "user" else None,
        )
        return JSONResponse({"token": token, "model_id": entry.model_id})

    async def deploy(self, request: Request) -> Response:
        who = await user_principal(request, self.auth)
        q = request.query_params
        deployment, prefix, name = q.get("deployment"), q.get("prefix"), q.get("name")
        if not (deployment and prefix and name):
            raise BadRequest("deploy needs ?deployment=...&prefix=...&name=...")
        prefix = prefix.strip("/")
        existing = next(
            (e for e in self.routes.entries() if e.prefix == prefix and e.name == name), None
        )
        if not self.auth.may(who, "deploy", prefix, existing.model_id if existing else None):
            raise Forbidden(
                f"you may not deploy to {prefix}/{name}; an admin can give your group a "
                f"'deploy' grant on prefix {prefix!r}"
            )
        archive = await read_body(request, self.deploy_limit, "MODELHOST_MAX_DEPLOY_BYTES")
        user = await asyncio.to_thread(self.registry.get_user, who.user_id)
        actor = user.email if user else f"user:{who.user_id}"
        wait = q.get("wait", "true").lower() != "false"
        result = await self.deployer.deploy(actor, deployment, prefix, name, archive, wait=wait)
        return JSONResponse(result)

    async def list_models(self, request: Request) -> Response:
        who = await principal(request, self.auth)
        out = []
        for entry in self.routes.entries():
            if not self.auth.may_use(who, entry.prefix, entry.model_id):
                continue
            latest = entry.latest_ready() or entry.latest()
            out.append(self.model_meta(entry, latest) if latest else _undeployed(entry))
        return JSONResponse(out)


def _undeployed(entry: ModelEntry) -> dict[str, Any]:
    """A model with no version yet: who it is, and ``versions`` empty."""
    return {
        "model_id": entry.model_id,
        "name": entry.name,
        "prefix": entry.prefix,
        "deployment": entry.deployment,
        "version": None,
        "state": None,
        "versions": {},
    }


def find_model(routes: RouteTable, data: dict[str, Any]) -> ModelEntry | None:
    """The model named by ``model_id`` or ``model_url`` (or ``api_url``) in ``data``."""
    if data.get("model_id") not in (None, ""):
        try:
            return routes.by_id(int(data["model_id"]))
        except (TypeError, ValueError):
            raise BadRequest("'model_id' must be an integer") from None
    url = data.get("model_url") or data.get("api_url")
    if not url:
        raise BadRequest("send 'model_id' or 'model_url'")
    match = routes.resolve(urlparse(str(url)).path)
    return None if match is None else match.entry
