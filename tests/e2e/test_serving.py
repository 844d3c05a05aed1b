"""End to end against a real `modelhost serve`: deploy, tokens, predict, errors, isolation."""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from pathlib import Path

import httpx
import lz4.frame
import pytest

from .harness import Server, model_dir
from .harness import bearer as _auth
from .harness import poll as _until


def _inflight(server: Server, admin: dict[str, str], model: str) -> float:
    """Requests of `model` at its worker and not yet answered, from /metrics."""
    text = httpx.get(server.url + "/metrics", headers=admin).text
    for line in text.splitlines():
        if line.startswith("modelhost_inflight_requests{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def echo(server: Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = model_dir(tmp_path_factory.mktemp("m"), "echo", "echo.py", '{"note": "echo model"}')
    result = server.deploy(folder, "models/test", "echo")
    assert result["status"] == 200, result
    assert result["state"] == "ready", result
    return result["api_url"], server.session_token(result["api_url"])


def test_predict_post_and_get_with_json(echo: tuple[str, str]) -> None:
    url, token = echo
    r = httpx.post(url, json={"x": 1, "text": "héllo"}, headers=_auth(token))
    assert r.status_code == 200
    assert r.json() == {"x": 1, "text": "héllo"}
    r = httpx.request("GET", url, json={"user_prompt": "hi"}, headers=_auth(token))
    assert r.json() == {"user_prompt": "hi"}
    for header in (
        "model-id",
        "model-version",
        "model-deployment-key",
        "pod-name",
        "model-prefix",
        "model-name",
        "traffic-weight",
    ):
        assert r.headers[f"x-prt-{header}"], header
    assert r.headers["x-prt-model-prefix"] == "models/test"
    assert r.headers["x-prt-model-name"] == "echo"
    assert r.headers["x-request-id"]


def test_get_meta(echo: tuple[str, str]) -> None:
    url, token = echo
    r = httpx.get(url + "?get_meta=true", headers=_auth(token))
    assert r.status_code == 200
    meta = r.json()
    assert meta["name"] == "echo" and meta["prefix"] == "models/test"
    assert meta["state"] == "ready" and meta["version"] >= 1
    assert meta["model_json"] == {"note": "echo model"}
    assert meta["hooks"] == ["init", "predict"]
    assert meta["deployment"] == "test-depl"


def test_version_url_and_unknown_version(echo: tuple[str, str]) -> None:
    url, token = echo
    assert httpx.post(url + "v1/", json={"a": 1}, headers=_auth(token)).json() == {"a": 1}
    r = httpx.post(url + "v99/", json={}, headers=_auth(token))
    assert r.status_code == 404
    assert "no version 99" in r.json()["error"]["message"]


def test_auth_failures(server: Server, echo: tuple[str, str], folders: Path) -> None:
    url, token = echo
    r = httpx.post(url, json={})
    assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
    assert httpx.post(url, json={}, headers=_auth("garbage")).status_code == 401
    assert httpx.post(url, json={}, headers={"authorization": token}).status_code == 401
    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    assert httpx.post(url, json={}, headers=_auth(tampered)).status_code == 401
    other = server.deploy(model_dir(folders, "other", "echo.py"), "models/test", "other")
    other_token = server.session_token(other["api_url"])
    r = httpx.post(url, json={}, headers=_auth(other_token))
    assert r.status_code == 403
    # a console access token is not a model session token
    assert httpx.post(url, json={}, headers=_auth(server.admin_token())).status_code == 401


def test_bad_bodies(echo: tuple[str, str]) -> None:
    url, token = echo
    r = httpx.post(
        url, content=b'{"a": ', headers={**_auth(token), "content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_json"
    r = httpx.post(url, content=b"x" * (33 * 1024 * 1024), headers=_auth(token))
    assert r.status_code == 413
    bomb = gzip.compress(b"{" + b" " * (64 * 1024 * 1024) + b"}")
    assert len(bomb) < 1024 * 1024
    r = httpx.post(url, content=bomb, headers={**_auth(token), "content-encoding": "gzip"})
    assert r.status_code == 413
    r = httpx.post(
        url, content=b"a,b\n1,2\n", headers={**_auth(token), "content-type": "image/png"}
    )
    assert r.status_code == 415
    r = httpx.post(url, content=b"{}", headers={**_auth(token), "content-encoding": "br"})
    assert r.status_code == 415


@pytest.mark.parametrize(
    ("encoding", "pack", "unpack"),
    [
        ("gzip", gzip.compress, gzip.decompress),
        ("deflate", zlib.compress, zlib.decompress),
        ("lz4", lz4.frame.compress, lz4.frame.decompress),
    ],
)
def test_compressed_request_gets_compressed_answer(
    echo: tuple[str, str], encoding, pack, unpack
) -> None:  # type: ignore[no-untyped-def]
    url, token = echo
    body = pack(b'{"compressed": true}')
    with httpx.Client() as client:
        r = client.send(
            client.build_request(
                "POST",
                url,
                content=body,
                headers={
                    **_auth(token),
                    "content-encoding": encoding,
                    "accept-encoding": "identity",
                },
            ),
            stream=True,
        )
        raw = r.read()
    assert r.status_code == 200
    assert r.headers["content-encoding"] == encoding
    decoded = raw if raw.startswith(b"{") else unpack(raw)
    assert decoded == b'{"compressed":true}'


def test_unknown_model_is_404(server: Server, echo: tuple[str, str]) -> None:
    _, token = echo
    r = httpx.post(server.url + "/models/test/nope/", json={}, headers=_auth(token))
    assert r.status_code == 404 and "no model at" in r.json()["error"]["message"]


def test_predict_error_is_500_without_traceback(server: Server, folders: Path) -> None:
    result = server.deploy(model_dir(folders, "raises", "raises.py"), "models/test", "raises")
    token = server.session_token(result["api_url"])
    r = httpx.post(result["api_url"], json={"x": 7}, headers=_auth(token))
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["type"] == "predict_error"
    assert "ValueError: the model does not like 7" in err["message"]
    assert "Traceback" not in r.text
    assert "Traceback" in server.log()


def test_syntax_error_fails_deploy_and_previous_version_serves(
    server: Server, folders: Path
) -> None:
    good = server.deploy(model_dir(folders, "v1", "echo.py"), "models/test", "versions")
    assert good["state"] == "ready"
    bad_folder = model_dir(
        folders, "v2", "async def predict(payload_dict, **kwargs):\n    return {\n"
    )
    bad = server.deploy(bad_folder, "models/test", "versions")
    assert bad["status"] == 400
    assert bad["error"]["type"] == "invalid_model_folder"
    assert "model.py, line 2" in bad["error"]["message"]
    token = server.session_token(good["api_url"])
    r = httpx.post(good["api_url"], json={"still": "v1"}, headers=_auth(token))
    assert r.status_code == 200 and r.headers["x-prt-model-version"] == "1"


def test_missing_predict_fails_deploy(server: Server, folders: Path) -> None:
    bad = server.deploy(
        model_dir(folders, "nopredict", "def helper():\n    pass\n"), "models/test", "np"
    )
    assert bad["status"] == 400 and "predict" in bad["error"]["message"]


def test_failed_init_is_503_with_reason_and_previous_version_serves(
    server: Server, folders: Path
) -> None:
    good = server.deploy(model_dir(folders, "g", "echo.py"), "models/test", "initfail")
    bad = server.deploy(model_dir(folders, "b", "bad_init.py"), "models/test", "initfail")
    assert bad["status"] == 200 and bad["state"] == "failed"
    assert "weights are missing" in bad["reason"]
    token = server.session_token(good["api_url"])
    r = httpx.post(bad["api_version_url"], json={}, headers=_auth(token))
    assert r.status_code == 503
    assert "weights are missing" in r.json()["error"]["message"]
    r = httpx.post(good["api_url"], json={"ok": 1}, headers=_auth(token))
    assert r.status_code == 200 and r.headers["x-prt-model-version"] == "1"
    meta = httpx.get(bad["api_version_url"] + "?get_meta=true", headers=_auth(token)).json()
    assert meta["state"] == "failed" and "weights are missing" in meta["reason"]


def test_new_version_takes_over_versionless_url(server: Server, folders: Path) -> None:
    first = server.deploy(model_dir(folders, "a", "echo.py"), "models/test", "upgrade")
    second = server.deploy(model_dir(folders, "b", "sync_model.py"), "models/test", "upgrade")
    token = server.session_token(first["api_url"])
    r = httpx.post(first["api_url"], json={"values": [1, 2, 3]}, headers=_auth(token))
    assert r.json()["sum"] == 6 and r.headers["x-prt-model-version"] == str(second["version"])
    r = httpx.post(first["api_version_url"], json={"values": [1]}, headers=_auth(token))
    assert r.json() == {"values": [1]}


def test_blocking_predict_freezes_neither_health_nor_other_models(
    server: Server, echo: tuple[str, str], folders: Path
) -> None:
    blocking = server.deploy(
        model_dir(folders, "blocking", "blocking.py"), "models/test", "blocking"
    )
    token = server.session_token(blocking["api_url"])
    admin = _auth(server.admin_token())
    results: list[int] = []

    def call() -> None:
        r = httpx.post(blocking["api_url"], json={"sleep": 1.5}, headers=_auth(token), timeout=60)
        results.append(r.status_code)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    # The three run one after another in the blocked worker (4.5 s in all). Once they are
    # there, health and another model must answer while they still are: checked against
    # the blocked requests themselves, not a wall-clock bound this machine's speed decides.
    _until(lambda: _inflight(server, admin, "blocking") >= 1, "blocking requests in flight")
    assert httpx.get(server.url + "/healthz").status_code == 200
    echo_url, echo_token = echo
    assert httpx.post(echo_url, json={"a": 1}, headers=_auth(echo_token)).status_code == 200
    assert len(results) < 3, "health and echo waited for the blocked model"
    for t in threads:
        t.join()
    assert results == [200, 200, 200]


def test_sync_hooks_run(server: Server, folders: Path) -> None:
    result = server.deploy(model_dir(folders, "sync", "sync_model.py"), "models/test", "summer")
    token = server.session_token(result["api_url"])
    r = httpx.post(result["api_url"], json={"values": [1, 2.5]}, headers=_auth(token))
    assert r.json()["sum"] == 3.5
    r = httpx.post(result["api_url"], json={"values": "nope"}, headers=_auth(token))
    assert r.status_code == 500 and "TypeError" in r.json()["error"]["message"]


def test_streaming_predict(server: Server, folders: Path) -> None:
    result = server.deploy(model_dir(folders, "stream", "stream.py"), "models/test", "stream")
    token = server.session_token(result["api_url"])
    with httpx.stream("POST", result["api_url"], json={"n": 4}, headers=_auth(token)) as r:
        text = "".join(r.iter_text())
    assert text == "".join(f"piece {i}\n" for i in range(4))


def test_worker_crash_is_503_then_restarts(server: Server, folders: Path) -> None:
    result = server.deploy(model_dir(folders, "crash", "crash.py"), "models/test", "crash")
    token = server.session_token(result["api_url"])
    r = httpx.post(result["api_url"], json={"crash": True}, headers=_auth(token))
    assert r.status_code == 503 and r.json()["error"]["type"] == "worker_unavailable"
    deadline = time.time() + 30
    while time.time() < deadline:
        r = httpx.post(result["api_url"], json={}, headers=_auth(token))
        if r.status_code == 200:
            break
        time.sleep(0.3)
    assert r.status_code == 200 and r.json() == {"alive": True}


def test_access_token_scope_and_revocation(server: Server, echo: tuple[str, str]) -> None:
    url, _ = echo
    admin = {"authorization": f"Bearer {server.admin_token()}"}
    r = httpx.post(
        server.url + "/console/api/modelhost/access-tokens/",
        json={"prefix": "models/test"},
        headers=admin,
    )
    assert r.status_code == 201
    created = r.json()
    assert created["token"].startswith("mh_")
    assert httpx.post(url, json={"t": 1}, headers=_auth(created["token"])).status_code == 200
    # the same token gives model session tokens through the console API
    r = httpx.request(
        "GET",
        server.url + "/console/api/modelhost/model-auth/",
        json={"model_url": url},
        headers=_auth(created["token"]),
    )
    assert r.status_code == 200
    r = httpx.delete(
        server.url + f"/console/api/modelhost/access-tokens/{created['id']}/", headers=admin
    )
    assert r.status_code == 200
    # MODELHOST_REVOCATION_POLL_S=0.5 in the harness
    revoked = _auth(created["token"])
    _until(
        lambda: httpx.post(url, json={"t": 1}, headers=revoked).status_code == 401,
        "the revoked access token is refused",
    )


def test_tokens_are_hashed_at_rest_and_secrets_not_logged(
    server: Server, echo: tuple[str, str]
) -> None:
    import sqlite3

    admin = {"authorization": f"Bearer {server.admin_token()}"}
    token = httpx.post(
        server.url + "/console/api/modelhost/access-tokens/",
        json={"prefix": "models/test"},
        headers=admin,
    ).json()["token"]
    db = sqlite3.connect(server.home / "registry.db")
    dump = "\n".join(db.iterdump())
    assert token not in dump
    assert "e2e-admin-password" not in dump
    assert token not in server.log() and "e2e-admin-password" not in server.log()
    assert echo[1] not in server.log()


def test_console_auth_flow(server: Server) -> None:
    r = httpx.post(
        server.url + "/console/api/auth/",
        json={"email": "admin@modelhost.local", "password": "wrong"},
    )
    assert r.status_code == 401
    r = httpx.post(server.url + "/console/api/auth/", content=b"{nope")
    assert r.status_code == 400
    r = httpx.post(
        server.url + "/console/api/auth/",
        json={"email": "admin@modelhost.local", "password": "e2e-admin-password"},
    )
    tokens = r.json()
    r = httpx.post(server.url + "/console/api/auth/refresh/", json={"refresh": tokens["refresh"]})
    assert r.status_code == 200 and r.json()["access"]
    r = httpx.post(server.url + "/console/api/auth/refresh/", json={"refresh": tokens["access"]})
    assert r.status_code == 401


def test_users_disable_and_session_revocation(server: Server, echo: tuple[str, str]) -> None:
    url, _ = echo
    admin = {"authorization": f"Bearer {server.admin_token()}"}
    api = server.url + "/console/api/modelhost"
    r = httpx.post(
        api + "/users/", json={"email": "ds@example.com", "password": "s3cret-pass"}, headers=admin
    )
    assert r.status_code == 201
    user_id = r.json()["id"]
    # without a grant the new user cannot get a session token for the model
    grant = {"user": "ds@example.com", "prefix": "models/test", "permission": "use"}
    r = httpx.post(api + "/grants/", json=grant, headers=admin)
    assert r.status_code == 201, r.text
    access = httpx.post(
        server.url + "/console/api/auth/",
        json={"email": "ds@example.com", "password": "s3cret-pass"},
    ).json()["access"]
    user = {"authorization": f"Bearer {access}"}
    token = httpx.request(
        "GET", api + "/model-auth/", json={"model_url": url}, headers=user
    ).json()["token"]
    assert httpx.post(url, json={"u": 1}, headers=_auth(token)).status_code == 200
    # a non-admin cannot deploy or create users
    assert (
        httpx.post(
            api + "/users/", json={"email": "x@y.z", "password": "12345678"}, headers=user
        ).status_code
        == 403
    )
    # the owner revokes one session token: it stops within the poll bound (0.5 s here)
    assert (
        httpx.post(api + "/session-tokens/revoke/", json={"token": token}, headers=user).status_code
        == 200
    )
    _until(
        lambda: httpx.post(url, json={"u": 1}, headers=_auth(token)).status_code == 401,
        "the revoked session token is refused",
    )
    # disabling the user ends every token of theirs
    token2 = httpx.request(
        "GET", api + "/model-auth/", json={"model_url": url}, headers=user
    ).json()["token"]
    assert httpx.post(url, json={"u": 2}, headers=_auth(token2)).status_code == 200
    assert httpx.post(api + f"/users/{user_id}/disable/", headers=admin).status_code == 200
    _until(
        lambda: httpx.post(url, json={"u": 2}, headers=_auth(token2)).status_code == 401,
        "the disabled user's session token is refused",
    )
    assert (
        httpx.post(
            server.url + "/console/api/auth/",
            json={"email": "ds@example.com", "password": "s3cret-pass"},
        ).status_code
        == 401
    )


def test_metrics_count_requests(server: Server, echo: tuple[str, str]) -> None:
    url, token = echo
    httpx.post(url, json={}, headers=_auth(token))
    assert httpx.get(server.url + "/metrics").status_code == 401
    admin = {"authorization": f"Bearer {server.admin_token()}"}
    text = httpx.get(server.url + "/metrics", headers=admin).text
    assert 'modelhost_requests_total{model="echo",prefix="models/test"}' in text
    assert "modelhost_ready_replicas" in text
    assert 'modelhost_request_duration_seconds_count{model="echo",prefix="models/test"' in text


def test_sdk_deploy_raises_when_the_new_version_fails(server: Server, folders: Path) -> None:
    from modelhost.client import deploy
    from modelhost.errors import ModelNotReady

    with server.sdk_credentials():
        urls = deploy("test-depl", "models/test", "sdk", model_dir(folders, "ok", "echo.py"))
        assert urls[0].endswith("/models/test/sdk/")
        with pytest.raises(ModelNotReady, match="weights are missing"):
            deploy("test-depl", "models/test", "sdk", model_dir(folders, "bad", "bad_init.py"))


def _running_versions(name: str) -> set[int]:
    """Versions of model `name` with a live worker process (read from /proc)."""
    import json

    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:
            continue
        if b"modelhost.worker" not in args:
            continue
        try:
            spec = json.loads(Path(args[-1].decode()).read_text())
        except (OSError, ValueError):
            continue
        if spec["name"] == name:
            found.add(int(spec["version"]))
    return found


def test_old_versions_are_unloaded_beyond_keep_versions(server: Server, folders: Path) -> None:
    deployed = [
        server.deploy(model_dir(folders, f"k{n}", "echo.py"), "models/test", "keep")
        for n in range(3)
    ]
    assert [d["state"] for d in deployed] == ["ready"] * 3
    token = server.session_token(deployed[0]["api_url"])
    deadline = time.time() + 20
    while _running_versions("keep") != {2, 3} and time.time() < deadline:
        time.sleep(0.2)
    assert _running_versions("keep") == {2, 3}  # MODELHOST_KEEP_VERSIONS defaults to 2
    r = httpx.post(deployed[0]["api_version_url"], json={"x": 1}, headers=_auth(token))
    assert r.status_code == 404
    assert "unloaded" in r.json()["error"]["message"]
    assert "MODELHOST_KEEP_VERSIONS" in r.json()["error"]["message"]
    meta = httpx.get(deployed[0]["api_version_url"] + "?get_meta=true", headers=_auth(token))
    assert meta.json()["state"] == "stopped"
    for kept in deployed[1:]:
        r = httpx.post(kept["api_version_url"], json={"x": 1}, headers=_auth(token))
        assert r.status_code == 200 and r.json() == {"x": 1}
    r = httpx.post(deployed[0]["api_url"], json={"x": 2}, headers=_auth(token))
    assert r.status_code == 200 and r.headers["x-prt-model-version"] == "3"
