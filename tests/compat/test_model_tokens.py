"""The Practicus how-to "Using model access tokens" (how-to/model-tokens.md) against a real
server: its SDK cells (region lists as DataFrames, `get_session_token`) and its "No
Practicus SDK" REST cell (login, refresh, the model id from `get_meta`'s `x-prt-model-id`
header, `model-auth/`), run as written with only the URLs and credentials changed. Skipped
when ``../shared/reference/practicus/`` is not there."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from compat.reference import REFERENCE
from e2e.harness import ADMIN_EMAIL, ADMIN_PASSWORD, Server, bearer, free_port

pd = pytest.importorskip(
    "pandas", reason="pandas is the 'classic' extra: pip install -e '.[classic]'"
)
pytestmark = pytest.mark.slow

PAGE = REFERENCE / "how-to" / "model-tokens.md"
ECHO = "def predict(payload_dict, **kwargs):\n    return {'echo': payload_dict}\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("tokens-home"), free_port()).start()
    yield srv
    srv.stop()


def _cells() -> list[str]:
    if not PAGE.is_file():
        pytest.skip(f"{PAGE} is not there (../shared/reference/practicus/)")
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)


def test_model_tokens_how_to(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cells = _cells()
    folder = tmp_path / "diamond-price"
    folder.mkdir()
    (folder / "model.py").write_text(ECHO)
    deployed = server.deploy(folder, "models/practicus", "diamond-price")
    assert deployed["status"] == 200, deployed

    out: list[str] = []

    def show(*args: Any, **_kw: Any) -> None:
        out.append(" ".join(str(a) for a in args))

    scope: dict[str, Any] = {"print": show, "display": show}
    with server.sdk_credentials():
        for cell in cells:
            if "assert model_name" in cell:
                continue
            if "model_name = None" in cell:  # the parameters cell, filled in
                cell = 'model_name = "diamond-price"\nmodel_prefix = "models/practicus"\n'
            cell = cell.replace("http://local.practicus.io", server.url)
            cell = cell.replace('"admin@admin.com"', repr(ADMIN_EMAIL))
            cell = cell.replace('password = "admin"', f"password = {ADMIN_PASSWORD!r}")
            exec(cell, scope)

    text = "\n".join(out)
    assert "❌" not in text, text
    filtered = scope["filtered_df"]
    assert filtered["name"].tolist() == ["diamond-price"], text
    assert scope["model_id"] == deployed.get("model_id", scope["model_id"]) > 0
    for token in (scope["token"], scope["model_api_token"]):  # the SDK's, then the REST one
        r = httpx.post(scope["api_url"], json={"x": 1}, headers=bearer(token))
        assert r.status_code == 200 and r.json() == {"echo": {"x": 1}}, r.text


def test_console_token_reads_get_meta_only_where_it_may_use_the_model(
    server: Server, tmp_path: Path
) -> None:
    """A console token reads get_meta of a model it may use (the REST flow above); a model it
    may not use looks missing (404, as model-auth/ answers), and it never predicts."""
    folder = tmp_path / "meta-only"
    folder.mkdir()
    (folder / "model.py").write_text(ECHO)
    api_url = server.deploy(folder, "team-x", "meta-only")["api_url"]
    admin = bearer(server.admin_token())
    meta = httpx.get(api_url + "?get_meta=true", headers=admin)
    assert meta.status_code == 200 and int(meta.headers["x-prt-model-id"]) > 0
    assert httpx.post(api_url, json={}, headers=admin).status_code == 401

    email, password = "no-grants@example.com", "no-grants-password-1"
    created = httpx.post(
        server.url + "/console/api/modelhost/users/",
        json={"email": email, "password": password},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    login = httpx.post(
        server.url + "/console/api/auth/", json={"email": email, "password": password}
    )
    user = bearer(login.json()["access"])
    hidden = httpx.get(api_url + "?get_meta=true", headers=user)
    missing = httpx.get(server.url + "/team-x/nope/?get_meta=true", headers=user)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"]["type"] == missing.json()["error"]["type"]
