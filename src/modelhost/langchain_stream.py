"""An OpenAI chat-completion event stream read as LangChain message chunks, for
`ChatModelhost` with tools or a structured output bound.

Each SSE chunk becomes an ``AIMessageChunk``: its content, ``reasoning_content`` and its
``tool_calls`` deltas as ``tool_call_chunks`` (name and id on a call's first, then the
arguments pieces), which LangChain joins by ``index`` when chunks are added; the final usage
chunk carries ``usage_metadata``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
from langchain_core.messages import AIMessageChunk
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import ToolCallChunk
from langchain_core.outputs import ChatGenerationChunk

from modelhost.client.errors import ApiError


def usage_metadata(use: dict[str, Any]) -> UsageMetadata:
    return {
        "input_tokens": int(use.get("prompt_tokens", 0)),
        "output_tokens": int(use.get("completion_tokens", 0)),
        "total_tokens": int(use.get("total_tokens", 0)),
    }


def sse_chunks(lines: Iterator[str]) -> Iterator[ChatGenerationChunk]:
    for line in lines:
        chunk = _line_chunk(line)
        if chunk is not None:
            yield chunk


async def asse_chunks(lines: AsyncIterator[str]) -> AsyncIterator[ChatGenerationChunk]:
    async for line in lines:
        chunk = _line_chunk(line)
        if chunk is not None:
            yield chunk


def _line_chunk(line: str) -> ChatGenerationChunk | None:
    if not line.startswith("data:"):
        return None  # blank separators, and the `event: error` line before its data
    body = line[5:].strip()
    if body == "[DONE]":
        return None
    data = orjson.loads(body)
    error = data.get("error")
    if isinstance(error, dict):  # the stream failed after it started
        raise ApiError(500, str(error.get("code") or "error"), str(error.get("message")))
    return _chunk(data)


def _chunk(data: dict[str, Any]) -> ChatGenerationChunk | None:
    choices = data.get("choices") or []
    if not choices:
        use = data.get("usage")
        if not use:
            return None
        message = AIMessageChunk(content="", usage_metadata=usage_metadata(use))
        return ChatGenerationChunk(message=message)
    choice = choices[0]
    delta = choice.get("delta") or {}
    extra = (
        {"reasoning_content": delta["reasoning_content"]} if "reasoning_content" in delta else {}
    )
    message = AIMessageChunk(
        content=delta.get("content") or "",
        tool_call_chunks=[_tool_call_chunk(c) for c in delta.get("tool_calls") or []],
        additional_kwargs=extra,
    )
    finish = choice.get("finish_reason")
    info = {"finish_reason": finish} if finish else None
    return ChatGenerationChunk(message=message, generation_info=info)


def _tool_call_chunk(call: dict[str, Any]) -> ToolCallChunk:
    function = call.get("function") or {}
    return {
        "name": function.get("name"),
        "args": function.get("arguments"),
        "id": call.get("id"),
        "index": call.get("index"),
        "type": "tool_call_chunk",
    }
