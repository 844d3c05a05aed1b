"""Against a real `modelhost serve`: a worker over its memory bound (MODELHOST_WORKER_MEMORY_MB)
is killed and restarted, saying why in the 503s meanwhile and in get_meta's `last_exit`;
other models keep serving (issue 10, item 9). Polled, never timed."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.harness import Server, bearer, free_port, model_dir, poll

MODELS = Path(__file__).parent / "models"
BOUND_MB = 250
REASON = f"exceeded its memory bound of {BOUND_MB} MB"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"MODELHOST_WORKER_MEMORY_MB": str(BOUND_MB)}
    srv = Server(tmp_path_factory.mktemp("mh-memory"), free_port(), extra_env=env).start()
    yield srv
    srv.stop()


def _deploy(server: Server, folder: Path, name: str) -> tuple[str, dict[str, str]]:
    result = server.deploy(folder, "faults/memory", name)
    assert result["state"] == "ready", result
    return result["api_url"], bearer(server.session_token(result["api_url"]))


def _post(url: str, headers: dict[str, str], payload: dict[str, Any]) -> httpx.Response:
    return httpx.post(url, json=payload, headers=headers, timeout=60)


def test_a_worker_over_its_memory_bound_is_killed_and_restarted(
    server: Server, tmp_path: Path
) -> None:
    hog_dir = tmp_path / "hog"
    hog_dir.mkdir()
    shutil.copy(MODELS / "memory_hog.py", hog_dir / "model.py")
    hog, hog_auth = _deploy(server, hog_dir, "hog")
    other, other_auth = _deploy(server, model_dir(tmp_path, "echo", "echo.py"), "other")
    first = _post(hog, hog_auth, {"mb": 10})
    assert first.status_code == 200, first.text  # well under the bound: served
    pid = first.json()["pid"]

    r = _post(hog, hog_auth, {"mb": 300, "hold_s": 30})
    assert r.status_code == 503, r.text  # killed while answering, not after 30 s
    assert r.headers.get("retry-after"), r.headers
    assert REASON in r.json()["error"]["message"], r.text  # the request that did it learns why

    # While it restarts, the 503s say why; the other model answers all along.
    messages: list[str] = []

    def served_again() -> bool:
        assert _post(other, other_auth, {"x": 1}).json() == {"x": 1}
        answer = _post(hog, hog_auth, {"mb": 10})
        if answer.status_code == 503:
            messages.append(answer.json()["error"]["message"])
            return False
        assert answer.status_code == 200, answer.text
        return bool(answer.json()["pid"] != pid)

    poll(served_again, "the killed worker is replaced and the model answers")
    assert any(REASON in m and "restarting" in m for m in messages), messages

    meta = httpx.get(hog, params={"get_meta": "true"}, headers=hog_auth).json()
    assert REASON in meta["last_exit"], meta
    assert "MODELHOST_WORKER_MEMORY_MB" in meta["last_exit"], meta
    assert meta["restarts"] >= 1, meta
