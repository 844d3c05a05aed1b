"""OpenAI streaming: token streams as server-sent events.

Chat: an opening chunk with the role per choice, one chunk per non-empty delta
(``content``, ``reasoning_content``, with that step's ``logprobs``), tool calls as
``tool_calls[i]`` deltas as OpenAI sends them (``id``, ``type`` and ``function.name``
first, then ``function.arguments`` pieces as they are generated), the last chunk of a choice
carrying ``finish_reason``; with ``n > 1`` the choices' chunks interleave, told apart by
``index``. With ``stream_options.include_usage`` every chunk has ``"usage": null`` and a
final chunk with no choices carries the usage (prompt once, completions summed); then
``[DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import orjson

from modelhost.llm.protocols import openai
from modelhost.llm.protocols.openai import ResponseHeader
from modelhost.llm.protocols.openai_choices import (
    ChoiceState,
    Piece,
    chat_delta,
    chat_logprobs,
    completion_logprobs,
)
from modelhost.llm.stream import TokenEvent, TokenStream

# Stands for a chunk's text while its event is rendered once (`TextEvents`).
_MARK = "\x00text\x00"
_MARK_JSON = b'"\\u0000text\\u0000"'


class TextEvents:
    """One choice's event for a piece that is only text, as bytes: the event rendered once
    around a marker, then the JSON string of each text put between its two halves. The
    same bytes as `openai.sse` of the chunk dict, without building and serialising the
    dict for every token."""

    __slots__ = ("_parts", "_render")

    def __init__(self, render: Callable[[int, str], dict[str, Any]]) -> None:
        self._render = render
        self._parts: dict[int, tuple[bytes, bytes]] = {}

    def __call__(self, index: int, text: str) -> bytes:
        parts = self._parts.get(index)
        if parts is None:
            before, _, after = openai.sse(self._render(index, _MARK)).partition(_MARK_JSON)
            parts = self._parts[index] = (before, after)
        return parts[0] + orjson.dumps(text) + parts[1]


class ChunkShape(Protocol):
    object: str
    # the event of a piece that is only text (no finish, no logprobs), as `chunks` renders it
    text: TextEvents

    def opening(self, index: int) -> dict[str, Any] | None: ...

    def chunks(self, index: int, piece: Piece) -> list[dict[str, Any]]: ...


class ChatChunks:
    object = "chat.completion.chunk"

    def __init__(self, head: ResponseHeader, with_usage: bool, logprobs: bool = False) -> None:
        self._head, self._with_usage, self._logprobs = head, with_usage, logprobs
        self.text = TextEvents(
            lambda index, text: self._chunk(index, {"content": text}, None, None)
        )

    def opening(self, index: int) -> dict[str, Any] | None:
        role = {"role": "assistant", "content": ""}
        return self._chunk(index, role, None, None)

    def chunks(self, index: int, piece: Piece) -> list[dict[str, Any]]:
        logprobs = chat_logprobs(piece.logprobs) if self._logprobs else None
        return [self._chunk(index, chat_delta(piece.delta), piece.finish_reason, logprobs)]

    def _chunk(
        self, index: int, delta: dict[str, Any], finish: str | None, logprobs: Any
    ) -> dict[str, Any]:
        return openai.chat_chunk(self._head, delta, finish, self._with_usage, index, logprobs)


class CompletionChunks:
    object = "text_completion"

    def __init__(self, head: ResponseHeader, with_usage: bool, logprobs: int | None = None) -> None:
        self._head, self._with_usage, self._logprobs = head, with_usage, logprobs
        self._offsets: dict[int, int] = {}
        self.text = TextEvents(
            lambda index, text: openai.completion_chunk(head, text, None, with_usage, index)
        )

    def opening(self, index: int) -> dict[str, Any] | None:
        return None

    def chunks(self, index: int, piece: Piece) -> list[dict[str, Any]]:
        text = piece.delta.content
        logprobs = None
        if self._logprobs is not None:
            offset = self._offsets.get(index, 0)
            logprobs = completion_logprobs(piece.logprobs, offset, self._logprobs > 0)
            self._offsets[index] = offset + sum(len(t) for t in logprobs["tokens"])
        return [
            openai.completion_chunk(
                self._head, text, piece.finish_reason, self._with_usage, index, logprobs
            )
        ]


async def sse_events(
    streams: list[TokenStream],
    states: list[ChoiceState],
    shape: ChunkShape,
    head: ResponseHeader,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The whole SSE body; closing this iterator cancels the generation."""
    try:
        for state in states:
            opening = shape.opening(state.index)
            if opening is not None:
                yield openai.sse(opening)
        prompt_tokens = cached = 0
        text_event = shape.text
        events = _events(streams) if len(streams) > 1 else _tagged(streams[0])
        async for index, event in events:
            prompt_tokens = event.prompt_tokens
            if index == 0:  # the prompt is computed once: the first choice's cache use
                cached = event.cached_tokens
            state = states[index]
            text = state.text_only(event)
            if text is not None:  # most tokens: a piece that is only text
                if text:
                    yield text_event(index, text)
                continue
            piece = state.feed(event)
            if piece:
                for chunk in shape.chunks(index, piece):
                    yield openai.sse(chunk)
        if include_usage:
            completion = sum(s.completion_tokens for s in states)
            use = openai.usage_chunk(head, shape.object, prompt_tokens, completion, cached)
            yield openai.sse(use)
    # A failure once streaming raises out (no [DONE]): the gateway sends `event: error` with
    # OpenAI's error object and aborts the response, as when the worker dies mid-stream.
    finally:
        for stream in streams:
            await stream.aclose()
    yield openai.SSE_DONE


async def _tagged(stream: TokenStream) -> AsyncIterator[tuple[int, TokenEvent]]:
    async for event in stream:
        yield 0, event


async def _events(streams: list[TokenStream]) -> AsyncIterator[tuple[int, TokenEvent]]:
    """Every stream's events, as they come, tagged with the stream's index."""
    queue: asyncio.Queue[tuple[int, TokenEvent | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: TokenStream) -> None:
        try:
            async for event in stream:
                queue.put_nowait((index, event))
        except Exception as exc:
            queue.put_nowait((index, exc))
        queue.put_nowait((index, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
