"""The OpenAPI 3.0 document of modelhost's HTTP API: the console and the model routes.

Built in code rather than kept as a JSON file so that each shape (the error body, a model's
meta, the 503 with `Retry-After`) is written once. The console serves it at
`GET /console/api/openapi.json` without authentication: it describes routes and never names a
model. `tests/security/test_openapi_fuzz.py` fuzzes a real server with it (no 5xx, every
status documented) and checks that every console route is in it, so it stays true.

Model URLs take any number of prefix segments (`/a/b/model/`); a path parameter cannot
hold a `/`, so the document shows the one-segment form.
"""

from __future__ import annotations

import copy
from typing import Any

Json = dict[str, Any]

JSON = "application/json"
API = "/console/api"
MH = f"{API}/modelhost"

_REASONS = {
    400: "Bad request: a missing or invalid field, a body that is not a JSON object",
    401: "No credentials, or invalid, expired or revoked ones",
    403: "Authenticated, but not allowed (not an admin; no grant)",
    404: "No such object, or one the caller may not see (answered alike)",
    405: "Method not allowed (see `Allow`)",
    409: "Conflict with an existing object (a duplicate name)",
    413: "The body is over the configured limit",
    415: "The Content-Type header is not a media type",
    429: "Too many attempts or requests: retry after `Retry-After` seconds",
    500: "The model's own code failed (never the platform)",
    503: "The model is loading or restarting: retry after `Retry-After` seconds",
    504: "The model did not answer within its deadline",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: dict[str, Json], optional: dict[str, Json] | None = None) -> Json:
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
    }


def _array(item: Json) -> Json:
    return {"type": "array", "items": item}


STR: Json = {"type": "string"}
INT: Json = {"type": "integer"}
BOOL: Json = {"type": "boolean"}
ANY: Json = {}
NULL_STR: Json = {"type": "string", "nullable": True}
NULL_INT: Json = {"type": "integer", "nullable": True}
ID: Json = {"type": "integer", "minimum": 0}
SEGMENT: Json = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$"}  # of a model URL

REPLICAS: Json = {"type": "integer", "minimum": 1, "maximum": 64}
# Per-deployment settings (registry.DEPLOYMENT_SETTINGS); null = the server's setting.
LIMITS: dict[str, Json] = {
    "predict_timeout_s": {"type": "number", "minimum": 0, "nullable": True},
    "max_queue": {"type": "integer", "minimum": 0, "nullable": True},
    "memory_mb": {"type": "integer", "minimum": 0, "nullable": True},
    "min_replicas": {"type": "integer", "minimum": 0, "maximum": 64, "nullable": True},
    "max_replicas": {"type": "integer", "minimum": 1, "maximum": 64, "nullable": True},
    "target_ongoing_requests": {"type": "number", "minimum": 0.01, "nullable": True},
    "scale_down_delay_s": {"type": "number", "minimum": 0, "maximum": 86400, "nullable": True},
    "num_cpus": {"type": "number", "minimum": 0, "maximum": 1024, "nullable": True},
    "num_gpus": {"type": "number", "minimum": 0, "maximum": 64, "nullable": True},
    "ray_resources": {
        "type": "object",
        "additionalProperties": {"type": "number", "minimum": 0},
        "maxProperties": 32,
        "nullable": True,
    },
    "placement": {"type": "string", "enum": ["pack", "spread"], "nullable": True},
}

