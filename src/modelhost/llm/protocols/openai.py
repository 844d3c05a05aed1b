"""OpenAI-compatible shapes: request parsing, response and chunk bodies, SSE, errors.

Covers ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``. Beside OpenAI's
sampling fields, the vLLM / llama.cpp extensions ``top_k``, ``min_p``,
``repetition_penalty`` and ``ignore_eos`` are accepted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelhost import errors
from modelhost.llm.params import SamplingParams
from modelhost.llm.protocols.common import Completion, message_text, require_body

SSE_DONE = b"data: [DONE]\n\n"
DEFAULT_COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for the legacy endpoint


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A parsed chat or completions request. ``prompt`` is text, or token ids."""

    prompt: str | list[int]
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    messages: list[dict[str, str]] = field(default_factory=list)


# --- requests ---------------------------------------------------------------------------


def parse_chat(body: object) -> GenerationRequest:
    data = require_body(body)
    return GenerationRequest(
        prompt="",
        messages=_messages(data.get("messages")),
        params=sampling(data, default_max_tokens=None),
        stream=_flag(data, "stream"),
        include_usage=_include_usage(data),
    )


def parse_completion(body: object) -> GenerationRequest:
    data = require_body(body)
    return GenerationRequest(
        prompt=_prompt(data.get("prompt")),
        params=sampling(data, default_max_tokens=DEFAULT_COMPLETIONS_MAX_TOKENS),
        stream=_flag(data, "stream"),
        include_usage=_include_usage(data),
    )


def sampling(data: Mapping[str, Any], default_max_tokens: int | None) -> SamplingParams:
    if data.get("n", 1) != 1:
        raise errors.BadRequest("n: only n=1 is supported", param="n")
    max_tokens = data.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = data.get("max_tokens", default_max_tokens)
    return SamplingParams.from_mapping({**data, "max_tokens": max_tokens})


def _messages(value: object) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise errors.BadRequest("messages: must be a non-empty list", param="messages")
    out: list[dict[str, str]] = []
    for i, message in enumerate(value):
        param = f"messages[{i}]"
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise errors.BadRequest(f"{param}: must be an object with a role", param=param)
        content = message_text(message.get("content"), f"{param}.content")
        out.append({"role": message["role"], "content": content})
    return out


def _prompt(value: object) -> str | list[int]:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(type(t) is int for t in value):
        return list(value)
    raise errors.BadRequest(
        "prompt: must be a non-empty string or a list of token ids", param="prompt"
    )


def _flag(data: Mapping[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise errors.BadRequest(f"{name}: must be a boolean", param=name)
    return value


def _include_usage(data: Mapping[str, Any]) -> bool:
    options = data.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, Mapping):
        raise errors.BadRequest("stream_options: must be an object", param="stream_options")
    return _flag(options, "include_usage")


# --- responses ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseHeader:
    """What every body or chunk of one response repeats."""

    id: str
    model: str
    created: int

    @classmethod
    def new(cls, prefix: str, model: str) -> ResponseHeader:
        return cls(f"{prefix}-{uuid.uuid4().hex}", model, int(time.time()))


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_response(head: ResponseHeader, done: Completion) -> dict[str, Any]:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": done.text},
        "logprobs": None,
        "finish_reason": done.finish_reason,
    }
    return _body(
        head, "chat.completion", [choice], usage(done.prompt_tokens, done.completion_tokens)
    )


def completion_response(head: ResponseHeader, done: Completion) -> dict[str, Any]:
    choice = {"index": 0, "text": done.text, "logprobs": None, "finish_reason": done.finish_reason}
    return _body(
        head, "text_completion", [choice], usage(done.prompt_tokens, done.completion_tokens)
    )


def chat_chunk(
    head: ResponseHeader, delta: dict[str, str], finish_reason: str | None, with_usage: bool
) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return _chunk(head, "chat.completion.chunk", [choice], with_usage)


def completion_chunk(
    head: ResponseHeader, text: str, finish_reason: str | None, with_usage: bool
) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return _chunk(head, "text_completion", [choice], with_usage)


def usage_chunk(
    head: ResponseHeader, obj: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return _body(head, obj, [], usage(prompt_tokens, completion_tokens))


def models_response(model: str, created: int) -> dict[str, Any]:
    entry = {"id": model, "object": "model", "created": created, "owned_by": "modelhost"}
    return {"object": "list", "data": [entry]}


def _body(
    head: ResponseHeader, obj: str, choices: list[dict[str, Any]], use: dict[str, int] | None
) -> dict[str, Any]:
    return {
        "id": head.id,
        "object": obj,
        "created": head.created,
        "model": head.model,
        "choices": choices,
        "usage": use,
    }


def _chunk(
    head: ResponseHeader, obj: str, choices: list[dict[str, Any]], with_usage: bool
) -> dict[str, Any]:
    body = _body(head, obj, choices, None)
    if not with_usage:
        del body["usage"]
    return body


# --- wire ---------------------------------------------------------------------------------


def sse(payload: Mapping[str, Any]) -> bytes:
    """One server-sent event: ``data: {json}\\n\\n``."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


_ERROR_KINDS: list[tuple[type[errors.ModelhostError], int, str]] = [
    (errors.BadRequest, 400, "invalid_request_error"),
    (errors.Unauthorized, 401, "authentication_error"),
    (errors.Forbidden, 403, "permission_error"),
    (errors.NotFound, 404, "not_found_error"),
    (errors.PayloadTooLarge, 413, "invalid_request_error"),
    (errors.TooManyRequests, 429, "rate_limit_error"),
    (errors.ModelNotReady, 503, "service_unavailable"),
    (errors.WorkerUnavailable, 503, "service_unavailable"),
]


def error_status(exc: errors.ModelhostError) -> int:
    return next((status for cls, status, _ in _ERROR_KINDS if isinstance(exc, cls)), 500)


def error_object(exc: errors.ModelhostError) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI sends it."""
    kind = next((k for cls, _, k in _ERROR_KINDS if isinstance(exc, cls)), "server_error")
    param = exc.extra.get("param")
    return {
        "error": {
            "message": exc.message,
            "type": kind,
            "param": param if isinstance(param, str) else None,
            "code": exc.code,
        }
    }


def error_headers(exc: errors.ModelhostError) -> dict[str, str]:
    if isinstance(exc, errors.TooManyRequests):
        return {"retry-after": str(max(1, round(exc.retry_after)))}
    return {}
