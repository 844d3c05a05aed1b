"""Admin console routes for versions and deployments: list versions, set traffic weights,
pin, roll back, delete a version, change a deployment's replicas and limits.

Admin only (the same check as `console_admin`); each change is in the audit log
(`VersionAdmin` writes it). Versions are named `v3` or `3` in bodies.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modelhost.errors import BadRequest
from modelhost.gateway.console_admin import (
    DEPLOYMENT_FIELDS,
    AdminHandlers,
    deployment_changes,
    deployment_json,
)
from modelhost.gateway.console_io import read_json
from modelhost.gateway.version_admin import VersionAdmin
from modelhost.registry.repo import MAX_TRAFFIC_WEIGHT as MAX_WEIGHT


class VersionHandlers:
    def __init__(self, admins: AdminHandlers, versions: VersionAdmin, body_limit: int) -> None:
        self.admins = admins
        self.versions = versions
        self.body_limit = body_limit

    async def list_versions(self, request: Request) -> Response:
        await self.admins.admin(request)
        return JSONResponse(await self.versions.describe(request.path_params["model_id"]))

    async def traffic(self, request: Request) -> Response:
        """`{"weights": {"v1": 70, "v2": 30}}`; `{"weights": {}}` or null: newest serves."""
        user = await self.admins.admin(request)
        model_id = request.path_params["model_id"]
        raw = (await read_json(request, self.body_limit)).get("weights") or {}
        if not isinstance(raw, dict):
            raise BadRequest('\'weights\' must be an object, e.g. {"v1": 70, "v2": 30}')
        weights = {version_number(k): _weight(k, v) for k, v in raw.items()}
        await self.versions.set_weights(user.email, model_id, weights)
        return JSONResponse(await self.versions.describe(model_id))

    async def pin(self, request: Request) -> Response:
        """POST `{"version": "v2"}` pins; DELETE (or `{"version": null}`) lifts the pin."""
        user = await self.admins.admin(request)
        model_id = request.path_params["model_id"]
        number = None
        if request.method == "POST":
            data = await read_json(request, self.body_limit)
            if "version" not in data:
                raise BadRequest("'version' is required (null, or DELETE, lifts the pin)")
            number = None if data["version"] is None else version_number(data["version"])
        await self.versions.pin(user.email, model_id, number)
        return JSONResponse(await self.versions.describe(model_id))

    async def rollback(self, request: Request) -> Response:
        user = await self.admins.admin(request)
        model_id = request.path_params["model_id"]
        target = await self.versions.rollback(user.email, model_id)
        return JSONResponse({"pinned": f"v{target}", **await self.versions.describe(model_id)})

    async def delete_version(self, request: Request) -> Response:
        user = await self.admins.admin(request)
        model_id = request.path_params["model_id"]
        number = version_number(request.path_params["version"])
        await self.versions.delete(user.email, model_id, number)
        return JSONResponse({"deleted": f"v{number}", **await self.versions.describe(model_id)})

    async def update_deployment(self, request: Request) -> Response:
        """`{"replicas": 2, "predict_timeout_s": 30, "max_queue": 64, "memory_mb": 2048}`,
        any subset; null (or naming it in `"clear": [...]`) sets a limit back to the server's
        setting."""
        user = await self.admins.admin(request)
        data = await read_json(request, self.body_limit)
        clear = data.pop("clear", None) or []
        if not isinstance(clear, list):
            raise BadRequest("'clear' must be a list of setting names")
        changes = deployment_changes({**data, **{str(k): None for k in clear}}, partial=True)
        if not changes:
            raise BadRequest(f"nothing to change; send any of {', '.join(DEPLOYMENT_FIELDS)}")
        row = await self.versions.update_deployment(user.email, request.path_params["key"], changes)
        return JSONResponse(deployment_json(row))


def version_number(value: Any) -> int:
    text = str(value)
    digits = text[1:] if text[:1] in ("v", "V") else text
    # ASCII digits only (not '²'), and few enough for the registry's integer column
    if isinstance(value, bool) or not (digits.isascii() and digits.isdigit()) or len(digits) > 9:
        raise BadRequest(f"{value!r} is not a version; use v3 or 3")
    return int(digits)


def _weight(version: Any, weight: Any) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
        raise BadRequest(f"the weight of {version!r} must be an integer from 0 to {MAX_WEIGHT}")
    return weight
