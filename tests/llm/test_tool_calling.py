"""Tool calling on the real demo model: prompts with tools, forced calls, tool results.

SmolLM2-135M was not trained for tool calls: with ``tool_choice: "auto"`` it mostly answers
in prose; with ``required`` or a named function the grammar makes it write a valid call."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from service_helpers import chat, chat_error, chat_stream

from modelhost.llm.engine import LLMEngine
from modelhost.llm.service import LLMService

pytestmark = pytest.mark.anyio

WEATHER = {
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
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
def service(engine: LLMEngine) -> Iterator[LLMService]:
    yield LLMService(engine, "smol")


def request(**extra: Any) -> dict[str, Any]:
    return {"messages": ASK, "tools": [WEATHER, TIME], "temperature": 0, "max_tokens": 40,
            **extra}  # fmt: skip


async def test_required_call_is_parsed_into_tool_calls(service: LLMService) -> None:
    answer = await chat(service, request(tool_choice="required"))
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] in {"get_weather", "get_time"}
    assert isinstance(json.loads(call["function"]["arguments"]), dict)
    assert choice["message"]["content"] is None


async def test_named_function_streams_tool_call_deltas(service: LLMService) -> None:
    forced = {"type": "function", "function": {"name": "get_weather"}}
    whole = await chat(service, request(tool_choice=forced))
    (call,) = whole["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert "city" in json.loads(call["function"]["arguments"])
    chunks = await chat_stream(service, request(tool_choice=forced))
    deltas = [d for c in chunks if c["choices"]
              for d in c["choices"][0]["delta"].get("tool_calls", [])]  # fmt: skip
    assert deltas[0]["function"]["name"] == "get_weather" and deltas[0]["id"]
    arguments = "".join(d["function"].get("arguments", "") for d in deltas)
    assert arguments == call["function"]["arguments"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not any(c["choices"][0]["delta"].get("content") for c in chunks if c["choices"])


async def test_tool_result_turn_gets_an_answer(service: LLMService) -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 21}'},
    ]
    answer = await chat(service, {**request(), "messages": messages, "tool_choice": "none"})
    choice = answer["choices"][0]
    assert choice["message"]["content"] and "tool_calls" not in choice["message"]


async def test_auto_lets_the_model_answer_in_prose(service: LLMService) -> None:
    answer = await chat(service, request())
    message = answer["choices"][0]["message"]
    assert message["content"] or message.get("tool_calls")


async def test_bad_tool_requests_are_400(service: LLMService) -> None:
    unknown = {"type": "function", "function": {"name": "nope"}}
    error = await chat_error(service, request(tool_choice=unknown))
    assert error["param"] == "tool_choice"
    minimum = {**WEATHER, "function": {**WEATHER["function"], "parameters": {
        "type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}}  # fmt: skip
    error = await chat_error(service, request(tools=[minimum], tool_choice="required"))
    assert error["param"] == "tools" and "minimum" in error["message"]
