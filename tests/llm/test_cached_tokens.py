"""``usage.prompt_tokens_details.cached_tokens``: prompt tokens the prefix cache saved, on the
real demo model, for chat and completions, plain and streamed; the text is the same as when
the prompt was computed in full."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from service_helpers import as_json, chat, chat_stream, sse, streamed_text

from modelhost.llm.engine import LLMEngine
from modelhost.llm.service import LLMService

pytestmark = pytest.mark.anyio

MODEL = "smollm2-test"
SYSTEM = (
    "You are a careful assistant for a small library. You answer in one short sentence, "
    "you never invent book titles, and you always name the shelf where a book is found. "
    "The shelves are: A for history, B for science, C for novels, D for poetry."
)


def body(question: str) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
        ],
        "temperature": 0,
        "max_tokens": 12,
    }


@pytest.fixture
def service(backend: Any) -> Iterator[LLMService]:
    engine = LLMEngine(backend, max_seqs=4, max_queue=4)
    yield LLMService(engine, MODEL)
    engine.close()


def cached(usage: dict[str, Any]) -> int:
    value: int = usage["prompt_tokens_details"]["cached_tokens"]
    return value


async def test_the_same_system_prompt_is_reported_cached_with_the_same_text(
    service: LLMService,
) -> None:
    first = await chat(service, body("Where are books about stars?"))
    assert cached(first["usage"]) == 0  # a fresh engine: nothing to reuse
    again = await chat(service, body("Where are books about stars?"))
    other = await chat(service, body("Where are poems?"))

    prompt = first["usage"]["prompt_tokens"]
    # the whole prompt but its last token (computed again for its logits) came from cache
    assert cached(again["usage"]) == prompt - 1
    assert again["choices"][0]["message"] == first["choices"][0]["message"]
    # another question behind the same system prompt shares at least the system prompt
    assert 60 < cached(other["usage"]) < other["usage"]["prompt_tokens"]


async def test_streamed_final_usage_chunk_reports_cached_tokens(service: LLMService) -> None:
    whole = await chat(service, body("Where are novels?"))
    options = {"stream_options": {"include_usage": True}}
    chunks = await chat_stream(service, {**body("Where are novels?"), **options})
    usage = chunks[-1]["usage"]
    assert usage["prompt_tokens"] == whole["usage"]["prompt_tokens"]
    assert cached(usage) == usage["prompt_tokens"] - 1
    assert streamed_text(chunks) == whole["choices"][0]["message"]["content"]


async def test_completions_report_cached_tokens(service: LLMService) -> None:
    prompt = SYSTEM + " Question: where are books about the Romans? Answer:"
    request = {"model": MODEL, "prompt": prompt, "max_tokens": 8, "temperature": 0}
    first = as_json(await service.handle("POST", "v1/completions", request))
    second = as_json(await service.handle("POST", "v1/completions", request))
    assert cached(first["usage"]) == 0
    assert cached(second["usage"]) == second["usage"]["prompt_tokens"] - 1
    assert second["choices"][0]["text"] == first["choices"][0]["text"]
    stream = {**request, "stream": True, "stream_options": {"include_usage": True}}
    chunks = await sse(await service.handle("POST", "v1/completions", stream))
    assert cached(chunks[-1]["usage"]) == second["usage"]["prompt_tokens"] - 1
    text = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
    assert text == first["choices"][0]["text"]
