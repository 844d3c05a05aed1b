"""`LLMService.handle`: OpenAI and Practicus shapes on the real demo model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from modelhost.gen_ai import PrtLangResponse
from modelhost.llm.engine import LLMEngine
from modelhost.llm.results import JSONResult, LLMResult, StreamResult
from modelhost.llm.service import LLMService

pytestmark = pytest.mark.anyio

MODEL = "smollm2-test"
CHAT = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "temperature": 0,
    "max_tokens": 12,
}


@pytest.fixture
def service(engine: LLMEngine) -> Iterator[LLMService]:
    yield LLMService(engine, MODEL)


def as_json(result: LLMResult) -> JSONResult:
    assert isinstance(result, JSONResult), result
    return result


async def read_stream(result: LLMResult) -> tuple[StreamResult, bytes]:
    assert isinstance(result, StreamResult), result
    return result, b"".join([chunk async for chunk in result.chunks])


def sse_payloads(raw: bytes) -> list[Any]:
    """Split an SSE body, checking the framing: every event is ``data: ...\\n\\n``."""
    assert raw.endswith(b"\n\n")
    events = raw.split(b"\n\n")[:-1]
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in events)
    assert events[-1] == b"data: [DONE]"
    return [json.loads(e[6:]) for e in events[:-1]]


async def test_chat_completion(service: LLMService) -> None:
    result = as_json(await service.handle("POST", "v1/chat/completions", CHAT))
    body = result.body
    assert result.status == 200
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert "Paris" in choice["message"]["content"]
    assert choice["finish_reason"] in {"stop", "length"}
    usage = body["usage"]
    assert usage["prompt_tokens"] > 10 and 0 < usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_chat_stream_with_usage(service: LLMService) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    result, raw = await read_stream(await service.handle("POST", "v1/chat/completions", body))
    assert result.content_type == "text/event-stream"
    chunks = sse_payloads(raw)
    *content, final = chunks
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert content[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["usage"] is None for c in content)
    reasons = [c["choices"][0]["finish_reason"] for c in content]
    assert reasons[-1] in {"stop", "length"} and set(reasons[:-1]) == {None}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in content)
    assert "Paris" in text
    assert final["choices"] == []
    assert final["usage"]["completion_tokens"] <= 12
    assert final["usage"]["total_tokens"] == (
        final["usage"]["prompt_tokens"] + final["usage"]["completion_tokens"]
    )
    non_streamed = as_json(await service.handle("POST", "v1/chat/completions", CHAT))
    assert non_streamed.body["choices"][0]["message"]["content"] == text


async def test_chat_stream_without_usage_has_no_usage_field(service: LLMService) -> None:
    body = {**CHAT, "stream": True, "max_tokens": 3, "ignore_eos": True}
    _, raw = await read_stream(await service.handle("POST", "v1/chat/completions", body))
    chunks = sse_payloads(raw)
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_completions(service: LLMService) -> None:
    body = {"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0}
    result = as_json(await service.handle("POST", "v1/completions", body))
    assert result.body["object"] == "text_completion"
    assert result.body["usage"]["completion_tokens"] <= 5
    _, raw = await read_stream(
        await service.handle("POST", "v1/completions", {**body, "stream": True})
    )
    chunks = sse_payloads(raw)
    assert "".join(c["choices"][0]["text"] for c in chunks) == result.body["choices"][0]["text"]


async def test_models(service: LLMService) -> None:
    body = as_json(await service.handle("GET", "v1/models", None)).body
    assert body["object"] == "list" and body["data"][0]["id"] == MODEL


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [
        ("POST", "v1/chat/completions", {**CHAT, "temperature": -1}, 400, "temperature"),
        ("POST", "v1/chat/completions", {**CHAT, "messages": []}, 400, "messages"),
        ("POST", "v1/chat/completions", {**CHAT, "n": 17}, 400, "n"),
        ("POST", "v1/chat/completions", None, 400, None),
        ("POST", "v1/completions", {"prompt": ""}, 400, "prompt"),
        ("GET", "v1/chat/completions", None, 405, None),
        ("GET", "chat/completions", None, 405, None),
        ("POST", "v1/embeddings", {}, 404, None),
        ("POST", "chat/completions", {**CHAT, "logit_bias": {"1": 500}}, 400, "logit_bias"),
        ("POST", "v1/completions", {"prompt": "a", "echo": True}, 400, "echo"),
        ("POST", "completions", {"prompt": "a", "best_of": 2}, 400, "best_of"),
        ("POST", "v1/completions", {"prompt": "a", "suffix": "z"}, 400, "suffix"),
    ],
)
async def test_openai_errors(
    service: LLMService, method: str, path: str, body: Any, status: int, param: str | None
) -> None:
    result = as_json(await service.handle(method, path, body))
    assert result.status == status
    error = result.body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["message"]


async def test_openai_routes_answer_under_the_model_url_and_under_v1(
    service: LLMService,
) -> None:
    for prefix in ("", "v1/", "/v1/"):
        chat = as_json(await service.handle("POST", f"{prefix}chat/completions", CHAT))
        assert chat.status == 200 and "Paris" in chat.body["choices"][0]["message"]["content"]
        body = {"prompt": "The capital of France is", "max_tokens": 3, "temperature": 0}
        done = as_json(await service.handle("POST", f"{prefix}completions", body))
        assert done.status == 200 and done.body["object"] == "text_completion"
        models = as_json(await service.handle("GET", f"{prefix}models", None))
        assert models.body["data"][0]["id"] == MODEL


async def test_405_names_the_allowed_method(service: LLMService) -> None:
    result = as_json(await service.handle("GET", "chat/completions", None))
    assert result.status == 405 and result.headers["allow"] == "POST"


async def test_practicuscore_chat_request_dump_is_accepted(service: LLMService) -> None:
    """``ChatCompletionRequest(...).model_dump_json()`` sends null for every unset option."""
    from practicuscore.gen_ai import ChatCompletionRequest, ChatMessage

    request = ChatCompletionRequest(
        messages=[ChatMessage(role="user", content="What is the capital of France?")],
        max_tokens=12,
    )
    body = json.loads(request.model_dump_json())
    assert body["temperature"] is None
    for path in ("chat/completions", "v1/chat/completions"):
        result = as_json(await service.handle("POST", path, body))
        assert result.status == 200, result.body
        assert result.body["usage"]["completion_tokens"] <= 12
    root = as_json(await service.handle("POST", "", body))  # the Practicus protocol
    assert root.status == 200, root.body
    assert PrtLangResponse.model_validate(root.body).output_tokens <= 12


async def test_queue_full_is_a_429_with_retry_after(backend: Any) -> None:
    engine = LLMEngine(backend, max_seqs=1, max_queue=0)
    try:
        service = LLMService(engine, MODEL)
        long = {**CHAT, "stream": True, "max_tokens": 500, "ignore_eos": True}
        busy = await service.handle("POST", "v1/chat/completions", long)
        assert isinstance(busy, StreamResult)
        result = as_json(await service.handle("POST", "v1/chat/completions", CHAT))
        assert result.status == 429 and result.headers["retry-after"] == "1"
        assert result.body["error"]["type"] == "rate_limit_error"
        await busy.chunks.aclose()  # type: ignore[attr-defined]
        assert engine.stats.in_flight == 0
    finally:
        engine.close()


async def test_practicus_user_prompt(service: LLMService) -> None:
    body = {
        "user_prompt": "What is the capital of France?",
        "system_context": "You are a helpful assistant.",
        "temperature": 0,
        "max_tokens": 24,
    }
    result = as_json(await service.handle("POST", "", body))
    assert set(result.body) == {"answer"} and "Paris" in result.body["answer"]


async def test_prt_lang_request(service: LLMService) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "human", "content": "What is the capital of France?"},
        ],
        "lang_model": "smollm2",
        "temperature": 0,
        "max_tokens": 12,
    }
    result = as_json(await service.handle("POST", "", body))
    response = PrtLangResponse.model_validate(result.body)
    assert "Paris" in response.content and response.lang_model == "smollm2"
    assert response.input_tokens > 10 and 0 < response.output_tokens <= 12
    assert response.total_tokens == response.input_tokens + response.output_tokens
    streamed, raw = await read_stream(await service.handle("POST", "", {**body, "streaming": True}))
    assert streamed.content_type.startswith("text/plain")
    assert raw.decode() == response.content


async def test_practicus_bad_bodies(service: LLMService) -> None:
    for body in (None, {}, {"user_prompt": ""}, {"messages": "hi"}):
        result = as_json(await service.handle("POST", "", body))
        assert result.status == 400 and result.body["error"]["type"] == "bad_request"


async def test_closing_a_stream_early_cancels_generation(
    service: LLMService, engine: LLMEngine
) -> None:
    body = {**CHAT, "stream": True, "max_tokens": 1000, "ignore_eos": True}
    result = await service.handle("POST", "v1/chat/completions", body)
    assert isinstance(result, StreamResult)
    chunks = result.chunks
    await chunks.__anext__()
    await chunks.__anext__()
    await chunks.aclose()  # type: ignore[attr-defined]
    assert engine.stats.in_flight == 0
