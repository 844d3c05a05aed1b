"""``prt.get_region()`` against a real server: url, username, prefix / deployment / model
lists with ``to_pandas()``; an admin sees the admin lists, anyone else what their models use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import practicuscore as prt
from e2e.harness import ADMIN_EMAIL, Server, free_port, model_dir

pytestmark = pytest.mark.slow
USER_EMAIL = "analyst@example.com"
USER_PASSWORD = "analyst-password-1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("region-home"), free_port()).start()
    root = tmp_path_factory.mktemp("region-models")
    for prefix, name in (("compat/shared", "echo"), ("compat/private", "secret")):
        result = srv.deploy(model_dir(root, name, "echo.py"), prefix, name, deployment="depl-a")
        assert result["status"] == 200, result
    admin = {"authorization": f"Bearer {srv.admin_token()}"}
    console = srv.url + "/console/api/modelhost/"
    r = httpx.post(console + "prefixes/", json={"key": "compat/empty"}, headers=admin)
    assert r.status_code == 201, r.text
    r = httpx.post(
        console + "users/", json={"email": USER_EMAIL, "password": USER_PASSWORD}, headers=admin
    )
    assert r.status_code == 201, r.text
    grant = {"user": USER_EMAIL, "prefix": "compat/shared", "permission": "use"}
    r = httpx.post(console + "grants/", json=grant, headers=admin)
    assert r.status_code in (200, 201), r.text
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _no_saved_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELHOST_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("MODELHOST_ACCESS_TOKEN", raising=False)


def test_admin_region(server: Server) -> None:
    pd = pytest.importorskip("pandas")
    with server.sdk_credentials():
        region = prt.get_region()
        assert region.url == server.url and region.username == ADMIN_EMAIL.split("@")[0]
        prefixes = [p.key for p in region.model_prefix_list]
        assert {"compat/shared", "compat/private", "compat/empty"} <= set(prefixes)
        assert "depl-a" in [d.key for d in region.model_deployment_list]
        models = {m.key: m for m in region.model_list}
        echo = models["compat/shared/echo"]
        assert echo.api_url == f"{server.url}/compat/shared/echo/" and echo.versions == "v1"
        assert echo.deployment == "depl-a" and echo.state == "ready"
        assert "compat/private/secret" in models

        df = region.model_list.to_pandas()
        assert isinstance(df, pd.DataFrame)
        assert {"prefix", "name", "model_id", "versions", "api_url"} <= set(df.columns)
        assert set(region.model_prefix_list.to_pandas()["prefix"]) >= set(prefixes)

        # the tutorials' flow: first deployment and prefix, URL, session token
        api_url = f"{region.url}/{region.model_prefix_list[0].key}/echo/"
        assert prt.current_region().url == prt.get_default_region().url == region.url
        assert prt.regions.get_default_region().url == region.url
    with server.sdk_credentials():
        token = prt.models.get_session_token(echo.api_url)
    r = httpx.post(echo.api_url, json={"a": 1}, headers={"authorization": f"Bearer {token}"})
    assert r.json() == {"a": 1}
    assert api_url.startswith(server.url)


def test_non_admin_region_lists_only_what_the_user_may_use(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELHOST_URL", server.url)
    monkeypatch.setenv("MODELHOST_EMAIL", USER_EMAIL)
    monkeypatch.setenv("MODELHOST_PASSWORD", USER_PASSWORD)
    region = prt.get_region()
    assert region.username == "analyst"
    assert [m.key for m in region.model_list] == ["compat/shared/echo"]
    assert [p.key for p in region.model_prefix_list] == ["compat/shared"]
    assert [d.key for d in region.model_deployment_list] == ["depl-a"]