SCHEMAS: dict[str, Json] = {
    "Error": _obj({"error": _obj({"type": STR, "message": STR})}),
    "Login": _obj({"email": STR, "password": STR}),
    "RefreshToken": _obj({"refresh": STR}),
    "Tokens": _obj({"access": STR, "refresh": STR}),
    "Revoked": _obj({"revoked": ANY}),
    "ModelRef": {
        **_obj({}, {"model_id": INT, "model_url": STR, "api_url": STR}),
        "description": "`model_id`, or the model's URL as `model_url` (or `api_url`)",
    },
    "SessionToken": _obj({"token": STR, "model_id": INT}),
    "Deployed": _obj(
        {
            "api_url": STR,
            "api_version_url": STR,
            "api_meta_url": STR,
            "model_id": INT,
            "version": INT,
            "state": STR,
        },
        {"reason": NULL_STR},
    ),
    "ModelMeta": _obj(
        {
            "model_id": INT,
            "name": STR,
            "prefix": STR,
            "version": NULL_INT,
            "deployment": STR,
            "state": NULL_STR,
            "versions": {"type": "object", "additionalProperties": STR},
        },
        {
            "reason": NULL_STR,
            "model_json": {"type": "object", "nullable": True},
            "hooks": ANY,
            "pod_name": NULL_STR,
            "replicas": INT,
            "restarts": INT,
            "last_exit": NULL_STR,
            "replica_states": _array({"type": "object"}),
        },
    ),
    "Prefix": _obj({"id": INT, "key": STR}),
    "PrefixCreate": _obj({"key": STR}, {"description": STR}),
    "Deployment": _obj({"id": INT, "key": STR, "replicas": INT}, LIMITS),
    "DeploymentCreate": _obj({"key": STR}, {"replicas": REPLICAS, **LIMITS}),
    "DeploymentUpdate": {
        **_obj({}, {"replicas": REPLICAS, **LIMITS, "clear": _array(STR)}),
        "description": "any subset; a limit set to null (or named in `clear`) goes back to "
        "the server's setting",
    },
    "Version": _obj(
        {"version": INT, "state": STR, "traffic_weight": INT},
        {"replicas": _array(STR), "error": NULL_STR},
    ),
    "ModelVersions": _obj(
        {
            "model_id": INT,
            "model": STR,
            "deployment": STR,
            "versions": _array(_ref("Version")),
        },
        {
            "traffic": {
                **_obj(
                    {},
                    {
                        "pinned": NULL_STR,
                        "weights": {"type": "object", "nullable": True},
                        "serving": {"type": "object"},
                    },
                ),
                "nullable": True,
            },
            "deleted": STR,
            "pinned": STR,
        },
    ),
    "Weights": {
        **_obj(
            {},
            {
                "weights": {
                    "type": "object",
                    "nullable": True,
                    "additionalProperties": {"type": "integer", "minimum": 0},
                }
            },
        ),
        "description": '`{"weights": {"v1": 70, "v2": 30}}`; empty or null: the newest '
        "ready version serves",
    },
    "Pin": _obj({"version": {"type": "string", "nullable": True, "pattern": "^[vV]?[0-9]+$"}}),
    "User": _obj({"id": INT, "email": STR, "is_admin": BOOL, "is_active": BOOL}),
    "UserCreate": _obj(
        {"email": STR, "password": {"type": "string", "minLength": 8}}, {"is_admin": BOOL}
    ),
    "UserActive": _obj({"id": INT, "is_active": BOOL}),
    "Group": _obj({"id": INT, "name": STR}, {"members": _array(STR)}),
    "GroupCreate": _obj({"name": STR}),
    "Member": _obj({"email": STR}),
    "Membership": _obj({"group_id": INT, "user_id": INT}),
    "Grant": _obj(
        {
            "id": INT,
            "group": NULL_STR,
            "user": NULL_STR,
            "prefix": NULL_STR,
            "model_id": NULL_INT,
            "permission": STR,
        }
    ),
    "GrantCreate": {
        **_obj(
            {"permission": {"type": "string", "enum": ["use", "deploy"]}},
            {"group": STR, "user": STR, "prefix": STR, "model_url": STR, "model_id": INT},
        ),
        "description": "who: `group` (a name) or `user` (an email); "
        "where: `prefix`, `model_url` or `model_id`",
    },
    "Deleted": _obj({"deleted": INT}),
    "AccessTokenCreate": {
        **_obj(
            {},
            {
                "prefix": STR,
                "model_url": STR,
                "model_id": INT,
                "ttl_s": {"type": "integer", "minimum": 1},
                "name": STR,
            },
        ),
        "description": "its scope: `prefix`, `model_url` or `model_id`",
    },
    "AccessToken": _obj({"id": INT, "token": STR}),
    "TokenRevoked": _obj({"revoked": INT}),
    "SessionRevoke": _obj({"token": STR}),
    "AuditEntry": _obj({"id": INT, "ts": STR, "actor": STR, "action": STR, "detail": ANY}),
    "Health": _obj({"status": STR}),
    "Ready": _obj(
        {"ready": BOOL, "not_ready": INT},
        {"models": {"type": "object", "additionalProperties": {"type": "object"}}},
    ),
}


