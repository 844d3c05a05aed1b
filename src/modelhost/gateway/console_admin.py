"""Admin console routes: prefixes, deployments, users, groups, grants, access tokens, audit.
(Versions, traffic and live deployment changes: `console_versions`.)

Only a logged-in admin user reaches these (checked against the registry on every call, not
a cache); long-lived access tokens never do, whoever created them. Changes to users, groups
and grants refresh this gateway's grant index at once.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modelhost.auth.passwords import hash_password
from modelhost.auth.tokens import TokenService, hash_opaque, new_opaque_token
from modelhost.errors import BadRequest, Forbidden, NotFound
from modelhost.gateway.auth import Authenticator
from modelhost.gateway.console_io import field, principal, read_json, user_principal
from modelhost.gateway.console_models import find_model
from modelhost.gateway.routes import RouteTable
from modelhost.registry import DEPLOYMENT_SETTINGS, DeploymentRow, Registry, UserRow


class AdminHandlers:
    def __init__(
        self,
        registry: Registry,
        auth: Authenticator,
        tokens: TokenService,
        routes: RouteTable,
        body_limit: int,
    ) -> None:
        self.registry = registry
        self.auth = auth
        self.tokens = tokens
        self.routes = routes
        self.body_limit = body_limit

    async def admin(self, request: Request) -> UserRow:
        who = await user_principal(request, self.auth)
        user = await asyncio.to_thread(self.registry.get_user, who.user_id)
        if user is None or not user.is_active or not user.is_admin:
            raise Forbidden("this needs an admin account")
        return user

    async def _body(self, request: Request) -> dict[str, Any]:
        return await read_json(request, self.body_limit)

    async def _audit(self, actor: UserRow, action: str, detail: dict[str, Any]) -> None:
        await asyncio.to_thread(self.registry.audit, actor.email, action, detail)

    async def _changed_access(self) -> None:
        await asyncio.to_thread(self.auth.refresh_revocations)

    # -- prefixes and deployments ------------------------------------------------------

    async def prefixes(self, request: Request) -> Response:
        user = await self.admin(request)
        if request.method == "POST":
            data = await self._body(request)
            key = field(data, "key").strip("/")
            row = await asyncio.to_thread(
                self.registry.create_prefix, key, str(data.get("description", ""))
            )
            await self._audit(user, "prefix.create", {"key": row.key})
            return JSONResponse({"id": row.id, "key": row.key}, status_code=201)
        rows = await asyncio.to_thread(self.registry.list_prefixes)
        return JSONResponse([{"id": r.id, "key": r.key} for r in rows])

    async def deployments(self, request: Request) -> Response:
        user = await self.admin(request)
        if request.method == "POST":
            data = await self._body(request)
            changes = deployment_changes(data, partial=False)
            key = field(data, "key")
            row = await asyncio.to_thread(lambda: self.registry.create_deployment(key, **changes))
            await self._audit(user, "deployment.create", {"key": row.key, **changes})
            return JSONResponse(deployment_json(row), status_code=201)
        rows = await asyncio.to_thread(self.registry.list_deployments)
        return JSONResponse([deployment_json(r) for r in rows])

    # -- users and groups --------------------------------------------------------------

    async def users(self, request: Request) -> Response:
        admin = await self.admin(request)
        if request.method == "GET":
            rows = await asyncio.to_thread(self.registry.list_users)
            return JSONResponse([_user_json(r) for r in rows])
        data = await self._body(request)
        email, password = field(data, "email"), field(data, "password")
        if len(password) < 8:
            raise BadRequest("'password' must have at least 8 characters")
        is_admin = data.get("is_admin", False)
        if not isinstance(is_admin, bool):
            raise BadRequest("'is_admin' must be true or false")
        hashed = await asyncio.to_thread(hash_password, password)
        row = await asyncio.to_thread(self.registry.create_user, email, hashed, is_admin)
        await self._audit(admin, "user.create", {"id": row.id, "is_admin": is_admin})
        await self._changed_access()
        return JSONResponse(_user_json(row), 201)

    async def set_user_active(self, request: Request) -> Response:
        admin = await self.admin(request)
        user_id, action = request.path_params["user_id"], request.path_params["action"]
        if action not in ("disable", "enable"):
            raise NotFound(f"no action '{action}'; use disable or enable")
        if user_id == admin.id and action == "disable":
            raise BadRequest("an admin cannot disable their own account")
        row = await asyncio.to_thread(self.registry.set_user_active, user_id, action == "enable")
        await self._audit(admin, f"user.{action}", {"id": user_id})
        await self._changed_access()
        return JSONResponse({"id": row.id, "is_active": row.is_active})

    async def groups(self, request: Request) -> Response:
        admin = await self.admin(request)
        if request.method == "GET":
            rows = await asyncio.to_thread(self.registry.list_groups)
            return JSONResponse([{"id": g.id, "name": g.name, "members": g.members} for g in rows])
        name = field(await self._body(request), "name").strip()
        row = await asyncio.to_thread(self.registry.create_group, name)
        await self._audit(admin, "group.create", {"id": row.id, "name": row.name})
        return JSONResponse({"id": row.id, "name": row.name}, status_code=201)

    async def group_members(self, request: Request) -> Response:
        admin = await self.admin(request)
        group_id = request.path_params["group_id"]
        if request.method == "DELETE":
            user_id = request.path_params["user_id"]
            await asyncio.to_thread(self.registry.remove_group_member, group_id, user_id)
            await self._audit(admin, "group.remove", {"group": group_id, "user": user_id})
        else:
            user = await self._user_by_email(field(await self._body(request), "email"))
            user_id = user.id
            await asyncio.to_thread(self.registry.add_group_member, group_id, user_id)
            await self._audit(admin, "group.add", {"group": group_id, "user": user_id})
        await self._changed_access()
        return JSONResponse({"group_id": group_id, "user_id": user_id})

    async def _user_by_email(self, email: str) -> UserRow:
        user = await asyncio.to_thread(self.registry.get_user_by_email, email)
        if user is None:
            raise NotFound(f"no user {email!r}")
        return user

    # -- grants ------------------------------------------------------------------------

    async def grants(self, request: Request) -> Response:
        admin = await self.admin(request)
        if request.method == "GET":
            rows = await asyncio.to_thread(self.registry.list_grants)
            return JSONResponse([g.to_json() for g in rows])
        data = await self._body(request)
        who = await self._grantee(data)
        where = await self._grant_target(data)
        permission = field(data, "permission")
        row = await asyncio.to_thread(
            lambda: self.registry.create_grant(permission, **who, **where)
        )
        await self._audit(admin, "grant.create", row.to_json())
        await self._changed_access()
        return JSONResponse(row.to_json(), status_code=201)

    async def delete_grant(self, request: Request) -> Response:
        admin = await self.admin(request)
        grant_id = request.path_params["grant_id"]
        await asyncio.to_thread(self.registry.delete_grant, grant_id)
        await self._audit(admin, "grant.delete", {"id": grant_id})
        await self._changed_access()
        return JSONResponse({"deleted": grant_id})

    async def _grantee(self, data: dict[str, Any]) -> dict[str, int]:
        if data.get("group"):
            group = await asyncio.to_thread(self.registry.get_group, str(data["group"]))
            if group is None:
                raise NotFound(f"no group {data['group']!r}")
            return {"group_id": group.id}
        if data.get("user"):
            return {"user_id": (await self._user_by_email(str(data["user"]))).id}
        raise BadRequest("a grant needs 'group' (a group name) or 'user' (an email)")

    async def _grant_target(self, data: dict[str, Any]) -> dict[str, int]:
        if data.get("prefix"):
            key = str(data["prefix"]).strip("/")
            prefix = await asyncio.to_thread(self.registry.get_prefix, key)
            if prefix is None:
                raise NotFound(f"no prefix {key!r}")
            return {"prefix_id": prefix.id}
        if data.get("model_id") not in (None, "") or data.get("model_url"):
            entry = find_model(self.routes, data)
            if entry is None:
                raise NotFound("no such model")
            return {"model_id": entry.model_id}
        raise BadRequest("a grant needs 'prefix', 'model_url' or 'model_id'")

    # -- tokens and audit --------------------------------------------------------------

    async def create_access_token(self, request: Request) -> Response:
        user = await self.admin(request)
        data = await self._body(request)
        where = await self._grant_target(data)
        ttl = data.get("ttl_s")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0):
            raise BadRequest("'ttl_s' must be a positive integer (seconds)")
        expires = datetime.now(UTC) + timedelta(seconds=ttl) if ttl else None
        token = new_opaque_token()
        row = await asyncio.to_thread(
            self.registry.create_access_token,
            str(data.get("name", ""))[:255],
            hash_opaque(token),
            user.id,
            where.get("prefix_id"),
            where.get("model_id"),
            expires,
        )
        await self._audit(user, "access_token.create", {"id": row.id})
        return JSONResponse({"id": row.id, "token": token}, status_code=201)

    async def revoke_access_token(self, request: Request) -> Response:
        user = await self.admin(request)
        token_id = request.path_params["token_id"]
        await asyncio.to_thread(self.registry.revoke_access_token, token_id)
        await self._audit(user, "access_token.revoke", {"id": token_id})
        await self._changed_access()
        return JSONResponse({"revoked": token_id})

    async def revoke_session(self, request: Request) -> Response:
        who = await principal(request, self.auth)
        data = await self._body(request)
        claims = self.tokens.verify(field(data, "token"), "model")
        if who.kind == "scoped":  # an access token revokes only the sessions it minted
            allowed = claims.atk is not None and claims.atk == who.token_id
        else:
            allowed = claims.sub == who.user_id or self.auth.is_admin(who)
        if not allowed:
            raise Forbidden("only the token's owner or an admin can revoke it")
        expires = datetime.fromtimestamp(claims.exp, UTC)
        await asyncio.to_thread(self.registry.revoke_jti, claims.jti, expires)
        actor = f"user:{who.user_id}"
        await asyncio.to_thread(
            self.registry.audit, actor, "session_token.revoke", {"jti": claims.jti}
        )
        await self._changed_access()
        return JSONResponse({"revoked": True})

    async def audit(self, request: Request) -> Response:
        await self.admin(request)
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            raise BadRequest("'limit' must be an integer") from None
        rows = await asyncio.to_thread(self.registry.list_audit, max(1, min(limit, 10_000)))
        return JSONResponse(
            [
                {
                    "id": r.id,
                    "ts": r.ts.isoformat(),
                    "actor": r.actor,
                    "action": r.action,
                    "detail": r.detail,
                }
                for r in rows
            ]
        )


DEPLOYMENT_FIELDS = ("replicas", *DEPLOYMENT_SETTINGS)


def deployment_changes(data: dict[str, Any], partial: bool) -> dict[str, Any]:
    """The deployment fields in `data`, checked (replicas 1..64; limits >= 0 or null)."""
    changes = {k: data[k] for k in DEPLOYMENT_FIELDS if k in data}
    if "replicas" in changes or not partial:
        replicas = changes.get("replicas", 1)
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 64:
            raise BadRequest("'replicas' must be an integer from 1 to 64")
        changes["replicas"] = replicas
    return changes


def deployment_json(row: DeploymentRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "key": row.key,
        "replicas": row.replicas,
        **{name: getattr(row, name) for name in DEPLOYMENT_SETTINGS},
    }


def _user_json(row: UserRow) -> dict[str, Any]:
    return {"id": row.id, "email": row.email, "is_admin": row.is_admin, "is_active": row.is_active}
