"""Pieces shared by the protocols: running a prompt to completion, body checks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelhost.errors import BadRequest
from modelhost.llm.stream import FinishReason, Logprob, TokenStream


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    pieces: list[str] = field(default_factory=list)
    """The text deltas in order (what a stream would have shown)."""
    logprobs: list[Logprob] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


async def collect(stream: TokenStream) -> Completion:
    """Read a stream to its end."""
    parts: list[str] = []
    logprobs: list[Logprob] = []
    try:
        async for event in stream:
            parts.append(event.text)
            if event.logprob is not None:
                logprobs.append(event.logprob)
            if event.finish_reason is not None:
                return Completion(
                    "".join(parts),
                    event.finish_reason,
                    event.prompt_tokens,
                    event.completion_tokens,
                    parts,
                    logprobs,
                )
    finally:
        await stream.aclose()
    raise RuntimeError("token stream ended without a finish reason")


def require_body(body: object) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise BadRequest("the request body must be a JSON object", param=None)
    return body


def message_text(content: object, param: str) -> str:
    """Text of an OpenAI message ``content``: a string, or text parts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, Mapping)]
        if all(isinstance(p, Mapping) and p.get("type") == "text" for p in content) and all(
            isinstance(t, str) for t in texts
        ):
            return "".join(t for t in texts if isinstance(t, str))
    raise BadRequest(f"{param}: only text content is supported", param=param)
