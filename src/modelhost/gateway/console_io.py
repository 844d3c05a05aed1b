"""Reading console requests safely: bodies within a cap, JSON objects, required fields, and
the caller's principal. Shared by the console's handler modules."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from modelhost.errors import BadRequest, Forbidden, InvalidJSON, PayloadTooLarge
from modelhost.gateway.auth import CONSOLE_KINDS, Authenticator, Principal

API = "/console/api"


async def read_body(request: Request, limit: int, setting: str) -> bytes:
    """The body, refused with 413 as soon as it is known to pass ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit, setting)
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, setting)
        parts.append(chunk)
    return b"".join(parts)


def _too_large(limit: int, setting: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is over {limit} bytes; send less, or raise {setting}")


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    raw = await read_body(request, limit, "MODELHOST_CONSOLE_MAX_BODY_BYTES")
    if not raw:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def field(data: dict[str, Any], name: str, kind: type = str) -> Any:
    value = data.get(name)
    if value is None or value == "":
        raise BadRequest(f"'{name}' is required")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"'{name}' must be a {kind.__name__}")
    return value


def authorization(request: Request) -> bytes | None:
    value = request.headers.get("authorization")
    return None if value is None else value.encode("latin-1", "replace")


async def principal(request: Request, auth: Authenticator) -> Principal:
    """The caller: a console access token (a user) or a long-lived access token (scoped)."""
    return await auth.authenticate(authorization(request), CONSOLE_KINDS)


async def user_principal(request: Request, auth: Authenticator) -> Principal:
    """The caller, who must be a user: access tokens never act for their creator."""
    who = await principal(request, auth)
    if who.kind != "user":
        raise Forbidden(
            "a long-lived access token may only get session tokens for models in its scope; "
            "log in (POST /console/api/auth/) for this"
        )
    return who


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"
