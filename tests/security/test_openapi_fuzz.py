"""Property-based over the OpenAPI document (`modelhost.gateway.openapi`): schemathesis
generates requests for every documented operation (valid and invalid bodies, query and path
values) and sends them to a real server, with an admin's console token on console routes
and a model session token on model routes, where an echo model is deployed. No answer may
be a 5xx other than a 503 with `Retry-After`, and every status code, content type,
documented header and JSON body must be the document's. Another test checks that every
console route of the real app is in the document, so that it stays true."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from e2e.harness import Server, bearer, free_port, model_dir
from modelhost.gateway.openapi import MH, openapi_document

PREFIX, MODEL = "fuzz", "echo"
# Per operation; CI runs 12 (about 25 s in all). A longer hunt: OPENAPI_FUZZ_EXAMPLES=200.
EXAMPLES = int(os.environ.get("OPENAPI_FUZZ_EXAMPLES", "12"))


# What the fixture deploys, in this order (so the ids are known before the server starts):
# `echo` (id 1) answers the model routes; `target` (id 2, two versions, its own deployment)
# takes the version and traffic admin calls; the deployment `fuzz-empty` (no model) takes
# replica and limit changes, so no fuzzed value ever starts 64 workers.
TARGET_ID = 2
AIMED = {
    "prefix": [PREFIX, "nope"],
    "model": [MODEL, "missing"],
    "model_id": [TARGET_ID, 999],
    "key": ["fuzz-empty", "nope"],
}


def _aimed(document: dict[str, Any]) -> dict[str, Any]:
    """Path parameters drawn from a few values, most of them real objects, so that cases
    reach a worker or a version instead of answering 404 almost always (user, group, grant
    and token ids stay any integer)."""
    for item in document["paths"].values():
        for operation in [item, *item.values()]:
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if parameter["in"] == "path" and parameter["name"] in AIMED:
                    kind = "integer" if parameter["name"] == "model_id" else "string"
                    parameter["schema"] = {"type": kind, "enum": AIMED[parameter["name"]]}
    return document


# Deploy archives are bytes like any octet stream (random ones: a real archive is tested
# elsewhere; here the point is that garbage gets a 4xx).
schemathesis.serializer.alias("application/gzip", "application/octet-stream")
CONFIG = SchemathesisConfig.from_dict(
    {
        "generation": {"mode": "all"},
        "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
    }
)
schema = schemathesis.openapi.from_dict(_aimed(openapi_document()), config=CONFIG)
# Not schemathesis' `not_a_server_error`: a 503 with Retry-After (a model loading or
# restarting) is documented behaviour; `_is_platform_failure` says what is not.
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    server = Server(tmp_path_factory.mktemp("mh-openapi"), free_port()).start()
    try:
        folder = model_dir(tmp_path_factory.mktemp("m"), MODEL, "echo.py")
        result = server.deploy(folder, PREFIX, MODEL)
        assert result["status"] == 200 and result["model_id"] == 1, result
        for _ in range(2):
            target = server.deploy(folder, PREFIX, "target", deployment="fuzz-target")
            assert target["status"] == 200 and target["model_id"] == TARGET_ID, target
        admin = server.admin_token()
        r = httpx.post(
            server.url + f"{MH}/deployments/", json={"key": "fuzz-empty"}, headers=bearer(admin)
        )
        assert r.status_code == 201, r.text
        tokens = {"console": admin, "model": server.session_token(result["api_url"])}
        yield server, tokens
    finally:
        server.stop()


def _is_platform_failure(response: Any) -> bool:
    retry_503 = response.status_code == 503 and response.headers.get("retry-after")
    return response.status_code >= 500 and not retry_503


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_answer_is_documented_and_none_is_a_5xx(
    case: Any, target: tuple[Server, dict[str, str]]
) -> None:
    server, tokens = target
    token = tokens["model" if case.path.startswith("/{prefix}") else "console"]
    response = case.call(base_url=server.url, headers=bearer(token), timeout=30)
    assert not _is_platform_failure(response), (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
    )
    case.validate_response(response, checks=CHECKS)


def test_the_server_serves_the_document(target: tuple[Server, dict[str, str]]) -> None:
    server, _ = target
    r = httpx.get(server.url + "/console/api/openapi.json")  # no credentials needed
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == json.loads(json.dumps(openapi_document()))


_ROUTES = """
import json, sys
from pathlib import Path
from starlette.applications import Starlette
from starlette.routing import Mount, Route
from modelhost.gateway.app import build_gateway
from modelhost.settings import Settings

def apps(obj, depth=0):
    for value in vars(obj).values() if hasattr(obj, "__dict__") else ():
        if isinstance(value, Starlette):
            yield value
        elif depth < 2 and type(value).__module__.startswith("modelhost"):
            yield from apps(value, depth + 1)

def routes(rs, base=""):
    for r in rs:
        if isinstance(r, Mount):
            yield from routes(r.routes, base + r.path)
        elif isinstance(r, Route):
            for m in sorted(r.methods or ()):
                yield m, base + r.path

gateway = build_gateway(Settings.from_env(home=Path(sys.argv[1])))
found = {f"{m} {p}" for app in apps(gateway) for m, p in routes(app.routes)}
print(json.dumps(sorted(found)))
"""


def test_every_console_route_is_in_the_document(tmp_path: Path) -> None:
    """The real console app's routes (built in a child process: building a gateway makes
    its process non-dumpable) against the document's operations."""
    done = subprocess.run(
        [sys.executable, "-c", _ROUTES, str(tmp_path / "home")],
        capture_output=True,
        text=True,
        timeout=120,
        env={"MODELHOST_ADMIN_PASSWORD": "route-listing-only", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    served = {
        (m, re.sub(r"\{(\w+):\w+\}", r"{\1}", p))
        for m, _, p in (line.partition(" ") for line in json.loads(done.stdout))
        if m != "HEAD"  # Starlette adds HEAD to every GET route
    }
    assert len(served) > 20, served
    documented = {
        (method.upper(), path)
        for path, item in openapi_document()["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert served - documented == set(), "console routes missing from gateway/openapi.py"
    console = {(m, p) for m, p in documented if not p.startswith("/{prefix}")}
    assert console - served == set(), "documented console routes the server does not have"
