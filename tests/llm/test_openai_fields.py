"""OpenAI request fields: null means default; fields we would ignore are refused by name."""

from __future__ import annotations

from typing import Any

import pytest

from modelhost.errors import BadRequest
from modelhost.gen_ai import ChatCompletionRequest, ChatMessage
from modelhost.http_status import status_of
from modelhost.llm.protocols.openai import parse_chat, parse_completion

MESSAGES = [{"role": "user", "content": "hi"}]


def test_practicuscore_chat_request_with_its_nulls_is_accepted() -> None:
    body = ChatCompletionRequest(messages=[ChatMessage(role="user", content="hi")]).model_dump()
    assert body["temperature"] is None and body["n"] == 1  # what the SDK really sends
    req = parse_chat(body)
    assert req.params.temperature == 1.0 and req.params.max_tokens is None
    assert not req.stream and req.messages == MESSAGES


def test_null_means_default_for_every_optional_field() -> None:
    nulls = dict.fromkeys(
        [
            "model", "temperature", "top_p", "max_tokens", "max_completion_tokens", "n",
            "stream", "stream_options", "stop", "seed", "presence_penalty",
            "frequency_penalty", "user", "top_k", "min_p", "repetition_penalty", "ignore_eos",
            "logit_bias", "logprobs", "top_logprobs", "tools", "tool_choice",
            "response_format", "audio", "reasoning_effort", "something_new",
        ]
    )  # fmt: skip
    chat = parse_chat({"messages": MESSAGES, **nulls})
    assert chat.params == parse_chat({"messages": MESSAGES}).params
    completion = parse_completion({"prompt": "a", **nulls, "echo": None, "best_of": None})
    assert completion.params.max_tokens == 16  # the legacy endpoint's default


def test_vendor_extensions_are_used() -> None:
    extras = {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2, "ignore_eos": True}
    params = parse_chat({"messages": MESSAGES, **extras}).params
    assert (params.top_k, params.min_p, params.repetition_penalty, params.ignore_eos) == (
        5, 0.1, 1.2, True,
    )  # fmt: skip


@pytest.mark.parametrize(
    "fields",
    [
        {"logprobs": False, "top_logprobs": 0, "logit_bias": {}, "tools": []},
        {"tool_choice": "none", "response_format": {"type": "text"}, "modalities": ["text"]},
        {"user": "u1", "metadata": {"a": "b"}, "store": False, "model": "anything"},
        {"service_tier": "auto", "parallel_tool_calls": True, "n": 1},
    ],
)
def test_off_values_and_harmless_fields_are_accepted(fields: dict[str, Any]) -> None:
    parse_chat({"messages": MESSAGES, **fields})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("logit_bias", {"x": -100}),
        ("logit_bias", {"5": 101}),
        ("top_logprobs", 3),  # without logprobs: true
        ("top_logprobs", 21),
        ("tools", [{"type": "function", "function": {}}]),
        ("tool_choice", "required"),  # without tools
        ("response_format", {"type": "xml"}),
        ("functions", [{"name": "f"}]),
        ("audio", {"voice": "alloy"}),
        ("reasoning_effort", "high"),
        ("prediction", {"type": "content", "content": "x"}),
        ("echo", True),  # a completions field: unknown on chat
        ("made_up_option", 1),
        ("n", 17),
        ("n", 0),
        ("n", True),
    ],
)
def test_unsupported_chat_fields_are_400_naming_them(field: str, value: object) -> None:
    with pytest.raises(BadRequest) as info:
        parse_chat({"messages": MESSAGES, field: value})
    assert info.value.extra["param"] == field and field in info.value.message
    assert status_of(info.value) == 400


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("logit_bias", {"-1": 1}),
        ("echo", True),
        ("best_of", 3),
        ("suffix", "end"),
        ("logprobs", True),
        ("logprobs", 21),
    ],
)
def test_unsupported_completion_fields_are_400_naming_them(field: str, value: object) -> None:
    with pytest.raises(BadRequest) as info:
        parse_completion({"prompt": "a", field: value})
    assert info.value.extra["param"] == field


def test_completion_off_values_are_accepted() -> None:
    parse_completion({"prompt": "a", "echo": False, "best_of": 1, "suffix": "", "logit_bias": {}})


def test_supported_fields_are_parsed() -> None:
    chat = parse_chat(
        {
            "messages": MESSAGES,
            "logprobs": True,
            "top_logprobs": 3,
            "logit_bias": {"5": -100, "7": 2.5},
            "n": 3,
            "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "auto",
        }
    )
    assert chat.params.logprobs == 3 and chat.n == 3
    assert chat.params.logit_bias == {5: -100.0, 7: 2.5}
    assert chat.params.grammar is not None and "root ::=" in chat.params.grammar
    assert chat.tools is not None and chat.tools.choice == "auto"
    assert parse_chat({"messages": MESSAGES, "logprobs": True}).params.logprobs == 0
    assert parse_completion({"prompt": "a", "logprobs": 0}).params.logprobs == 0
    assert parse_completion({"prompt": "a", "logprobs": 2, "n": 2}).n == 2
