"""Calling `LLMService.handle` in tests and reading its answers (imported as
``service_helpers``)."""

from __future__ import annotations

import json
from typing import Any

from modelhost.llm.results import JSONResult, LLMResult, StreamResult
from modelhost.llm.service import LLMService


def as_json(result: LLMResult) -> dict[str, Any]:
    assert isinstance(result, JSONResult), result
    assert result.status == 200, result.body
    return result.body


async def sse(result: LLMResult) -> list[dict[str, Any]]:
    """The JSON payloads of an SSE answer (``[DONE]`` checked and dropped)."""
    assert isinstance(result, StreamResult), result
    raw = b"".join([chunk async for chunk in result.chunks])
    events = raw.split(b"\n\n")[:-1]
    assert events[-1] == b"data: [DONE]"
    return [json.loads(e[6:]) for e in events[:-1]]


async def chat(service: LLMService, body: dict[str, Any]) -> dict[str, Any]:
    return as_json(await service.handle("POST", "v1/chat/completions", body))


async def chat_stream(service: LLMService, body: dict[str, Any]) -> list[dict[str, Any]]:
    return await sse(await service.handle("POST", "v1/chat/completions", {**body, "stream": True}))


async def chat_error(service: LLMService, body: dict[str, Any]) -> dict[str, Any]:
    result = await service.handle("POST", "v1/chat/completions", body)
    assert isinstance(result, JSONResult) and result.status == 400, result
    error: dict[str, Any] = result.body["error"]
    return error


def streamed_text(chunks: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in chunks
        if c.get("choices") and c["choices"][0]["index"] == index
    )
