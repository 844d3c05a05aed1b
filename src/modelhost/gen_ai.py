"""Request/response shapes for LLM models: Practicus' ``PrtLang*`` and OpenAI chat.

User code (`model.py`) imports these as ``practicuscore.gen_ai``, so field names, types
and defaults match Practicus AI's SDK exactly; do not rename or re-default them. Requests
accept unknown fields (``extra="allow"``) so newer clients sending extra options are not
rejected; responses keep to the documented fields.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatCompletionResponseChoice",
    "ChatCompletionResponseChoiceMessage",
    "ChatCompletionResponseUsage",
    "ChatMessage",
    "PrtEmbeddingObject",
    "PrtEmbeddingUsage",
    "PrtEmbeddingsRequest",
    "PrtEmbeddingsResponse",
    "PrtLangMessage",
    "PrtLangRequest",
    "PrtLangResponse",
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- Practicus protocol ------------------------------------------------------------------


class PrtLangMessage(_Request):
    """One chat turn; `role` is free text ("system", "human", "user", "assistant", ...)."""

    content: str
    role: str | None = None


class PrtLangRequest(_Request):
    """What a Practicus LLM client POSTs to a model URL."""

    messages: list[PrtLangMessage]
    lang_model: str | None = None
    streaming: bool = False
    temperature: float = 0.5
    max_tokens: int = 4094
    lang_model_kwargs: dict[str, Any] = {}


class PrtLangResponse(BaseModel):
    """What a Practicus LLM model answers (non-streaming)."""

    content: str
    lang_model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    additional_kwargs: dict[str, Any] = {}


# --- OpenAI chat completions ----------------------------------------------------------------


class ChatMessage(_Request):
    """An OpenAI chat message; `content` may be text, content parts, or absent."""

    role: str
    content: str | list[dict[str, Any]] | None = None

    @property
    def text(self) -> str:
        """The message as plain text: text parts joined, other parts (images) dropped."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class ChatCompletionRequest(_Request):
    """``POST .../v1/chat/completions``; unset sampling options mean "engine default"."""

    model: str | None = None
    messages: list[ChatMessage]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int = 1
    stream: bool = False
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    user: str | None = None


class ChatCompletionResponseChoiceMessage(BaseModel):
    """The assistant's reply inside a choice."""

    role: str = "assistant"
    content: str | None = None


class ChatCompletionResponseChoice(BaseModel):
    """One generated alternative; `finish_reason` is "stop" or "length"."""

    index: int = 0
    message: ChatCompletionResponseChoiceMessage
    finish_reason: str | None = "stop"


class ChatCompletionResponseUsage(BaseModel):
    """Token counts, as OpenAI reports them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletionResponse(BaseModel):
    """A non-streaming chat completion; `id` and `created` are filled in when omitted."""

    id: str = Field(default_factory=_completion_id)
    object: str = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str = ""
    choices: list[ChatCompletionResponseChoice]
    usage: ChatCompletionResponseUsage = Field(default_factory=ChatCompletionResponseUsage)


# --- Embeddings (OpenAI's /v1/embeddings shape) ------------------------------------------


class PrtEmbeddingsRequest(_Request):
    """``POST .../embeddings`` (or the model URL): text, texts, or token ids to embed.

    ``encoding_format`` is ``"float"`` (the default) or ``"base64"`` (little-endian float32,
    what the ``openai`` SDK asks for unless told otherwise)."""

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    user: str | None = None
    encoding_format: str | None = None
    dimensions: int | None = None


class PrtEmbeddingObject(BaseModel):
    """One input's vector; `index` is the input's position in the request."""

    object: str = "embedding"
    embedding: list[float] | str
    index: int = 0


class PrtEmbeddingUsage(BaseModel):
    """Tokens read (embeddings generate none, so both counts are the input's)."""

    prompt_tokens: int = 0
    total_tokens: int = 0


class PrtEmbeddingsResponse(BaseModel):
    """The answer: one `PrtEmbeddingObject` per input, in input order."""

    object: str = "list"
    data: list[PrtEmbeddingObject]
    model: str = ""
    usage: PrtEmbeddingUsage = Field(default_factory=PrtEmbeddingUsage)
