"""The client's request headers reach `predict` (``http_request.headers``) on a real server,
and ``Accept: text/csv`` turns a DataFrame answer into CSV, as Practicus clients ask."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest

from e2e.harness import Server, bearer, free_port

pd = pytest.importorskip(
    "pandas", reason="pandas is the 'classic' extra: pip install -e '.[classic]'"
)
pytestmark = pytest.mark.slow

MODEL = """
import pandas as pd

def predict(http_request, df=None, **kwargs):
    if kwargs.get("sub_path") == "headers":
        return dict(http_request.headers)
    return pd.DataFrame({"doubled": [2 * v for v in (df["x"] if df is not None else [])]})
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    root = tmp_path_factory.mktemp("headers")
    srv = Server(root / "home", free_port()).start()
    folder = root / "frames"
    folder.mkdir()
    (folder / "model.py").write_text(MODEL)
    result = srv.deploy(folder, "compat", "frames")
    assert result["status"] == 200, result
    yield result["api_url"], bearer(srv.session_token(result["api_url"]))
    srv.stop()


def test_accept_text_csv_answers_a_dataframe_as_csv(model: tuple[str, dict[str, str]]) -> None:
    api_url, auth = model
    records = [{"x": 1}, {"x": 2}]
    as_csv = httpx.post(api_url, json=records, headers={**auth, "accept": "text/csv"})
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    assert pd.read_csv(io.BytesIO(as_csv.content))["doubled"].tolist() == [2, 4]
    as_json = httpx.post(api_url, json=records, headers=auth)
    assert as_json.headers["content-type"] == "application/json"
    assert as_json.json() == [{"doubled": 2}, {"doubled": 4}]


def test_http_request_headers_are_the_clients_less_credentials(
    model: tuple[str, dict[str, str]],
) -> None:
    api_url, auth = model
    r = httpx.post(
        api_url + "headers",
        json=[{"x": 1}],
        headers={**auth, "x-client-tag": "abc", "accept": "*/*"},
    )
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["x-client-tag"] == "abc" and seen["accept"] == "*/*"
    assert "authorization" not in seen and seen["content-type"] == "application/json"
