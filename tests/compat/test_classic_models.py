"""Classic Practicus models on a real server: `predict(df)`, `predict(http_request, df=None)`,
CSV in → CSV out (plain, lz4, gzip), JSON records, and the tutorials' own `model.py` files
from ``../shared/reference/practicus/`` byte for byte when that folder is there."""

from __future__ import annotations

import gzip
import importlib.util
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import lz4.frame
import pytest

from compat.reference import REFERENCE
from e2e.harness import Server, free_port

pd = pytest.importorskip(
    "pandas", reason="pandas is the 'classic' extra: pip install -e '.[classic]'"
)
pytestmark = pytest.mark.slow

MODELS = Path(__file__).parent / "models"
TRAIN = pd.DataFrame(
    {"Temperature": [10.0, 20.0, 30.0, 40.0], "Revenue": [110.0, 210.0, 310.0, 410.0]}
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("compat-home"), free_port()).start()
    yield srv
    srv.stop()


def _folder(tmp: Path, name: str, model_py: Path, **files: bytes) -> Path:
    folder = tmp / name
    folder.mkdir()
    shutil.copyfile(model_py, folder / "model.py")  # byte for byte
    for file_name, data in files.items():
        (folder / file_name).write_bytes(data)
    return folder


def _deploy(server: Server, folder: Path, name: str) -> tuple[str, dict[str, str]]:
    result = server.deploy(folder, "compat", name)
    assert result["status"] == 200 and result.get("state", "ready") == "ready", result
    api_url = result["api_url"]
    return api_url, {"authorization": f"Bearer {server.session_token(api_url)}"}


def _post(url: str, headers: dict[str, str], data: bytes | str, **extra: str) -> httpx.Response:
    r = httpx.post(url, headers={**headers, **extra}, content=data, timeout=60)
    assert r.status_code == 200, (r.status_code, r.text)
    return r


def test_predict_df_csv_in_csv_out(server: Server, tmp_path: Path) -> None:
    folder = _folder(
        tmp_path,
        "linear",
        MODELS / "linear_df.py",
        **{"train.csv": TRAIN.to_csv(index=False).encode()},
    )
    api_url, auth = _deploy(server, folder, "linear")
    df = pd.DataFrame({"Temperature": [15.0, 25.0]})

    # the sample-modeling tutorial's client, with only the URL changed
    data_csv = df["Temperature"].to_csv(index=False)
    r = _post(api_url, auth, data_csv, **{"content-type": "text/csv"})
    assert r.headers["content-type"].startswith("text/csv")
    pred_df = pd.read_csv(io.BytesIO(r.content))
    assert pred_df["predictions"].round(6).tolist() == [160.0, 260.0]

    # lz4 (the xgboost tutorial's recommended compression): the answer comes back lz4 too
    compressed = lz4.frame.compress(data_csv.encode())
    r = _post(api_url, auth, compressed, **{"content-type": "text/csv", "content-encoding": "lz4"})
    assert pd.read_csv(io.BytesIO(lz4.frame.decompress(r.content))).equals(pred_df)
    r = _post(
        api_url,
        auth,
        gzip.compress(data_csv.encode()),
        **{"content-type": "text/csv", "content-encoding": "gzip"},
    )
    assert pd.read_csv(io.BytesIO(r.content)).equals(pred_df)  # httpx decodes gzip itself

    # JSON records in -> JSON records out
    r = _post(api_url, auth, df.to_json(orient="records"), **{"content-type": "application/json"})
    assert r.headers["content-type"] == "application/json"
    assert [round(row["predictions"], 6) for row in r.json()] == [160.0, 260.0]


def test_predict_http_request_and_df(server: Server, tmp_path: Path) -> None:
    api_url, auth = _deploy(server, _folder(tmp_path, "reqdf", MODELS / "request_df.py"), "reqdf")
    df = pd.DataFrame({"age": [30, 40], "bmi": [20.5, 30.0], "charges": [1.0, 2.0]})
    r = _post(api_url, auth, df.to_csv(index=False), **{"content-type": "text/csv"})
    assert pd.read_csv(io.BytesIO(r.content))["Predictions"].tolist() == [50.5, 70.0]

    info = httpx.post(
        api_url + "info?limit=5",
        headers={**auth, "content-type": "text/csv"},
        content="a\n1\n",
        timeout=60,
    )
    assert info.status_code == 200, info.text
    path = api_url.split(str(server.port), 1)[1]
    assert info.json() == {
        "method": "POST",
        "path": path + "info",
        "query": {"limit": "5"},
        "content_type": "text/csv",
        "body": "a\n1\n",
        "df_rows": 1,
    }


