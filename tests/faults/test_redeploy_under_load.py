"""Redeploys under load lose nothing (issue 10): with MODELHOST_KEEP_VERSIONS=1 every new
version retires the previous one while 8 clients keep sending plain and streamed requests for
30 s; every request gets a 200 and every stream arrives whole (an aborted stream raises in
httpx). Nothing asserts a duration."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e.harness import Server, free_port
from e2e.harness import bearer as _auth
from e2e.harness import poll as _poll

MODEL = Path(__file__).parent / "models" / "plain_and_stream.py"
CLIENTS = 8
LOAD_S = 30.0
PIECES = "".join(f"piece {i}\n" for i in range(10))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "home", free_port(), extra_env={"MODELHOST_KEEP_VERSIONS": "1"}).start()
    try:
        yield srv
    finally:
        srv.stop()


def _folder(tmp: Path, n: int) -> Path:
    folder = tmp / f"v{n}"
    folder.mkdir()
    shutil.copy(MODEL, folder / "model.py")
    return folder


def test_redeploys_under_eight_clients_lose_no_request_and_cut_no_stream(
    server: Server, tmp_path: Path
) -> None:
    first = server.deploy(_folder(tmp_path, 0), "faults", "redeployed")
    assert first["status"] == 200 and first["state"] == "ready", first
    url = first["api_url"]
    headers = _auth(server.session_token(url))
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        streamed = k % 2 == 1
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                try:
                    if streamed:
                        with http.stream("POST", url, json={"stream": True}, headers=headers) as r:
                            text = "".join(r.iter_text())
                        ok = r.status_code == 200 and text == PIECES
                    else:
                        r = http.post(url, json={}, headers=headers)
                        text = r.text
                        ok = r.status_code == 200 and r.json() == {"ok": True}
                    with lock:
                        outcomes["ok" if ok else "failed"] += 1
                        versions[r.headers.get("x-prt-model-version", "?")] += 1
                        if not ok:
                            failures.append(f"{r.status_code} {text[:200]!r}")
                except httpx.HTTPError as exc:
                    with lock:
                        outcomes["failed"] += 1
                        failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    redeploys = 0
    try:
        started = time.monotonic()
        while time.monotonic() - started < LOAD_S:
            deployed = server.deploy(_folder(tmp_path, redeploys + 1), "faults", "redeployed")
            assert deployed["status"] == 200 and deployed["state"] == "ready", deployed
            redeploys += 1
            # the next redeploy only once the previous version has been retired
            _poll(
                lambda: _meta_versions(server, url, headers) == 1,
                "the older version retired (MODELHOST_KEEP_VERSIONS=1)",
            )
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert not failures, f"{len(failures)} failed of {sum(outcomes.values())}: {failures[:5]}"
    assert redeploys >= 3 and outcomes["ok"] > 100, (redeploys, outcomes)
    assert len(versions) >= 3, versions  # answers really came from several versions


def _meta_versions(server: Server, url: str, headers: dict[str, str]) -> int:
    r = httpx.get(url, params={"get_meta": "true"}, headers=headers, timeout=30)
    states = r.json()["versions"].values()
    return sum(1 for s in states if s in ("ready", "loading"))
