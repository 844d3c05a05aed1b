"""Practicus' ``serve(**kwargs)`` hook (worker/loader.py) and Starlette responses returned
by model code (worker/responses.py), without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelhost.errors import InvalidModelFolder
from modelhost.wire.model_folder import check_folder
from modelhost.worker.loader import load_model
from modelhost.worker.meta import ModelMeta
from modelhost.worker.runner import PythonModelRunner, Reply, StreamReply, WorkRequest

pytestmark = pytest.mark.anyio
META = ModelMeta(1, "m", "models/team", 1, "depl", "/tmp/cache", "/tmp/model", "pod", {})

SERVE_ONLY = """
from starlette.responses import Response, StreamingResponse

seen = []

async def serve(**kwargs):
    seen.append(kwargs)
    request = kwargs["http_request"]
    if kwargs["sub_path"] == "stream":
        async def chunks():
            yield "data: one\\n\\n"
            yield b"data: two\\n\\n"
        return StreamingResponse(chunks(), media_type="text/event-stream")
    body = await request.body()
    return Response(body[::-1], status_code=201, headers={"x-upstream": "yes"},
                    media_type="text/plain")
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _model(tmp_path: Path, source: str) -> Path:
    (tmp_path / "model.py").write_text(source)
    return tmp_path


async def test_serve_only_model_answers_every_path_with_its_response(tmp_path: Path) -> None:
    folder = _model(tmp_path, SERVE_ONLY)
    assert check_folder(folder).hooks == ["serve"]
    loaded = load_model(folder, "serve_only_model")
    assert loaded.hooks == ["predict", "serve"]
    runner = PythonModelRunner(loaded, META)

    plain = await runner.handle(WorkRequest("POST", "v1/x", "a=1", "text/plain", b"abc"))
    assert isinstance(plain, Reply)
    assert (plain.status, plain.body, plain.content_type) == (
        201,
        b"cba",
        "text/plain; charset=utf-8",
    )
    assert plain.headers == {"x-upstream": "yes"}
    kwargs = loaded.module.seen[0]
    assert kwargs["sub_path"] == "v1/x" and kwargs["model_meta"] is META
    assert str(kwargs["http_request"].url) == "/models/team/m/v1/x?a=1"

    streamed = await runner.handle(WorkRequest("GET", "stream", "", "", b""))
    assert isinstance(streamed, StreamReply)
    assert streamed.content_type.startswith("text/event-stream")
    assert [c async for c in streamed.chunks] == [b"data: one\n\n", b"data: two\n\n"]


def test_a_serve_hook_must_take_keywords(tmp_path: Path) -> None:
    folder = _model(tmp_path, "async def serve(request):\n    return {}\n")
    with pytest.raises(InvalidModelFolder, match=r"serve\(\*\*kwargs\)"):
        load_model(folder, "serve_positional_model")


def test_predict_wins_over_serve(tmp_path: Path) -> None:
    source = "def predict(payload_dict, **kwargs):\n    return 1\n\nasync def serve(**kw): ...\n"
    loaded = load_model(_model(tmp_path, source), "both_hooks_model")
    assert loaded.predict is loaded.module.predict and loaded.serve is loaded.module.serve


def test_no_predict_and_no_serve_is_refused_at_deploy(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFolder, match="no `predict` hook"):
        check_folder(_model(tmp_path, "async def init(**kwargs): ...\n"))
