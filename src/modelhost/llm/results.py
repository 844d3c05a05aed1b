"""What `LLMService.handle` returns: a JSON body, or a stream of byte chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class JSONResult:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamResult:
    """Send ``chunks`` as they come; closing the iterator (``aclose``) cancels generation."""

    chunks: AsyncIterator[bytes]
    content_type: str = "text/event-stream"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


LLMResult = JSONResult | StreamResult
