"""Practicus AI's protocol on the model's root URL.

Two request shapes:
- ``PrtLangRequest`` (has ``messages``) → ``PrtLangResponse`` fields, or, with
  ``streaming: true``, the answer as plain text chunks;
- the seed tutorial's ``{"user_prompt": ..., "system_context": ...}`` → ``{"answer": ...}``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from modelhost.errors import BadRequest, ModelhostError
from modelhost.gen_ai import PrtLangRequest, PrtLangResponse
from modelhost.llm.params import SamplingParams
from modelhost.llm.protocols.common import Completion, require_body
from modelhost.llm.stream import TokenStream
from modelhost.llm.structured import response_format_grammar

TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
PROMPT_DEFAULTS: dict[str, Any] = {"temperature": 0.5, "max_tokens": 512}
_ROLE_ALIASES = {"human": "user", "ai": "assistant", "bot": "assistant"}
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PracticusRequest:
    messages: list[dict[str, str]]
    params: SamplingParams
    lang: bool
    """True for a PrtLangRequest, False for the user_prompt shape."""
    streaming: bool = False
    lang_model: str | None = None


def parse(body: object) -> PracticusRequest:
    data = require_body(body)
    if "messages" in data:
        return _lang_request(data)
    if "user_prompt" in data:
        return _prompt_request(data)
    raise BadRequest(
        "expected a PrtLangRequest (with messages) or {user_prompt, system_context}",
        param="messages",
    )


def _lang_request(data: Mapping[str, Any]) -> PracticusRequest:
    try:  # null means the field's default, as in OpenAI's API
        req = PrtLangRequest.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"])
        raise BadRequest(f"{param}: {first['msg']}", param=param) from exc
    messages = [
        {"role": _ROLE_ALIASES.get(m.role or "user", m.role or "user"), "content": m.content}
        for m in req.messages
    ]
    if not messages:
        raise BadRequest("messages: must not be empty", param="messages")
    kwargs = req.lang_model_kwargs  # the OpenAI sampling fields, logit_bias, response_format
    params = SamplingParams.from_mapping(
        kwargs,
        temperature=req.temperature,
        max_tokens=req.max_tokens,
        grammar=response_format_grammar(kwargs.get("response_format")),
    )
    return PracticusRequest(messages, params, True, req.streaming, req.lang_model)


def _prompt_request(data: Mapping[str, Any]) -> PracticusRequest:
    prompt, system = data.get("user_prompt"), data.get("system_context")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("user_prompt: must be a non-empty string", param="user_prompt")
    if system is not None and not isinstance(system, str):
        raise BadRequest("system_context: must be a string", param="system_context")
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return PracticusRequest(messages, SamplingParams.from_mapping(data, **PROMPT_DEFAULTS), False)


def response_body(req: PracticusRequest, done: Completion, model_name: str) -> dict[str, Any]:
    if not req.lang:
        return {"answer": done.text}
    return PrtLangResponse(
        content=done.text,
        lang_model=req.lang_model or model_name,
        input_tokens=done.prompt_tokens,
        output_tokens=done.completion_tokens,
        total_tokens=done.total_tokens,
    ).model_dump()


async def text_chunks(stream: TokenStream) -> AsyncIterator[bytes]:
    """The answer as UTF-8 text pieces; closing this iterator cancels the generation."""
    try:
        async for event in stream:
            if event.text:
                yield event.text.encode("utf-8")
    except ModelhostError as exc:
        # A plain text stream has no error event: the worker turns the raise into an aborted
        # response, so a client never takes a cut answer for a whole one.
        _log.warning("streamed generation failed: %s", exc)
        raise
    finally:
        await stream.aclose()
