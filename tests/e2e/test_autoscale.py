"""Autoscaling against a real server: load raises replicas toward max_replicas, idle brings
them back to min_replicas (or to zero, and the next request waits for a cold start), and no
request fails while it happens."""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.harness import Server, bearer, free_port, model_dir, poll

MH = "/console/api/modelhost"
SLEEPY = """
import asyncio


async def predict(payload_dict: dict, **kwargs):
    await asyncio.sleep(0.2)
    return {"ok": True}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("autoscale-home"),
        free_port(),
        extra_env={
            "MODELHOST_AUTOSCALE_TICK_S": "0.2",
            "MODELHOST_AUTOSCALE_WINDOW_S": "1",
            "MODELHOST_DRAIN_TIMEOUT_S": "10",
            "MODELHOST_COLD_START_TIMEOUT_S": "60",
        },
    ).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def admin(server: Server) -> dict[str, str]:
    return bearer(server.admin_token())


def _call(
    server: Server, admin: dict[str, str], method: str, path: str, body: Any, status: int
) -> Any:
    r = httpx.request(method, server.url + MH + path, json=body, headers=admin, timeout=60)
    assert r.status_code == status, r.text
    return r.json()


def _deploy(server: Server, tmp: Path, name: str, source: str, deployment: str) -> str:
    result = server.deploy(model_dir(tmp, name, source), "scaling", name, deployment)
    assert result["status"] == 200 and result["state"] == "ready", result
    return str(result["api_url"])


def _meta(url: str, headers: dict[str, str]) -> dict[str, Any]:
    r = httpx.get(url + "?get_meta=true", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


class Clients:
    """`n` clients calling `url` in a loop until stopped; every answer is counted."""

    def __init__(self, url: str, headers: dict[str, str], n: int) -> None:
        self.url, self.headers = url, headers
        self.stop = threading.Event()
        self.statuses: Counter[int] = Counter()
        self.pods: Counter[str] = Counter()
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(self.url, json={}, headers=self.headers)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                self.statuses[r.status_code] += 1
                self.pods[r.headers.get("x-prt-pod-name", "")] += 1
                if r.status_code != 200:
                    self.errors.append(f"{r.status_code} {r.text}")

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(60)


def test_load_scales_up_to_max_and_idle_back_to_min_without_a_failed_request(
    server: Server, admin: dict[str, str], tmp_path: Path
) -> None:
    body = {"key": "auto", "min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1}
    row = _call(server, admin, "POST", "/deployments/", {**body, "scale_down_delay_s": 2}, 201)
    assert (row["min_replicas"], row["max_replicas"], row["scale_down_delay_s"]) == (1, 3, 2)
    url = _deploy(server, tmp_path, "sleepy", SLEEPY, "auto")
    headers = bearer(server.session_token(url))
    assert _meta(url, headers)["replicas"] == 1

    with Clients(url, headers, 6) as load:
        poll(lambda: _meta(url, headers)["replicas"] == 3, "scaled up to 3 replicas", 120)
        scaled = _meta(url, headers)["autoscale"]
        assert scaled["desired"] == 3 and scaled["max_replicas"] == 3, scaled
        poll(
            lambda: [r["state"] for r in _meta(url, headers)["replica_states"]] == ["ready"] * 3,
            "three ready replicas",
            120,
        )
        poll(lambda: len(load.pods) == 3, "answers from all three replicas", 60)
    assert load.statuses[200] > 0
    poll(lambda: _meta(url, headers)["replicas"] == 1, "back to one replica when idle", 120)
    assert not load.errors, load.errors[:3]
    assert set(load.statuses) == {200}
    status = _meta(url, headers)["autoscale"]
    assert (status["current"], status["desired"], status["min_replicas"]) == (1, 1, 1), status
    log = server.log()  # one INFO line per decision, with its numbers
    assert re.search(r"autoscale scaling/sleepy v1: [12] -> 3 replicas \(\d", log), log[-2000:]
    assert "autoscale scaling/sleepy v1: 2 -> 1 replicas (0.00 requests in flight" in log
    (left,) = _meta(url, headers)["replica_states"]  # the first replica stays (either runtime)
    r = httpx.post(url, json={}, headers=headers, timeout=30)
    assert r.status_code == 200 and r.headers["x-prt-pod-name"] == left["pod"], r.text
    assert left["pod"] in load.pods


def test_idle_version_scales_to_zero_and_the_next_request_waits_for_a_cold_start(
    server: Server, admin: dict[str, str], tmp_path: Path
) -> None:
    body = {"key": "zero", "min_replicas": 0, "max_replicas": 2, "scale_down_delay_s": 0.5}
    _call(server, admin, "POST", "/deployments/", body, 201)
    url = _deploy(server, tmp_path, "napper", "echo.py", "zero")
    headers = bearer(server.session_token(url))
    poll(lambda: _meta(url, headers)["replicas"] == 0, "scaled to zero when idle", 120)
    meta = _meta(url, headers)
    assert meta["state"] == "ready" and meta["replica_states"] == [], meta
    assert meta["autoscale"]["current"] == 0
    ready = httpx.get(server.url + "/readyz", timeout=10)
    assert ready.status_code == 200, ready.text  # scaled to zero is not "not ready"

    r = httpx.post(url, json={"cold": True}, headers=headers, timeout=90)
    assert r.status_code == 200, r.text
    assert r.json() == {"cold": True}
    assert "autoscale scaling/napper v1: 0 -> 1 replica (cold start)" in server.log()
    # idle again: back to zero, and again a request wakes it
    poll(lambda: _meta(url, headers)["replicas"] == 0, "scaled to zero again", 120)
    replies = []
    threads = [
        threading.Thread(
            target=lambda: replies.append(httpx.post(url, json={}, headers=headers, timeout=90))
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [r.status_code for r in replies] == [200] * 4, [r.text for r in replies]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas"),
        ({"max_replicas": 0}, "max_replicas"),
        ({"min_replicas": -1, "max_replicas": 2}, "min_replicas"),
        ({"max_replicas": 2, "target_ongoing_requests": 0}, "target_ongoing_requests"),
        ({"max_replicas": 2, "scale_down_delay_s": -1}, "scale_down_delay_s"),
        ({"max_replicas": 1.5}, "max_replicas"),
    ],
)
def test_invalid_autoscaling_settings_are_refused_naming_the_field(
    server: Server, admin: dict[str, str], body: dict[str, Any], field: str
) -> None:
    error = _call(server, admin, "POST", "/deployments/", {"key": "bad", **body}, 400)
    assert field in error["error"]["message"], error


SLOW_INIT = """
import asyncio