def test_custom_openai_model_answers_requests_and_the_openai_sdk(
    server: Server, tmp_path: Path
) -> None:
    """The tutorial's OpenAI-compatible model.py, with its client code: `requests` to
    `api_url`, then `OpenAI(base_url=api_url)` (the SDK posts to `api_url + "chat/completions"`)."""
    model_py = REFERENCE / "generative-ai" / "model-serving" / "custom" / "models" / "model.py"
    if not model_py.is_file():
        pytest.skip(f"{model_py} is not there (../shared/reference/practicus/)")
    import requests
    from openai import OpenAI

    from practicuscore.gen_ai import ChatCompletionRequest, ChatCompletionResponse, ChatMessage

    api_url, auth = _deploy(server, _folder(tmp_path, "openai-proxy", model_py), "openai-proxy")
    token = auth["authorization"].removeprefix("Bearer ")

    request_json = ChatCompletionRequest(
        messages=[ChatMessage(role="user", content="Hello!")]
    ).model_dump_json(indent=2)
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    r = requests.post(api_url, headers=headers, data=request_json, timeout=60)
    assert r.ok, r.text
    resp_object = ChatCompletionResponse.model_validate(r.json())
    assert "user: Hello!" in (resp_object.choices[0].message.content or "")

    client = OpenAI(base_url=api_url, api_key=token)
    response = client.chat.completions.create(
        model="llama2", messages=[{"role": "user", "content": "Testing SDK compatibility."}]
    )
    assert "Testing SDK compatibility." in (response.choices[0].message.content or "")


def _needs(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the tutorial's model needs {', '.join(missing)}, which is not installed")


def _reference(*parts: str) -> Path:
    path = REFERENCE.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} is not there (../shared/reference/practicus/)")
    return path


def test_sample_modeling_tutorial_model(server: Server, tmp_path: Path) -> None:
    model_py = _reference("modeling", "sample-modeling", "model.py")
    _needs("xgboost")
    from xgboost import XGBRegressor

    model = XGBRegressor(n_estimators=20)
    model.fit(TRAIN[["Temperature"]], TRAIN["Revenue"])
    folder = _folder(tmp_path, "ice-cream", model_py)
    model.save_model(str(folder / "model.ubj"))
    api_url, auth = _deploy(server, folder, "ice-cream")
    r = _post(
        api_url, auth, TRAIN["Temperature"].to_csv(index=False), **{"content-type": "text/csv"}
    )
    pred_df = pd.read_csv(io.BytesIO(r.content))
    assert len(pred_df) == len(TRAIN) and list(pred_df.columns) == ["predictions"]


def test_xgboost_tutorial_model(server: Server, tmp_path: Path) -> None:
    model_py = _reference("extras", "modeling", "xgboost", "model.py")
    _needs("xgboost", "sklearn", "joblib")
    import joblib
    from sklearn.pipeline import Pipeline
    from xgboost import XGBRegressor

    data = pd.DataFrame({"age": [20, 30, 40, 50], "bmi": [20.0, 25.0, 30.0, 35.0]})
    charges = pd.Series([1000.0, 2000.0, 3000.0, 4000.0])
    pipeline = Pipeline([("xgb", XGBRegressor(n_estimators=20))]).fit(data, charges)
    folder = _folder(tmp_path, "insurance", model_py)
    joblib.dump(pipeline, folder / "model.pkl")
    api_url, auth = _deploy(server, folder, "insurance")
    csv = data.assign(charges=charges).to_csv(index=False)
    r = _post(
        api_url,
        auth,
        lz4.frame.compress(csv.encode()),
        **{"content-type": "text/csv", "content-encoding": "lz4"},
    )
    pred_df = pd.read_csv(io.BytesIO(lz4.frame.decompress(r.content)))
    assert list(pred_df.columns) == ["Predictions"] and len(pred_df) == len(data)
