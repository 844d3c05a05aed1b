"""Property-based: thousands of random credentials and bodies against a real server.

Whatever arrives, a model route or a console route never answers 200 to a bad credential
and never answers 500.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2e.harness import Server, free_port, model_dir

REFUSALS = {400, 401, 403, 404, 405, 413, 415, 429}
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:  # one keep-alive connection: thousands of requests
        yield c


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    server = Server(tmp_path_factory.mktemp("mh-fuzz"), free_port()).start()
    try:
        folder = model_dir(tmp_path_factory.mktemp("m"), "echo", "echo.py")
        result = server.deploy(folder, "fuzz", "echo")
        assert result["status"] == 200, result
        yield server, result["api_url"]
    finally:
        server.stop()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt_like() -> st.SearchStrategy[str]:
    header = st.fixed_dictionaries(
        {
            "alg": st.sampled_from(["HS256", "none", "RS256", "HS512", ""]),
            "kid": st.text(PRINTABLE, max_size=8),
        }
    )
    claims = st.dictionaries(
        st.sampled_from(["sub", "typ", "exp", "iat", "jti", "mid", "pfx", "mdl", "atk"]),
        st.one_of(st.integers(), st.text(PRINTABLE, max_size=12), st.none()),
    )
    return st.builds(
        lambda h, c, sig: ".".join(
            [_b64(json.dumps(h).encode()), _b64(json.dumps(c).encode()), _b64(sig)]
        ),
        header,
        claims,
        st.binary(max_size=40),
    )


AUTHORIZATION = st.one_of(
    st.text(PRINTABLE, max_size=80),
    st.builds(lambda t: f"Bearer {t}", st.text(PRINTABLE, max_size=80)),
    st.builds(lambda t: f"Bearer mh_{t}", st.text(PRINTABLE, min_size=1, max_size=60)),
    st.builds(lambda t: f"Bearer {t}", _jwt_like()),
    st.builds(lambda t: f"bearer  {t}", _jwt_like()),
).map(str.strip)  # HTTP clients refuse header values with surrounding whitespace
JSON_VALUES = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
BODIES = st.one_of(
    st.binary(max_size=200),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"email": st.text(max_size=20), "password": st.text(max_size=20)},
        optional={"refresh": st.text(max_size=40)},
    ).map(lambda v: json.dumps(v).encode()),
)
FUZZ = settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(response: httpx.Response) -> None:
    assert response.status_code in REFUSALS, (response.status_code, response.text[:300])


@FUZZ
@given(
    auth=AUTHORIZATION,
    body=BODIES,
    suffix=st.sampled_from(["", "?get_meta=true", "v1/chat/completions", "v1/models", "x/y"]),
    method=st.sampled_from(["GET", "POST"]),
)
def test_model_routes_refuse_random_credentials(
    target: tuple[Server, str],
    client: httpx.Client,
    auth: str,
    body: bytes,
    suffix: str,
    method: str,
) -> None:
    _, url = target
    _check(client.request(method, url + suffix, content=body, headers={"authorization": auth}))


@FUZZ
@given(
    auth=AUTHORIZATION,
    body=BODIES,
    route=st.sampled_from(
        [
            ("POST", "/console/api/modelhost/model-auth/"),
            ("GET", "/console/api/modelhost/models/"),
            ("POST", "/console/api/modelhost/users/"),
            ("POST", "/console/api/modelhost/grants/"),
            ("GET", "/console/api/modelhost/audit/"),
            ("POST", "/console/api/modelhost/deploy/?deployment=d&prefix=fuzz&name=echo"),
            ("POST", "/console/api/modelhost/access-tokens/"),
            ("GET", "/metrics"),
        ]
    ),
)
def test_console_routes_refuse_random_credentials(
    target: tuple[Server, str],
    client: httpx.Client,
    auth: str,
    body: bytes,
    route: tuple[str, str],
) -> None:
    server, _ = target
    method, path = route
    _check(client.request(method, server.url + path, content=body, headers={"authorization": auth}))


# Fewer: a login that parses costs an argon2 check (~50 ms), by design.
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=BODIES,
    path=st.sampled_from(
        ["/console/api/auth/", "/console/api/auth/refresh/", "/console/api/auth/logout/"]
    ),
)
def test_auth_routes_never_fail_on_random_bodies(
    target: tuple[Server, str], client: httpx.Client, body: bytes, path: str
) -> None:
    server, _ = target
    _check(client.post(server.url + path, content=body))