def _error_response(status: int) -> Json:
    content: Json = {JSON: {"schema": _ref("Error")}}
    if status in (404, 405):  # the console's router answers unknown paths in plain text
        content["text/plain"] = {"schema": STR}
    response: Json = {"description": _REASONS[status], "content": content}
    if status in (429, 503):
        response["headers"] = _RETRY_AFTER
    if status == 405:
        response["headers"] = {"Allow": {"schema": STR}}
    return response


def _ok(schema: Json, status: int = 200, media: str = JSON) -> Json:
    return {str(status): {"description": "OK", "content": {media: {"schema": schema}}}}


def _refs(*codes: int) -> Json:
    return {str(c): {"$ref": f"#/components/responses/E{c}"} for c in codes}


def _body(schema: Json, media: str = JSON) -> Json:
    return {"required": False, "content": {media: {"schema": schema}}}


def _query(name: str, schema: Json, required: bool = False) -> Json:
    return {"name": name, "in": "query", "required": required, "schema": schema}


def _path(name: str, schema: Json = ID) -> Json:
    return {"name": name, "in": "path", "required": True, "schema": schema}


USER_ERRORS = (400, 401, 403, 404, 413)  # any console call that reads a JSON body
ADMIN_READ = (401, 403)


def _op(
    tag: str,
    summary: str,
    responses: Json,
    *,
    body: Json | None = None,
    params: list[Json] | None = None,
    auth: bool = True,
) -> Json:
    op: Json = {"tags": [tag], "summary": summary, "responses": responses}
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    op["security"] = [{"bearer": []}] if auth else []
    return op


def _status_paths() -> Json:
    return {
        "/healthz": {
            "get": _op(
                "status", "Liveness (never touches a worker)", _ok(_ref("Health")), auth=False
            )
        },
        "/readyz": {
            "get": _op(
                "status",
                "200 when every version that is not stopped is ready, else 503; per-model "
                "detail only for the metrics token or an admin",
                {
                    **_ok(_ref("Ready")),
                    "503": {
                        "description": "not ready",
                        "content": {JSON: {"schema": _ref("Ready")}},
                    },
                },
                auth=False,
            )
        },
        "/metrics": {
            "get": _op(
                "status",
                "Prometheus text; bearer = MODELHOST_METRICS_TOKEN or an admin's console token",
                {**_ok(STR, media="text/plain"), **_refs(*ADMIN_READ)},
            )
        },
        f"{API}/openapi.json": {
            "get": _op("status", "This document", _ok({"type": "object"}), auth=False)
        },
    }


def _auth_paths() -> Json:
    login_errors = _refs(400, 401, 413, 429)
    return {
        f"{API}/auth/": {
            "post": _op(
                "auth",
                "Log in: an access token and a refresh token (a new login)",
                {**_ok(_ref("Tokens")), **login_errors},
                body=_body(_ref("Login")),
                auth=False,
            )
        },
        f"{API}/auth/refresh/": {
            "post": _op(
                "auth",
                "Rotate a refresh token; presenting a used one revokes its whole login",
                {**_ok(_ref("Tokens")), **_refs(400, 401, 413)},
                body=_body(_ref("RefreshToken")),
                auth=False,
            )
        },
        f"{API}/auth/logout/": {
            "post": _op(
                "auth",
                "End a login: its refresh tokens, access tokens and model sessions",
                {**_ok(_ref("Revoked")), **_refs(400, 401, 413)},
                body=_body(_ref("RefreshToken")),
            )
        },
    }


