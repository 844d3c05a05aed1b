"""The one error the SDK raises for an unsuccessful HTTP answer.

It subclasses `ModelhostError` so callers can catch every modelhost failure with one
``except``, and its ``str`` is the server's own message: the server already says what is
wrong and what to do, and re-wording it here would only lose detail.
"""

from __future__ import annotations

import contextlib
from typing import Any

import httpx

from modelhost.errors import ModelhostError


class ApiError(ModelhostError):
    """The server answered with a non-2xx status; `type` is the wire error code."""

    def __init__(self, status: int, type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status}, {self.type})"

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Read ``{"error": {"type", "message"}}``; fall back to the raw text if absent."""
        error: Any = None
        with contextlib.suppress(ValueError, AttributeError):
            error = response.json().get("error")
        if isinstance(error, dict) and "message" in error:
            return cls(response.status_code, str(error.get("type", "error")), str(error["message"]))
        text = response.text.strip()[:500] or response.reason_phrase
        return cls(response.status_code, "http_error", f"{response.request.url.path}: {text}")
