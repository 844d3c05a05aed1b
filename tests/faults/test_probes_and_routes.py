"""Against a real `modelhost serve`: route details (get_meta, 405, 415), `/readyz`,
`Retry-After` on 503 and the latency histogram (issue 10, items 8, 10 and 12)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.harness import Server, free_port, model_dir
from e2e.harness import bearer as _auth
from e2e.harness import poll as _poll

METRICS_TOKEN = "faults-metrics-token"
SLOW_INIT = """
import asyncio


async def init(model_meta=None, *args, **kwargs):
    await asyncio.sleep(3)


async def predict(payload_dict: dict, **kwargs):
    return payload_dict
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("mh-home"),
        free_port(),
        extra_env={"MODELHOST_METRICS_TOKEN": METRICS_TOKEN},
    ).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def echo(server: Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = model_dir(tmp_path_factory.mktemp("m"), "echo", "echo.py")
    result = server.deploy(folder, "faults", "echo")
    assert result["status"] == 200 and result["state"] == "ready", result
    return result["api_url"], server.session_token(result["api_url"])


# --- get_meta ---------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["get_meta=true", "get_meta=TRUE", "get_meta=True", "get_meta=1"])
def test_get_meta_is_a_query_parameter(echo: tuple[str, str], query: str) -> None:
    url, token = echo
    r = httpx.get(f"{url}?{query}", headers=_auth(token))
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "echo" and r.json()["state"] == "ready"


@pytest.mark.parametrize("query", ["x=get_meta=true", "get_meta=false", "xget_meta=true"])
def test_get_meta_inside_another_parameter_is_a_predict(echo: tuple[str, str], query: str) -> None:
    url, token = echo
    r = httpx.post(f"{url}?{query}", json={"a": 1}, headers=_auth(token))
    assert r.status_code == 200, r.text
    assert r.json() == {"a": 1}


# --- methods and content types ------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
def test_other_methods_are_405_with_allow(echo: tuple[str, str], method: str) -> None:
    url, token = echo
    for target in (url, url + "v1/"):
        r = httpx.request(method, target, json={"a": 1}, headers=_auth(token))
        assert r.status_code == 405, (method, target, r.text)
        assert r.headers["allow"] == "GET, POST"
        if method != "HEAD":
            error = r.json()["error"]
            assert error["type"] == "method_not_allowed"
            assert method in error["message"]


def test_405_and_415_come_after_authentication(server: Server, echo: tuple[str, str]) -> None:
    """Anonymous callers learn nothing: the same 401 for existing and missing models, whatever
    the method or content type."""
    url, _ = echo
    missing = server.url + "/faults/no-such-model/"
    for target in (url, missing):
        assert httpx.put(target, json={}).status_code == 401
        r = httpx.post(target, content=b"{}", headers={"content-type": ";;;=="})
        assert r.status_code == 401


def test_a_content_type_that_is_no_media_type_is_415(echo: tuple[str, str]) -> None:
    url, token = echo
    r = httpx.post(url, content=b'{"a": 1}', headers={**_auth(token), "content-type": ";;;=="})
    assert r.status_code == 415, r.text
    error = r.json()["error"]
    assert error["type"] == "unsupported_media_type"
    assert "Content-Type" in error["message"] and ";;;==" in error["message"]
    # parameters and their quoting are fine
    for good in ("application/json; charset=utf-8", 'application/json; x="a;b"'):
        r = httpx.post(url, content=b'{"a": 1}', headers={**_auth(token), "content-type": good})
        assert r.status_code == 200 and r.json() == {"a": 1}, (good, r.text)


# --- Retry-After ---------------------------------------------------------------------------


def test_503_for_a_gone_worker_carries_retry_after(server: Server, tmp_path: Path) -> None:
    result = server.deploy(model_dir(tmp_path, "crash", "crash.py"), "faults", "crash")
    assert result["state"] == "ready", result
    token = server.session_token(result["api_url"])
    r = httpx.post(result["api_url"], json={"crash": True}, headers=_auth(token))
    assert r.status_code == 503 and r.json()["error"]["type"] == "worker_unavailable"
    assert int(r.headers["retry-after"]) >= 1
    # the supervisor brings it back: poll, with a deadline, until it answers again
    _poll(
        lambda: httpx.post(result["api_url"], json={}, headers=_auth(token)).status_code == 200,
        "the crashed worker serves again",
    )


# --- /readyz --------------------------------------------------------------------------------


def _readyz(server: Server, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(server.url + "/readyz", headers=headers or {})


def test_readyz(server: Server, echo: tuple[str, str], tmp_path: Path) -> None:
    admin = _auth(server.admin_token())
    metrics = _auth(METRICS_TOKEN)
    # every version ready (a crashed worker of another test may still be coming back)
    r = _poll(lambda: (r := _readyz(server)).status_code == 200 and r, "ready at first")
    assert r.json() == {"ready": True, "not_ready": 0}
    detail = _readyz(server, admin).json()
    assert detail["ready"] is True
    assert detail["models"]["faults/echo"]["state"] == "ready"

    # a version that failed to start: 503, the probe says so; the model answers 503 too
    failed = server.deploy(model_dir(tmp_path, "bad", "bad_init.py"), "faults", "shaky")
    assert failed["state"] == "failed", failed
    r = _readyz(server)
    assert r.status_code == 503
    assert r.json() == {"ready": False, "not_ready": 1}
    for secret in ("shaky", "echo", "faults"):
        assert secret not in r.text  # anonymous callers cannot enumerate models
    for headers in (admin, metrics):
        r = _readyz(server, headers)
        assert r.status_code == 503
        shaky = r.json()["models"]["faults/shaky"]
        assert shaky["state"] == "failed" and shaky["version"] == failed["version"]
        assert r.json()["models"]["faults/echo"]["state"] == "ready"
    # a wrong token is no privilege, and no error either
    r = _readyz(server, _auth("not-a-token"))
    assert r.status_code == 503 and "models" not in r.json()
    token = server.session_token(failed["api_url"])
    r = httpx.post(failed["api_url"], json={}, headers=_auth(token))
    assert r.status_code == 503 and r.json()["error"]["type"] == "model_not_ready"
    assert int(r.headers["retry-after"]) >= 1

    # a fixed redeploy that is still loading: 503; once ready, the failed version it
    # supersedes no longer counts and the probe is 200
    slow = model_dir(tmp_path, "slow", SLOW_INIT)
    deployed: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: deployed.update(server.deploy(slow, "faults", "shaky"))
    )
    thread.start()
    try:

        def loading() -> dict[str, Any] | None:
            body: dict[str, Any] = _readyz(server, metrics).json()
            versions = body.get("models", {}).get("faults/shaky", {}).get("versions", {})
            return body if "loading" in versions.values() else None

        body = _poll(loading, "the new version is seen loading")
        assert body["ready"] is False
        assert _readyz(server).status_code == 503
        r = httpx.get(failed["api_url"] + f"v{failed['version'] + 1}/", headers=_auth(token))
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    finally:
        thread.join(120)
    assert deployed["state"] == "ready", deployed
    r = _poll(lambda: (r := _readyz(server, admin)).status_code == 200 and r, "ready again")
    shaky = r.json()["models"]["faults/shaky"]
    assert shaky == {
        "version": deployed["version"],
        "state": "ready",
        "versions": {f"v{failed['version']}": "failed", f"v{deployed['version']}": "ready"},
    }


def test_healthz_needs_nothing_and_metrics_still_need_a_token(server: Server) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/metrics", headers=_auth(METRICS_TOKEN)).status_code == 200


# --- metrics -----------------------------------------------------------------------------------


def _metric_lines(server: Server, name: str) -> list[str]:
    text = httpx.get(server.url + "/metrics", headers=_auth(server.admin_token())).text
    return [line for line in text.splitlines() if line.startswith(name)]


def _count(lines: list[str], *labels: str) -> float:
    for line in lines:
        if "_count{" in line and all(label in line for label in labels):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_latency_histogram_and_in_flight_gauge(server: Server, echo: tuple[str, str]) -> None:
    url, token = echo
    name = "modelhost_request_duration_seconds"
    ok = ('model="echo"', 'prefix="faults"', 'status="2xx"', 'version="1"')
    refused = ('model="echo"', 'prefix="faults"', 'status="4xx"')
    before_ok = _count(_metric_lines(server, name), *ok)
    before_refused = _count(_metric_lines(server, name), *refused)
    for i in range(5):
        assert httpx.post(url, json={"i": i}, headers=_auth(token)).status_code == 200
    assert httpx.put(url, json={}, headers=_auth(token)).status_code == 405
    lines = _metric_lines(server, name)
    assert _count(lines, *ok) == before_ok + 5
    assert _count(lines, *refused) == before_refused + 1
    buckets = [line for line in lines if "_bucket{" in line and all(x in line for x in ok)]
    assert any('le="+Inf"' in line for line in buckets)
    assert any('le="0.001"' in line for line in buckets)
    assert any(line.startswith(f"{name}_sum{{") for line in lines)
    # this scrape is a console request: no model request is in flight now
    gauge = _metric_lines(server, "modelhost_http_requests_in_flight")
    assert gauge == ["modelhost_http_requests_in_flight 0.0"]
    # the counters that were there before are still there
    assert _metric_lines(server, 'modelhost_requests_total{model="echo",prefix="faults"}')