def _model_console_paths() -> Json:
    model_ref = [_query("model_id", INT), _query("model_url", STR)]
    session = {**_ok(_ref("SessionToken")), **_refs(*USER_ERRORS)}
    deploy_params = [
        _query("deployment", STR, required=True),
        _query("prefix", STR, required=True),
        _query("name", STR, required=True),
        _query("wait", {"type": "string", "enum": ["true", "false"]}),
    ]
    return {
        f"{MH}/model-auth/": {
            "get": _op("models", "A model session token", session, params=model_ref),
            "post": _op("models", "A model session token", session, body=_body(_ref("ModelRef"))),
        },
        f"{MH}/deploy/": {
            "post": _op(
                "models",
                "Deploy a model folder (a gzip tar) as the model's next version",
                {**_ok(_ref("Deployed")), **_refs(*USER_ERRORS, 409)},
                body=_body({"type": "string", "format": "binary"}, "application/gzip"),
                params=deploy_params,
            )
        },
        f"{MH}/models/": {
            "get": _op(
                "models",
                "The models the caller may use, with their meta",
                {**_ok(_array(_ref("ModelMeta"))), **_refs(401, 403)},
            )
        },
        f"{MH}/session-tokens/revoke/": {
            "post": _op(
                "models",
                "Revoke a model session token (its owner, the access token that minted it, "
                "or an admin)",
                {**_ok(_ref("Revoked")), **_refs(*USER_ERRORS)},
                body=_body(_ref("SessionRevoke")),
            )
        },
    }


def _list_and_create(tag: str, item: str, create: str, created: str | None = None) -> Json:
    return {
        "get": _op(tag, f"List {tag}", {**_ok(_array(_ref(item))), **_refs(*ADMIN_READ)}),
        "post": _op(
            tag,
            f"Create one of {tag}",
            {**_ok(_ref(created or item), 201), **_refs(*USER_ERRORS, 409)},
            body=_body(_ref(create)),
        ),
    }


def _admin_paths() -> Json:
    changed = _refs(*USER_ERRORS, 409)
    return {
        f"{MH}/prefixes/": _list_and_create("prefixes", "Prefix", "PrefixCreate"),
        f"{MH}/deployments/": _list_and_create("deployments", "Deployment", "DeploymentCreate"),
        f"{MH}/users/": _list_and_create("users", "User", "UserCreate"),
        f"{MH}/users/{{user_id}}/{{action}}/": {
            "post": _op(
                "users",
                "Disable or enable a user (an admin cannot disable themselves)",
                {**_ok(_ref("UserActive")), **changed},
                params=[
                    _path("user_id"),
                    _path("action", {"type": "string", "enum": ["disable", "enable"]}),
                ],
            )
        },
        f"{MH}/groups/": _list_and_create("groups", "Group", "GroupCreate"),
        f"{MH}/groups/{{group_id}}/members/": {
            "post": _op(
                "groups",
                "Add a user (by email) to a group",
                {**_ok(_ref("Membership")), **changed},
                body=_body(_ref("Member")),
                params=[_path("group_id")],
            )
        },
        f"{MH}/groups/{{group_id}}/members/{{user_id}}/": {
            "delete": _op(
                "groups",
                "Remove a user from a group",
                {**_ok(_ref("Membership")), **changed},
                params=[_path("group_id"), _path("user_id")],
            )
        },
        f"{MH}/grants/": _list_and_create("grants", "Grant", "GrantCreate"),
        f"{MH}/grants/{{grant_id}}/": {
            "delete": _op(
                "grants",
                "Delete a grant",
                {**_ok(_ref("Deleted")), **changed},
                params=[_path("grant_id")],
            )
        },
        f"{MH}/access-tokens/": {
            "post": _op(
                "access-tokens",
                "A long-lived access token scoped to a prefix or a model (shown once)",
                {**_ok(_ref("AccessToken"), 201), **changed},
                body=_body(_ref("AccessTokenCreate")),
            )
        },
        f"{MH}/access-tokens/{{token_id}}/": {
            "delete": _op(
                "access-tokens",
                "Revoke a long-lived access token",
                {**_ok(_ref("TokenRevoked")), **changed},
                params=[_path("token_id")],
            )
        },
        f"{MH}/audit/": {
            "get": _op(
                "audit",
                "The newest audit entries",
                {**_ok(_array(_ref("AuditEntry"))), **_refs(400, *ADMIN_READ)},
                params=[_query("limit", {"type": "integer", "minimum": 1})],
            )
        },
    }


