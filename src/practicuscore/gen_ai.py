"""``practicuscore.gen_ai``: the PrtLang* and OpenAI-shaped models `model.py` files import."""

from modelhost.gen_ai import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseChoiceMessage,
    ChatCompletionResponseUsage,
    ChatMessage,
    PrtEmbeddingObject,
    PrtEmbeddingsRequest,
    PrtEmbeddingsResponse,
    PrtEmbeddingUsage,
    PrtLangMessage,
    PrtLangRequest,
    PrtLangResponse,
)

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
