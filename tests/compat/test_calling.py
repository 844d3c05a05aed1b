"""`predict` calling conventions, read from the signature once (worker/calling.py)."""

from __future__ import annotations

import io
import types
from typing import Any

import pytest

from modelhost.errors import BadRequest, NotFound
from modelhost.worker.calling import CallPlan, HttpRequest
from modelhost.worker.loader import LoadedModel
from modelhost.worker.meta import ModelMeta
from modelhost.worker.runner import PythonModelRunner, Reply, WorkRequest

pd = pytest.importorskip(
    "pandas", reason="pandas is the 'classic' extra: pip install -e '.[classic]'"
)
pytestmark = pytest.mark.anyio

META = ModelMeta(1, "m", "models/team", 1, "depl", "/tmp/cache", "/tmp/model", "pod", {})
CSV = b"Temperature,Revenue\n10,100\n20,200\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def runner(predict: Any) -> PythonModelRunner:
    return PythonModelRunner(LoadedModel(types.ModuleType("m"), predict, None, None), META)


def request(
    body: bytes, content_type: str = "application/json", subpath: str = "", query: str = ""
) -> WorkRequest:
    return WorkRequest("POST", subpath, query, content_type, body)


async def reply(model: PythonModelRunner, req: WorkRequest) -> Reply:
    out = await model.handle(req)
    assert isinstance(out, Reply)
    return out


def test_plans_of_the_practicus_conventions() -> None:
    async def seed(payload_dict: dict, **kwargs: Any) -> None: ...
    async def sample(df, *args, **kwargs): ...  # type: ignore[no-untyped-def]
    async def xgb(http_request, df=None, *args, **kwargs): ...  # type: ignore[no-untyped-def]
    def bare(payload): ...  # type: ignore[no-untyped-def]
    def meta_too(data, model_meta=None, sub_path=""): ...  # type: ignore[no-untyped-def]

    assert CallPlan.of(seed) == CallPlan("payload_dict", ("sub_path",))
    assert CallPlan.of(sample) == CallPlan("df", ("sub_path",))
    assert CallPlan.of(xgb) == CallPlan("http_request", ("df", "sub_path"))
    assert CallPlan.of(bare) == CallPlan("payload_dict", ())
    assert CallPlan.of(meta_too) == CallPlan("payload_dict", ("model_meta", "sub_path"))
    assert not CallPlan.of(bare).sees_sub_path and CallPlan.of(xgb).sees_sub_path