def _version_admin_paths() -> Json:
    """Versions, traffic and live deployment changes (`console_versions`)."""
    model = f"{MH}/models/{{model_id}}"
    described = {**_ok(_ref("ModelVersions")), **_refs(*USER_ERRORS, 409)}
    model_id = [_path("model_id")]
    return {
        f"{MH}/deployments/{{key}}/": {
            method: _op(
                "deployments",
                "Change a deployment's replicas or limits; its running versions follow",
                {**_ok(_ref("Deployment")), **_refs(*USER_ERRORS, 409)},
                body=_body(_ref("DeploymentUpdate")),
                params=[_path("key", STR)],
            )
            for method in ("patch", "post")
        },
        f"{model}/versions/": {
            "get": _op(
                "versions",
                "Every version with its state, weight and replicas",
                described,
                params=model_id,
            )
        },
        f"{model}/versions/{{version}}/": {
            "delete": _op(
                "versions",
                "Delete a version (stops its workers; never the only one serving)",
                described,
                params=[
                    *model_id,
                    _path("version", {"type": "string", "pattern": "^[vV]?[0-9]+$"}),
                ],
            )
        },
        f"{model}/traffic/": {
            "post": _op(
                "versions",
                "Split the versionless URL across versions by weight",
                described,
                body=_body(_ref("Weights")),
                params=model_id,
            )
        },
        f"{model}/pin/": {
            "post": _op(
                "versions",
                "Pin the versionless URL to one version",
                described,
                body=_body(_ref("Pin")),
                params=model_id,
            ),
            "delete": _op("versions", "Lift the pin", described, params=model_id),
        },
        f"{model}/rollback/": {
            "post": _op(
                "versions",
                "Pin the version that served before the newest one",
                described,
                params=model_id,
            )
        },
    }


_MODEL_ERRORS = (400, 401, 403, 404, 405, 413, 415, 429, 500, 503, 504)


def _model_op(summary: str, with_body: bool) -> Json:
    any_ok = {
        "200": {
            "description": "The model's answer (JSON, text, CSV or an event stream), or its "
            "meta with `get_meta=true`",
            "content": {"*/*": {"schema": ANY}},
        }
    }
    params = [
        _query(
            "get_meta",
            {"type": "string", "enum": ["true", "false", "1", "0", "TRUE"]},
        )
    ]
    op = _op("model routes", summary, {**any_ok, **_refs(*_MODEL_ERRORS)}, params=params)
    if with_body:
        op["requestBody"] = {
            "required": False,
            "content": {JSON: {"schema": ANY}, "text/csv": {"schema": STR}},
        }
    return op


def _model_paths() -> Json:
    version = {"type": "string", "pattern": "^[vV]?[0-9]+$"}
    base = [_path("prefix", SEGMENT), _path("model", SEGMENT)]
    return {
        "/{prefix}/{model}/": {
            "parameters": base,
            "get": _model_op("Predict (bearer = a model session or access token)", False),
            "post": _model_op("Predict (bearer = a model session or access token)", True),
        },
        "/{prefix}/{model}/{version}/": {
            "parameters": [*base, _path("version", version)],
            "get": _model_op("Predict with one version (`v3` or `3`)", False),
            "post": _model_op("Predict with one version (`v3` or `3`)", True),
        },
    }


def _docs_paths() -> Json:
    """The docs pages (`docs_pages`): claimed by path shape, the pages need no token."""
    prefix = [_path("prefix", SEGMENT)]

    def page(name: str) -> Json:
        summary = f"{name} of the models below the prefix (no token: it names no model)"
        return _op("docs pages", summary, {**_ok(STR, media="text/html"), **_refs(405)}, auth=False)

    return {
        "/{prefix}/docs/": {"parameters": prefix, "get": page("Swagger UI")},
        "/{prefix}/redoc/": {"parameters": prefix, "get": page("ReDoc")},
        "/{prefix}/docs/openapi.json": {
            "parameters": prefix,
            "get": _op(
                "docs pages",
                "The OpenAPI document of the models below the prefix that the token may use",
                {**_ok({"type": "object"}), **_refs(401, 403, 405)},
            ),
        },
    }


def openapi_document() -> Json:
    """The document (a fresh dict: callers may change their copy)."""
    paths = {
        **_status_paths(),
        **_auth_paths(),
        **_model_console_paths(),
        **_admin_paths(),
        **_version_admin_paths(),
        **_docs_paths(),
        **_model_paths(),
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "modelhost",
            "version": "1",
            "description": 'Console (JSON in, JSON out; errors `{"error": {"type", '
            '"message"}}`) and model routes. See docs/architecture.md, section HTTP API.',
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": copy.deepcopy(SCHEMAS),
            "responses": {f"E{code}": _error_response(code) for code in _REASONS},
        },
    }
