"""The client's request headers reach `predict` (`http_request.headers`), never its
credentials; `Accept: text/csv` turns a returned DataFrame into CSV (issue 10)."""

from __future__ import annotations

from pathlib import Path

import httpx

from e2e.harness import Server, bearer, model_dir

HEADERS_MODEL = """
def predict(http_request, **kwargs):
    return {"headers": dict(http_request.headers)}
"""

FRAME_MODEL = """
def predict(df, **kwargs):
    df["double"] = df["x"] * 2
    return df
"""


def _deploy(server: Server, folder: Path, name: str) -> tuple[str, dict[str, str]]:
    result = server.deploy(folder, "headers", name)
    assert result["state"] == "ready", result
    return result["api_url"], bearer(server.session_token(result["api_url"]))


def test_request_headers_reach_predict_without_credentials(server: Server, folders: Path) -> None:
    url, auth = _deploy(server, model_dir(folders, "hdr", HEADERS_MODEL), "hdr")
    r = httpx.post(
        url,
        content=b'{"a": 1}',
        headers={
            **auth,
            "content-type": "application/json",
            "x-trace": "abc",
            "accept-language": "tr",
            "cookie": "session=secret",
            "proxy-authorization": "Basic c2VjcmV0",
        },
    )
    assert r.status_code == 200, r.text
    seen = r.json()["headers"]
    assert seen["x-trace"] == "abc" and seen["accept-language"] == "tr", seen
    assert seen["content-type"] == "application/json" and seen["content-length"] == "8", seen
    for secret in ("authorization", "cookie", "proxy-authorization"):
        assert secret not in seen, seen
    assert "secret" not in r.text and auth["authorization"] not in r.text


def test_accept_csv_returns_a_dataframe_as_csv(server: Server, folders: Path) -> None:
    url, auth = _deploy(server, model_dir(folders, "frame", FRAME_MODEL), "frame")
    rows = [{"x": 1}, {"x": 2}]
    as_json = httpx.post(url, json=rows, headers=auth)
    assert as_json.json() == [{"x": 1, "double": 2}, {"x": 2, "double": 4}], as_json.text
    as_csv = httpx.post(url, json=rows, headers={**auth, "accept": "text/csv"})
    assert as_csv.headers["content-type"].startswith("text/csv"), as_csv.headers
    assert as_csv.text.splitlines() == ["x,double", "1,2", "2,4"], as_csv.text