async def init(model_meta=None, *args, **kwargs):
    await asyncio.sleep(3)


async def predict(payload_dict: dict, **kwargs):
    return payload_dict
"""


def test_a_cold_start_slower_than_its_bound_answers_503_and_goes_on_starting(
    tmp_path: Path,
) -> None:
    srv = Server(
        tmp_path / "home",
        free_port(),
        extra_env={
            "MODELHOST_AUTOSCALE_TICK_S": "0.1",
            "MODELHOST_AUTOSCALE_WINDOW_S": "0.3",
            "MODELHOST_COLD_START_TIMEOUT_S": "0.5",
        },
    ).start()
    try:
        admin = bearer(srv.admin_token())
        body = {"key": "cold", "min_replicas": 0, "max_replicas": 1, "scale_down_delay_s": 2}
        _call(srv, admin, "POST", "/deployments/", body, 201)
        url = _deploy(srv, tmp_path, "slow", SLOW_INIT, "cold")
        headers = bearer(srv.session_token(url))
        poll(lambda: _meta(url, headers)["replicas"] == 0, "scaled to zero", 120)
        r = httpx.post(url, json={"n": 1}, headers=headers, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        message = r.json()["error"]["message"]
        assert "scaled to zero" in message and "MODELHOST_COLD_START_TIMEOUT_S" in message
        # nobody waits now, yet the starting replica is not scaled away: a retry gets it,
        # without another cold start
        answer = poll(
            lambda: (
                (x := httpx.post(url, json={"n": 2}, headers=headers, timeout=30)).status_code
                == 200
                and x
            ),
            "the cold start finished",
            60,
            every_s=0.2,
        )
        assert answer.json() == {"n": 2}
        assert srv.log().count("0 -> 1 replica (cold start)") == 1, srv.log()[-3000:]
    finally:
        srv.stop()


def test_a_failed_cold_start_answers_503_and_the_next_request_tries_again(
    server: Server, admin: dict[str, str], tmp_path: Path
) -> None:
    marker = tmp_path / "break-the-next-start"
    source = (
        "from pathlib import Path\n\n\n"
        "async def init(model_meta=None, *args, **kwargs):\n"
        f"    if Path({str(marker)!r}).exists():\n"
        "        raise RuntimeError('the disk is full (a passing cause)')\n\n\n"
        "async def predict(payload_dict: dict, **kwargs):\n"
        "    return payload_dict\n"
    )
    body = {"key": "flaky", "min_replicas": 0, "max_replicas": 1, "scale_down_delay_s": 0.5}
    _call(server, admin, "POST", "/deployments/", body, 201)
    url = _deploy(server, tmp_path, "flaky", source, "flaky")
    headers = bearer(server.session_token(url))
    poll(lambda: _meta(url, headers)["replicas"] == 0, "scaled to zero", 120)
    marker.write_text("")
    r = httpx.post(url, json={}, headers=headers, timeout=90)
    assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    message = r.json()["error"]["message"]
    assert "starting its replica failed" in message and "the disk is full" in message, message
    # back at zero and ready (not failed for good): once the cause is gone, a request works
    poll(lambda: _meta(url, headers)["state"] == "ready", "ready at zero replicas again", 60)
    marker.unlink()
    r = httpx.post(url, json={"again": 1}, headers=headers, timeout=90)
    assert r.status_code == 200 and r.json() == {"again": 1}, r.text
