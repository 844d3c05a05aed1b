"""Several gateways on one registry (issue 11): real `modelhost serve` processes.

- Two gateways, A and B, on one PostgreSQL registry and one S3 store (moto), each with its
  own home and the same MODELHOST_JWT_SECRET (the several-hosts layout). Their polls (routes
  and revocations) are set to 10 minutes, so whatever B does within NOTICE_S seconds came
  through a change notice.
- Two gateways sharing one home, one SQLite registry and one port (`--reuse-port`): SQLite
  has no notices, so the second one learns of a deploy through the fallback poll.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from e2e.harness import ADMIN_EMAIL, ADMIN_PASSWORD, Server, bearer, free_port, model_dir, poll
from modelhost.gateway.changes import APPLICATION_NAME

# A notice reaches the other gateway in milliseconds (docs/scale-out.md); the margin is for a
# loaded test machine. Polls are at 600 s: a pass within this bound is the notice's doing.
NOTICE_S = 10.0
# A version new to B also has to start its worker there (fetch from S3, spawn, import).
START_S = 90.0
LONG_POLL = "600"
S3_CREDS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
VERSIONED = """
import os

async def predict(payload_dict: dict, **kwargs):
    return {"home": os.environ.get("HOME", "")}
"""


@pytest.fixture(scope="module")
def shared_registry(pg_admin: tuple[Engine, str], s3_endpoint: str) -> Iterator[dict[str, str]]:
    """The environment both gateways share: a fresh schema, a bucket, one JWT secret."""
    engine, base_url = pg_admin
    schema = f"mh_gateways_{os.getpid()}"
    with engine.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    bucket = f"mh-gateways-{os.getpid()}"
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=bucket)
    yield {
        **S3_CREDS,
        "MODELHOST_DATABASE_URL": url.render_as_string(hide_password=False),
        "MODELHOST_STORE_URL": f"s3://{bucket}/modelhost",
        "MODELHOST_S3_ENDPOINT_URL": s3_endpoint,
        "MODELHOST_JWT_SECRET": "several-gateways-test-secret-0123456789",
        "MODELHOST_REVOCATION_POLL_S": LONG_POLL,
        "MODELHOST_SYNC_POLL_S": LONG_POLL,
    }
    with engine.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, shared_registry: dict[str, str]
) -> Iterator[tuple[Server, Server]]:
    servers = []
    try:
        for name in ("a", "b"):  # one after the other: A creates the schema and the admin
            env = {**shared_registry, "MODELHOST_GATEWAY_ID": name}
            home = tmp_path_factory.mktemp(f"gw-{name}")
            servers.append(Server(home, free_port(), extra_env=env).start())
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


def listening(server: Server) -> bool:
    return "listening for registry changes" in server.log()


def call(server: Server, path: str, token: str, payload: Any = None) -> httpx.Response:
    return httpx.post(f"{server.url}/{path}", json=payload or {"x": 1}, headers=bearer(token))


def served_version(server: Server, path: str, token: str) -> int | None:
    r = call(server, path, token)
    return int(r.headers["x-prt-model-version"]) if r.status_code == 200 else None


def admin_api(server: Server, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = bearer(server.admin_token())
    r = httpx.request(
        method, f"{server.url}/console/api/modelhost/{path}", headers=headers, **kwargs
    )
    assert r.status_code < 300, r.text
    return r


def test_deploy_through_a_is_served_by_b(pair: tuple[Server, Server], tmp_path: Path) -> None:
    a, b = pair
    poll(lambda: listening(b), "B listens for notices", 60)
    result = a.deploy(model_dir(tmp_path, "echo", "echo.py"), "scale", "echo")
    assert result["state"] == "ready", result
    # a session token minted by A is good on B (one signing key)
    token = a.session_token(result["api_url"])
    admin = a.admin_token()
    meta = f"{b.url}/scale/echo/?get_meta=true"
    poll(
        lambda: httpx.get(meta, headers=bearer(admin)).status_code == 200,
        "B's route table has the model A deployed",
        NOTICE_S,
    )
    poll(
        lambda: call(b, "scale/echo/", token, {"on": "b"}).json() == {"on": "b"},
        "B serves the version deployed through A",
        START_S,
    )
    # replicas set through A: B runs that many too
    admin_api(a, "PATCH", "deployments/test-depl/", json={"replicas": 2})
    poll(
        lambda: httpx.get(meta, headers=bearer(admin)).json()["replicas"] == 2,
        "B scales the deployment A changed",
        NOTICE_S,
    )
    admin_api(a, "PATCH", "deployments/test-depl/", json={"replicas": 1})
    poll(
        lambda: httpx.get(meta, headers=bearer(admin)).json()["replicas"] == 1,
        "B scales it back",
        NOTICE_S,
    )


def test_pin_and_weights_on_a_move_bs_versionless_url(
    pair: tuple[Server, Server], tmp_path: Path
) -> None:
    a, b = pair
    folder = model_dir(tmp_path, "two", "echo.py")
    first = a.deploy(folder, "scale", "two")
    second = a.deploy(folder, "scale", "two")
    assert (first["state"], second["state"]) == ("ready", "ready")
    model_id, token = second["model_id"], a.session_token(second["api_url"])
    # v1 and v2 both run on B (KEEP_VERSIONS=2); the newest serves there too
    for number in (1, 2):
        poll(lambda n=number: call(b, f"scale/two/v{n}/", token).status_code == 200, "", START_S)
    assert served_version(b, "scale/two/", token) == 2

    admin_api(a, "POST", f"models/{model_id}/pin/", json={"version": 1})
    poll(lambda: served_version(b, "scale/two/", token) == 1, "B follows A's pin", NOTICE_S)
    admin_api(a, "DELETE", f"models/{model_id}/pin/")
    poll(lambda: served_version(b, "scale/two/", token) == 2, "B follows the unpin", NOTICE_S)

    admin_api(a, "POST", f"models/{model_id}/traffic/", json={"weights": {"v1": 100, "v2": 0}})
    poll(lambda: served_version(b, "scale/two/", token) == 1, "B follows A's weights", NOTICE_S)
    # a version deleted through A leaves B's routes too
    admin_api(a, "DELETE", f"models/{model_id}/versions/2/")
    poll(lambda: call(b, "scale/two/v2/", token).status_code == 404, "v2 gone on B", NOTICE_S)


def test_revocations_on_a_are_refused_by_both(pair: tuple[Server, Server], tmp_path: Path) -> None:
    a, b = pair
    result = a.deploy(model_dir(tmp_path, "guarded", "echo.py"), "scale", "guarded")
    assert result["state"] == "ready", result
    poll(
        lambda: call(b, "scale/guarded/", a.session_token(result["api_url"])).is_success,
        "",
        START_S,
    )
    # an mh_ access token made on A works on B until A revokes it
    created = admin_api(a, "POST", "access-tokens/", json={"prefix": "scale"}).json()
    assert call(b, "scale/guarded/", created["token"]).status_code == 200
    admin_api(a, "DELETE", f"access-tokens/{created['id']}/")
    for server in (a, b):
        poll(
            lambda s=server: call(s, "scale/guarded/", created["token"]).status_code == 401,
            f"the revoked access token is refused by {server.extra_env['MODELHOST_GATEWAY_ID']}",
            NOTICE_S,
        )
    # a login on A is good on B (console) until its logout on A
    login = httpx.post(
        a.url + "/console/api/auth/", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    ).json()
    models = f"{b.url}/console/api/modelhost/models/"
    assert httpx.get(models, headers=bearer(login["access"])).status_code == 200
    # its refresh token is good on B (refresh families live in the registry), once
    refreshed = httpx.post(b.url + "/console/api/auth/refresh/", json={"refresh": login["refresh"]})
    assert refreshed.status_code == 200, refreshed.text
    login = refreshed.json()
    out = httpx.post(
        a.url + "/console/api/auth/logout/",
        json={"refresh": login["refresh"]},
        headers=bearer(login["access"]),
    )
    assert out.status_code < 300, out.text
    poll(
        lambda: httpx.get(models, headers=bearer(login["access"])).status_code == 401,
        "B refuses the access token logged out on A",
        NOTICE_S,
    )


def test_failed_logins_count_on_every_gateway(pair: tuple[Server, Server]) -> None:
    """An account's failed logins are counted in the registry: 3 on A and 2 on B reach the
    limit (MODELHOST_LOGIN_MAX_FAILURES, 5), and both gateways then answer 429."""
    a, b = pair
    guess = {"email": "spread-guesses@example.com", "password": "wrong-guess"}

    def login(server: Server) -> httpx.Response:
        return httpx.post(server.url + "/console/api/auth/", json=guess)

    assert [login(a).status_code for _ in range(3)] == [401] * 3
    assert [login(b).status_code for _ in range(2)] == [401] * 2
    for server in (a, b):
        r = login(server)
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1


def test_b_catches_up_after_its_listener_is_killed(
    pair: tuple[Server, Server], pg_admin: tuple[Engine, str], tmp_path: Path
) -> None:
    """PostgreSQL does not keep notices for a listener that is gone: B reconnects and
    reconciles everything, so a pin made while it was away still reaches it."""
    a, b = pair
    engine, _ = pg_admin
    folder = model_dir(tmp_path, "gap", "echo.py")
    first = a.deploy(folder, "scale", "gap")
    second = a.deploy(folder, "scale", "gap")
    model_id, token = second["model_id"], a.session_token(second["api_url"])
    poll(lambda: served_version(b, "scale/gap/v1/", token) == 1, "B runs v1", START_S)
    poll(lambda: served_version(b, "scale/gap/", token) == 2, "B serves v2", START_S)
    assert first["state"] == "ready"

    def kill_listener() -> list[int]:
        with engine.begin() as connection:
            rows = connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid), pid FROM pg_stat_activity "
                    "WHERE application_name = :name"
                ),
                {"name": f"{APPLICATION_NAME} b"},
            )
            return [row.pid for row in rows]

    assert kill_listener(), "B's listening connection was not found in pg_stat_activity"
    admin_api(a, "POST", f"models/{model_id}/pin/", json={"version": 1})
    poll(lambda: served_version(b, "scale/gap/", token) == 1, "B catches up", NOTICE_S)
    assert "registry change notices:" in b.log()  # it noticed the drop, and said so


def test_reuse_port_gateways_share_a_port_and_converge_by_polling(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """One home, one SQLite registry, one port: both gateways answer on it, each runs the
    model in its own work folder, and the one that did not deploy learns of it by the poll."""
    home, port = tmp_path_factory.mktemp("reuse"), free_port()
    servers: list[Server] = []
    try:
        for name in ("g1", "g2"):
            env = {"MODELHOST_GATEWAY_ID": name, "MODELHOST_SYNC_POLL_S": "1"}
            server = Server(home, port, extra_env=env)
            _start_reuse_port(server)
            servers.append(server)
        result = servers[0].deploy(model_dir(tmp_path, "where", VERSIONED), "scale", "where")
        assert result["state"] == "ready", result
        # the port is shared: the token request may reach the gateway that has not polled
        # the new model yet (404 until it has), so ask until one answers
        token = poll(
            lambda: _try_session_token(servers[0], result["api_url"]),
            "a session token through the shared port",
            START_S,
        )
        seen: set[str] = set()

        def both_answered() -> bool:
            # a new connection each time: the kernel spreads connections across the sockets
            r = httpx.post(result["api_url"], json={}, headers=bearer(token))
            if r.status_code == 200:
                seen.add(Path(r.json()["home"]).parent.name)
            return seen == {"g1", "g2"}

        poll(both_answered, f"both gateways answer on port {port} (seen: {seen})", START_S)
    finally:
        for server in servers:
            server.stop()


def _try_session_token(server: Server, api_url: str) -> str | None:
    try:
        return server.session_token(api_url)
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            return None
        raise


def _start_reuse_port(server: Server) -> None:
    """`Server.start` with `--reuse-port`: the second one would fail to bind without it."""
    import subprocess
    import sys

    server.home.mkdir(parents=True, exist_ok=True)
    server.log_path = server.home / f"serve-{server.extra_env['MODELHOST_GATEWAY_ID']}.log"
    log = server.log_path.open("ab")
    server.proc = subprocess.Popen(
        [sys.executable, "-m", "modelhost.cli", "serve", "--reuse-port"],
        env=server.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    marker = "Application startup complete"  # this one's lifespan, not the other's /healthz
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{server.log()}")
        if marker in server.log() and _answers(server):
            return
        time.sleep(0.1)
    raise RuntimeError(f"server did not start:\n{server.log()}")


def _answers(server: Server) -> bool:
    try:
        return httpx.get(server.url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
