"""gen_ai pydantic models: Practicus field defaults and OpenAI wire shapes."""

from __future__ import annotations

from modelhost.gen_ai import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseChoiceMessage,
    ChatCompletionResponseUsage,
    ChatMessage,
    PrtLangMessage,
    PrtLangRequest,
    PrtLangResponse,
)


def test_prt_lang_defaults() -> None:
    req = PrtLangRequest(messages=[PrtLangMessage(content="Who is Einstein?", role="human")])
    assert req.lang_model is None
    assert req.streaming is False
    assert req.temperature == 0.5
    assert req.max_tokens == 4094
    assert req.lang_model_kwargs == {}
    assert PrtLangMessage(content="hi").role is None
    resp = PrtLangResponse(content="A physicist.")
    assert (resp.lang_model, resp.input_tokens, resp.output_tokens, resp.total_tokens) == (
        None,
        0,
        0,
        0,
    )
    assert resp.additional_kwargs == {}


def test_mutable_defaults_are_not_shared() -> None:
    a = PrtLangRequest(messages=[])
    a.lang_model_kwargs["x"] = 1
    assert PrtLangRequest(messages=[]).lang_model_kwargs == {}


def test_requests_accept_extra_fields() -> None:
    req = PrtLangRequest.model_validate(
        {"messages": [{"content": "hi", "role": "user", "name": "bob"}], "top_k": 5}
    )
    assert req.model_extra == {"top_k": 5}
    chat = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}
    )
    assert chat.model_extra == {"logprobs": True}


def test_prt_lang_roundtrip_json() -> None:
    req = PrtLangRequest(messages=[PrtLangMessage(content="hi")], streaming=True)
    assert PrtLangRequest.model_validate_json(req.model_dump_json()) == req


def test_openai_request_defaults_and_content_parts() -> None:
    req = ChatCompletionRequest(messages=[ChatMessage(role="user", content="hi")])
    assert req.model is None and req.stream is False and req.n == 1
    assert req.temperature is None and req.max_tokens is None and req.top_p is None
    parts = ChatMessage(
        role="user",
        content=[
            {"type": "text", "text": "a"},
            {"type": "image_url"},
            {"type": "text", "text": "b"},
        ],
    )
    assert parts.text == "ab"
    assert ChatMessage(role="assistant").text == ""


def test_openai_response_shape() -> None:
    resp = ChatCompletionResponse(
        model="smollm2",
        choices=[
            ChatCompletionResponseChoice(
                message=ChatCompletionResponseChoiceMessage(content="Hello"), finish_reason="length"
            )
        ],
        usage=ChatCompletionResponseUsage(prompt_tokens=3, completion_tokens=1, total_tokens=4),
    )
    data = resp.model_dump()
    assert data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-") and isinstance(data["created"], int)
    assert data["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello"},
            "finish_reason": "length",
        }
    ]
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    assert ChatCompletionResponse(choices=[]).id != ChatCompletionResponse(choices=[]).id
