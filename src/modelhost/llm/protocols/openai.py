"""OpenAI-compatible shapes: request parsing, response and chunk bodies, SSE, errors.

Covers ``chat/completions``, ``completions`` and ``models`` (under the model URL and under
``v1/``). Request fields, as OpenAI's API treats them:

- ``null`` means the field's default, for every optional field;
- used: ``messages`` / ``prompt``, ``temperature``, ``top_p``, ``max_tokens``,
  ``max_completion_tokens``, ``stop``, ``seed``, ``presence_penalty``,
  ``frequency_penalty``, ``stream``, ``stream_options.include_usage``, ``n``,
  ``logprobs`` / ``top_logprobs`` (chat: bool + 0..20; completions: 0..20),
  ``logit_bias``, ``response_format`` (text, json_object, json_schema: grammar-enforced),
  ``tools`` / ``tool_choice`` (chat);
- vendor extensions (vLLM / llama.cpp names, see `modelhost.llm.params`): ``top_k``,
  ``min_p``, ``repetition_penalty``, ``ignore_eos``;
- accepted and ignored because they cannot change the answer: ``model`` (one model per URL),
  ``user``, ``metadata``, ``store``, ``service_tier``, ``safety_identifier``,
  ``prompt_cache_key``, ``parallel_tool_calls``;
- accepted only at the value that turns them off (`OFF_VALUES`): ``functions``,
  ``function_call``, ``modalities`` and, on ``completions``, ``best_of``, ``echo``,
  ``suffix``;
- anything else (``audio``, ``prediction``, ``reasoning_effort``, an unknown name, ...) is
  refused with 400 naming the field, never dropped silently.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelhost import errors
from modelhost.http_status import error_headers as http_error_headers
from modelhost.http_status import status_of
from modelhost.llm.params import MAX_TOP_LOGPROBS, VENDOR_EXTENSIONS, SamplingParams
from modelhost.llm.protocols.common import require_body
from modelhost.llm.protocols.openai_tools import ToolRequest, chat_message, parse_tools
from modelhost.llm.structured import response_format_grammar

SSE_DONE = b"data: [DONE]\n\n"
DEFAULT_COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for the legacy endpoint
MAX_N = 16


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A parsed chat or completions request. ``prompt`` is text, or token ids."""

    prompt: str | list[int]
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)
    n: int = 1
    tools: ToolRequest | None = None


# --- requests ---------------------------------------------------------------------------


SAMPLING_FIELDS = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "stream",
        "stream_options",
        "n",
        "logprobs",
        "logit_bias",
        "response_format",
        *VENDOR_EXTENSIONS,
    }
)
IGNORED_FIELDS = frozenset(
    {
        "model",
        "user",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "parallel_tool_calls",
    }
)
OFF_VALUES: dict[str, tuple[object, ...]] = {
    "functions": ([],),
    "function_call": ("none",),
    "modalities": (["text"],),
}
COMPLETIONS_OFF_VALUES: dict[str, tuple[object, ...]] = {
    "best_of": (1,),
    "echo": (False,),
    "suffix": ("",),
}
CHAT_FIELDS = (
    frozenset({"messages", "top_logprobs", "tools", "tool_choice"})
    | SAMPLING_FIELDS
    | IGNORED_FIELDS
)
COMPLETIONS_FIELDS = frozenset({"prompt"}) | SAMPLING_FIELDS | IGNORED_FIELDS


def check_fields(
    data: Mapping[str, Any], known: frozenset[str], off_values: Mapping[str, tuple[object, ...]]
) -> None:
    """Refuse, naming it, any field this server would otherwise ignore while it matters."""
    for name, value in data.items():
        if value is None or name in known:
            continue
        if name in off_values:
            if any(value == off and type(value) is type(off) for off in off_values[name]):
                continue
            raise errors.BadRequest(
                f"{name}: not supported by this server (send null or leave it out)", param=name
            )
        raise errors.BadRequest(
            f"{name}: unknown or unsupported field; this server takes the OpenAI sampling "
            f"fields and the extensions {', '.join(VENDOR_EXTENSIONS)}",
            param=name,
        )


def parse_chat(body: object) -> GenerationRequest:
    data = require_body(body)
    check_fields(data, CHAT_FIELDS, OFF_VALUES)
    return GenerationRequest(
        prompt="",
        messages=_messages(data.get("messages")),
        params=sampling(data, None, _chat_logprobs(data)),
        stream=_flag(data, "stream"),
        include_usage=_include_usage(data),
        n=_n(data),
        tools=parse_tools(data.get("tools"), data.get("tool_choice")),
    )


def parse_completion(body: object) -> GenerationRequest:
    data = require_body(body)
    check_fields(data, COMPLETIONS_FIELDS, COMPLETIONS_OFF_VALUES)
    logprobs = data.get("logprobs")
    if logprobs is not None and (
        type(logprobs) is not int or not 0 <= logprobs <= MAX_TOP_LOGPROBS
    ):
        raise errors.BadRequest(
            f"logprobs: must be an integer from 0 to {MAX_TOP_LOGPROBS}", param="logprobs"
        )
    return GenerationRequest(
        prompt=_prompt(data.get("prompt")),
        params=sampling(data, DEFAULT_COMPLETIONS_MAX_TOKENS, logprobs),
        stream=_flag(data, "stream"),
        include_usage=_include_usage(data),
        n=_n(data),
    )