async def test_df_first_gets_a_dataframe_from_csv_and_answers_csv() -> None:
    seen: list[Any] = []

    async def predict(df, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((df, kwargs))
        return pd.DataFrame({"predictions": df["Temperature"] * 2})

    out = await reply(runner(predict), request(CSV, "text/csv"))
    assert out.content_type.startswith("text/csv")
    assert pd.read_csv(io.BytesIO(out.body))["predictions"].tolist() == [20, 40]
    df, kwargs = seen[0]
    assert isinstance(df, pd.DataFrame) and kwargs == {"sub_path": ""}


@pytest.mark.parametrize(
    "body",
    [
        b'[{"Temperature": 10}, {"Temperature": 20}]',
        b'{"Temperature": [10, 20]}',
    ],
)
async def test_df_from_json_records_or_columns_answers_json_records(body: bytes) -> None:
    def predict(df):  # type: ignore[no-untyped-def]
        return pd.DataFrame({"predictions": df["Temperature"] * 2})

    out = await reply(runner(predict), request(body))
    assert out.content_type == "application/json"
    assert out.body == b'[{"predictions":20},{"predictions":40}]'


async def test_one_json_row_and_bad_shapes() -> None:
    def predict(df):  # type: ignore[no-untyped-def]
        return {"rows": len(df)}

    model = runner(predict)
    assert (await reply(model, request(b'{"a": 1, "b": "x"}'))).body == b'{"rows":1}'
    for bad in (b"[1, 2]", b'{"a": [1, 2], "b": [1]}', b'"text"'):
        with pytest.raises(BadRequest) as info:
            await model.handle(request(bad))
        assert info.value.extra["param"] == "df"


async def test_http_request_and_df_keyword() -> None:
    seen: dict[str, Any] = {}

    async def predict(http_request, df=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(req=http_request, df=df, body=await http_request.body(), kwargs=kwargs)
        return df

    req = request(CSV, "text/csv", subpath="score/batch", query="limit=5&x=a%20b")
    out = await reply(runner(predict), req)
    assert pd.read_csv(io.BytesIO(out.body)).equals(pd.read_csv(io.BytesIO(CSV)))
    http = seen["req"]
    assert isinstance(http, HttpRequest) and http.method == "POST"
    assert http.url.path == "/models/team/m/score/batch" and http.url.query == "limit=5&x=a%20b"
    assert http.query_params["x"] == "a b" and http.headers["content-type"] == "text/csv"
    assert seen["body"] == CSV and seen["kwargs"] == {"sub_path": "score/batch"}
    assert isinstance(seen["df"], pd.DataFrame)


async def test_http_request_alone_never_parses_the_body() -> None:
    async def predict(http_request):  # type: ignore[no-untyped-def]
        return {"n": len(await http_request.body()), "sub": http_request.sub_path}

    out = await reply(runner(predict), request(b"\x00\x01 not json", "application/x-binary"))
    assert out.body == b'{"n":11,"sub":""}'


async def test_no_content_type_and_not_json_gives_df_none_to_a_df_keyword() -> None:
    async def predict(http_request, df=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        body = await http_request.body()
        return {"df": None if df is None else len(df), "body": body.decode()}

    model = runner(predict)
    out = await reply(model, request(CSV, ""))
    assert out.body == b'{"df":null,"body":"Temperature,Revenue\\n10,100\\n20,200\\n"}'
    out = await reply(model, request(b'[{"a": 1}, {"a": 2}]', ""))
    assert out.body.startswith(b'{"df":2,')
    with pytest.raises(BadRequest):  # a declared JSON body that is not JSON is still a 400
        await model.handle(request(CSV, "application/json"))


async def test_empty_body_gives_df_none() -> None:
    def predict(http_request, df=None):  # type: ignore[no-untyped-def]
        return {"df": df is None}

    assert (await reply(runner(predict), request(b""))).body == b'{"df":true}'


async def test_sub_paths_reach_models_that_can_see_them() -> None:
    def with_kwargs(payload_dict, **kwargs):  # type: ignore[no-untyped-def]
        return {"sub_path": kwargs["sub_path"], "payload": payload_dict}

    def blind(payload_dict):  # type: ignore[no-untyped-def]
        return payload_dict

    out = await reply(runner(with_kwargs), request(b'{"a": 1}', subpath="chat/completions"))
    assert out.body == b'{"sub_path":"chat/completions","payload":{"a":1}}'
    with pytest.raises(NotFound, match="sub_path"):
        await runner(blind).handle(request(b"{}", subpath="chat/completions"))
    assert (await reply(runner(blind), request(b'{"a": 1}'))).body == b'{"a":1}'


async def test_model_meta_keyword_and_classic_payload() -> None:
    def predict(payload_dict, model_meta=None):  # type: ignore[no-untyped-def]
        return {"model": model_meta.name, "payload": payload_dict}

    out = await reply(runner(predict), request(b'{"x": 1}'))
    assert out.body == b'{"model":"m","payload":{"x":1}}'


async def test_csv_without_pandas_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from modelhost.errors import UnsupportedMediaType
    from modelhost.gateway.http_errors import status_of

    def predict(df):  # type: ignore[no-untyped-def]
        return df

    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    with pytest.raises(UnsupportedMediaType) as csv_info:
        await runner(predict).handle(request(CSV, "text/csv"))
    assert "modelhost[classic]" in csv_info.value.message and status_of(csv_info.value) == 415
    with pytest.raises(BadRequest) as json_info:
        await runner(predict).handle(request(b'[{"a": 1}]'))
    assert "modelhost[classic]" in json_info.value.message and status_of(json_info.value) == 400


@pytest.mark.parametrize(("status", "code"), [(404, 404), (422, 400), (429, 429), (503, 500)])
async def test_http_exception_keeps_its_4xx_status(status: int, code: int) -> None:
    from starlette.exceptions import HTTPException

    from modelhost.errors import ModelhostError
    from modelhost.gateway.http_errors import status_of

    async def predict(payload_dict, **kwargs):  # type: ignore[no-untyped-def]
        raise HTTPException(status, detail="no such customer")

    with pytest.raises(ModelhostError) as info:
        await runner(predict).handle(request(b"{}"))
    assert status_of(info.value) == code and "no such customer" in info.value.message
