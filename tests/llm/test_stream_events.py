"""The SSE events of text-only pieces (`openai_stream.TextEvents`): bytes rendered once
around a marker must equal the chunk dict serialised for each token."""

from __future__ import annotations

import pytest

from modelhost.llm.protocols import openai
from modelhost.llm.protocols.openai import ResponseHeader
from modelhost.llm.protocols.openai_stream import ChatChunks, CompletionChunks

TEXTS = [
    "Hello",
    "",
    ' "quoted" ',
    "line\nbreak\t",
    "na\u00efve \u2013 \u6f22\u5b57 \U0001f642",
    "\\u0000",
    "\x00",
]


@pytest.mark.parametrize("with_usage", [False, True])
@pytest.mark.parametrize("index", [0, 3])
def test_chat_text_events_are_the_chunks_serialised(with_usage: bool, index: int) -> None:
    head = ResponseHeader("chatcmpl-abc", 'model "x"', 1700000000)
    shape = ChatChunks(head, with_usage)
    for text in TEXTS:
        chunk = openai.chat_chunk(head, {"content": text}, None, with_usage, index, None)
        assert shape.text(index, text) == openai.sse(chunk)


@pytest.mark.parametrize("with_usage", [False, True])
def test_completion_text_events_are_the_chunks_serialised(with_usage: bool) -> None:
    head = ResponseHeader("cmpl-abc", "m", 1700000000)
    shape = CompletionChunks(head, with_usage)
    for index in (0, 1):
        for text in TEXTS:
            chunk = openai.completion_chunk(head, text, None, with_usage, index)
            assert shape.text(index, text) == openai.sse(chunk)
