"""``/{prefix}/docs/`` and ``/{prefix}/redoc/`` on a real server: the pages and their vendored
files without a token, the OpenAPI document of the models a token may use, and the pages
rendered by a real headless Chromium (Debian's ``/usr/bin/chromium``; skipped without it)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e.harness import Server, bearer, free_port, poll

pytestmark = pytest.mark.slow

ECHO = "def predict(payload_dict, **kwargs):\n    return payload_dict\n"
SIGNATURE = json.dumps(
    {
        "inputs": json.dumps([{"type": "double", "name": "Temperature", "required": True}]),
        "outputs": json.dumps([{"type": "double", "name": "predictions", "required": True}]),
    }
)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    root = tmp_path_factory.mktemp("docs")
    srv = Server(root / "home", free_port()).start()
    urls = {}
    for prefix, name, config in (
        ("team-docs", "ice-cream", {"model_name": "Ice cream", "model_signature_json": SIGNATURE}),
        ("team-docs", "echo", {}),
        ("elsewhere", "hidden-model", {}),
    ):
        folder = root / name
        folder.mkdir()
        (folder / "model.py").write_text(ECHO)
        (folder / "model.json").write_text(json.dumps(config))
        result = srv.deploy(folder, prefix, name)
        assert result["status"] == 200, result
        urls[name] = result["api_url"]
    yield srv, urls
    srv.stop()


def test_pages_and_files_need_no_token_and_name_no_model(
    site: tuple[Server, dict[str, str]],
) -> None:
    srv, _ = site
    for path in ("/team-docs/docs/", "/team-docs/redoc/", "/no-such-prefix/docs/"):
        page = httpx.get(srv.url + path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "ice-cream" not in page.text and "team-docs" not in page.text
    files = {
        "docs/swagger-ui-bundle.js": "text/javascript",
        "docs/swagger-ui.css": "text/css",
        "redoc/redoc.standalone.js": "text/javascript",
        "docs/modelhost-docs.js": "text/javascript",
    }
    for name, kind in files.items():
        r = httpx.get(f"{srv.url}/team-docs/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), name
        assert len(r.content) > 1000 or name.endswith("modelhost-docs.js")
    assert httpx.get(srv.url + "/team-docs/docs/openapi.json").status_code == 401
    head = httpx.head(srv.url + "/team-docs/redoc/redoc.standalone.js")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"])
    post = httpx.post(srv.url + "/team-docs/docs/", json={})
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


def test_openapi_lists_the_models_the_token_may_use(
    site: tuple[Server, dict[str, str]],
) -> None:
    srv, urls = site
    admin = bearer(srv.admin_token())
    doc = httpx.get(srv.url + "/team-docs/docs/openapi.json", headers=admin).json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {"/team-docs/ice-cream/", "/team-docs/echo/"}
    predict = doc["paths"]["/team-docs/ice-cream/"]["post"]
    assert predict["summary"] == "Ice cream"
    rows = predict["requestBody"]["content"]["application/json"]["schema"]
    assert rows["items"]["properties"] == {"Temperature": {"type": "number"}}
    assert "text/csv" in predict["requestBody"]["content"]

    session = bearer(srv.session_token(urls["echo"]))
    only = httpx.get(srv.url + "/team-docs/docs/openapi.json", headers=session).json()
    assert set(only["paths"]) == {"/team-docs/echo/"}
    one = httpx.get(srv.url + "/team-docs/ice-cream/docs/openapi.json", headers=admin).json()
    assert set(one["paths"]) == {"/team-docs/ice-cream/"}
    nothing = httpx.get(srv.url + "/no-such-prefix/docs/openapi.json", headers=admin).json()
    assert nothing["paths"] == {}


def _browser() -> object:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return pytest.importorskip("playwright.sync_api", reason="pip install playwright")


def test_swagger_ui_and_redoc_render_the_prefix_models(
    site: tuple[Server, dict[str, str]],
) -> None:
    sync_api = _browser()
    srv, _ = site
    token = srv.admin_token()
    with sync_api.sync_playwright() as p:  # type: ignore[attr-defined]
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{srv.url}/team-docs/docs/#token={token}")
            page.wait_for_selector("text=/team-docs/ice-cream/", timeout=30_000)
            text = page.inner_text("body")
            assert "/team-docs/echo/" in text and "hidden-model" not in text
            assert "#token" not in page.url  # the token left the address bar
            page.screenshot(path=str(srv.home / "docs.png"))

            page.goto(f"{srv.url}/team-docs/redoc/")  # same tab: the token is remembered
            poll(lambda: "/team-docs/echo/" in page.inner_text("body"), "ReDoc rendered", 30)
            assert "Ice cream" in page.inner_text("body")
            page.screenshot(path=str(srv.home / "redoc.png"))
            assert errors == []

            fresh = browser.new_page()  # another tab, no token: the form asks for one
            fresh.goto(f"{srv.url}/team-docs/docs/")
            fresh.fill("#mh-token-value", token)
            fresh.click("button[type=submit]")
            fresh.wait_for_selector("text=/team-docs/echo/", timeout=30_000)
        finally:
            browser.close()
