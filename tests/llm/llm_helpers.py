"""Helpers shared by the LLM tests (imported as ``llm_helpers``)."""

from __future__ import annotations

from typing import Any

from modelhost.llm.backend import Backend
from modelhost.llm.engine import LLMEngine
from modelhost.llm.params import SamplingParams
from modelhost.llm.stream import TokenEvent, TokenStream

SYSTEM = "You are a helpful assistant."


def chat_tokens(backend: Backend, question: str, system: str | None = None) -> list[int]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    return backend.tokenize(backend.render_chat(messages))


async def run(engine: LLMEngine, prompt: list[int], **params: Any) -> list[TokenEvent]:
    stream = await engine.generate(prompt, SamplingParams(**params))
    return [event async for event in stream]


def text_of(events: list[TokenEvent]) -> str:
    return "".join(e.text for e in events)


async def first_event(stream: TokenStream) -> TokenEvent:
    return await stream.__anext__()