def sampling(
    data: Mapping[str, Any], default_max_tokens: int | None, logprobs: int | None = None
) -> SamplingParams:
    max_tokens = data.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = data.get("max_tokens")
    if max_tokens is None:
        max_tokens = default_max_tokens
    grammar = response_format_grammar(data.get("response_format"))
    return SamplingParams.from_mapping(
        {**data, "max_tokens": max_tokens}, logprobs=logprobs, grammar=grammar
    )


def _n(data: Mapping[str, Any]) -> int:
    n = data.get("n")
    if n is None:
        return 1
    if type(n) is not int or not 1 <= n <= MAX_N:
        raise errors.BadRequest(f"n: must be an integer from 1 to {MAX_N}", param="n")
    return n


def _chat_logprobs(data: Mapping[str, Any]) -> int | None:
    """Chat's ``logprobs: true`` + ``top_logprobs: k`` → the engine's k (None: off)."""
    wanted, top = _flag(data, "logprobs"), data.get("top_logprobs")
    if top is None:
        return 0 if wanted else None
    if type(top) is not int or not 0 <= top <= MAX_TOP_LOGPROBS:
        raise errors.BadRequest(
            f"top_logprobs: must be an integer from 0 to {MAX_TOP_LOGPROBS}", param="top_logprobs"
        )
    if not wanted:
        if top == 0:
            return None
        raise errors.BadRequest("top_logprobs: needs logprobs: true", param="top_logprobs")
    return top


def _messages(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise errors.BadRequest("messages: must be a non-empty list", param="messages")
    return [chat_message(message, i) for i, message in enumerate(value)]


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


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage; ``cached_tokens``: prompt tokens the prefix cache saved computing."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def chat_response(
    head: ResponseHeader, choices: list[dict[str, Any]], use: dict[str, Any]
) -> dict[str, Any]:
    return _body(head, "chat.completion", choices, use)


def chat_choice(
    index: int, message: dict[str, Any], finish_reason: str | None, logprobs: Any = None
) -> dict[str, Any]:
    return {
        "index": index,
        "message": message,
        "logprobs": logprobs,
        "finish_reason": finish_reason,
    }


def completion_response(
    head: ResponseHeader, choices: list[dict[str, Any]], use: dict[str, Any]
) -> dict[str, Any]:
    return _body(head, "text_completion", choices, use)


def completion_choice(
    index: int, text: str, finish_reason: str | None, logprobs: Any = None
) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def chat_chunk(
    head: ResponseHeader,
    delta: dict[str, Any],
    finish_reason: str | None,
    with_usage: bool,
    index: int = 0,
    logprobs: Any = None,
) -> dict[str, Any]:
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    return _chunk(head, "chat.completion.chunk", [choice], with_usage)


def completion_chunk(
    head: ResponseHeader,
    text: str,
    finish_reason: str | None,
    with_usage: bool,
    index: int = 0,
    logprobs: Any = None,
) -> dict[str, Any]:
    choice = completion_choice(index, text, finish_reason, logprobs)
    return _chunk(head, "text_completion", [choice], with_usage)


def usage_chunk(
    head: ResponseHeader, obj: str, prompt_tokens: int, completion_tokens: int, cached: int = 0
) -> dict[str, Any]:
    return _body(head, obj, [], usage(prompt_tokens, completion_tokens, cached))


def models_response(model: str, created: int) -> dict[str, Any]:
    entry = {"id": model, "object": "model", "created": created, "owned_by": "modelhost"}
    return {"object": "list", "data": [entry]}


def _body(
    head: ResponseHeader, obj: str, choices: list[dict[str, Any]], use: dict[str, Any] | None
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


# OpenAI's error ``type`` for each domain error; the HTTP status comes from the project's one
# table, `modelhost.http_status` (this protocol only chooses its error shape).
_ERROR_TYPES: list[tuple[type[errors.ModelhostError], str]] = [
    (errors.BadRequest, "invalid_request_error"),
    (errors.Unauthorized, "authentication_error"),
    (errors.Forbidden, "permission_error"),
    (errors.NotFound, "not_found_error"),
    (errors.MethodNotAllowed, "invalid_request_error"),
    (errors.PayloadTooLarge, "invalid_request_error"),
    (errors.UnsupportedMediaType, "invalid_request_error"),
    (errors.TooManyRequests, "rate_limit_error"),
    (errors.ModelNotReady, "service_unavailable"),
    (errors.WorkerUnavailable, "service_unavailable"),
]


def error_status(exc: errors.ModelhostError) -> int:
    return status_of(exc)


def error_object(exc: errors.ModelhostError) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI sends it."""
    kind = next((k for cls, k in _ERROR_TYPES if isinstance(exc, cls)), "server_error")
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
    """The headers the gateway adds to this error (Retry-After, Allow, ...), content-type aside."""
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in http_error_headers(exc)
        if name != b"content-type"
    }
