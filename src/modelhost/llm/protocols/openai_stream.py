"""OpenAI streaming: a token stream as server-sent events.

Chat: an opening chunk with the role, one chunk per non-empty text delta, the last one
carrying ``finish_reason``; with ``stream_options.include_usage`` every chunk has
``"usage": null`` and a final chunk with no choices carries the usage; then ``[DONE]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from modelhost.errors import ModelhostError
from modelhost.llm.protocols import openai
from modelhost.llm.protocols.openai import ResponseHeader
from modelhost.llm.stream import TokenEvent, TokenStream


class ChunkShape(Protocol):
    object: str

    def opening(self) -> dict[str, Any] | None: ...

    def content(self, text: str, finish_reason: str | None) -> dict[str, Any]: ...


class ChatChunks:
    object = "chat.completion.chunk"

    def __init__(self, head: ResponseHeader, with_usage: bool) -> None:
        self._head, self._with_usage = head, with_usage

    def opening(self) -> dict[str, Any] | None:
        role = {"role": "assistant", "content": ""}
        return openai.chat_chunk(self._head, role, None, self._with_usage)

    def content(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        delta = {"content": text} if text else {}
        return openai.chat_chunk(self._head, delta, finish_reason, self._with_usage)


class CompletionChunks:
    object = "text_completion"

    def __init__(self, head: ResponseHeader, with_usage: bool) -> None:
        self._head, self._with_usage = head, with_usage

    def opening(self) -> dict[str, Any] | None:
        return None

    def content(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        return openai.completion_chunk(self._head, text, finish_reason, self._with_usage)


async def sse_events(
    stream: TokenStream, shape: ChunkShape, head: ResponseHeader, include_usage: bool
) -> AsyncIterator[bytes]:
    """The whole SSE body; closing this iterator cancels the generation."""
    try:
        opening = shape.opening()
        if opening is not None:
            yield openai.sse(opening)
        last: TokenEvent | None = None
        async for event in stream:
            if event.text or event.finish_reason is not None:
                yield openai.sse(shape.content(event.text, event.finish_reason))
            last = event
        if include_usage and last is not None:
            use = openai.usage_chunk(head, shape.object, last.prompt_tokens, last.completion_tokens)
            yield openai.sse(use)
    except ModelhostError as exc:
        yield openai.sse(openai.error_object(exc))
    finally:
        await stream.aclose()
    yield openai.SSE_DONE
