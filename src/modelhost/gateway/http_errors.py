"""Domain errors as the gateway's HTTP answers: the JSON body, and the SSE ``error`` event
of a stream cut short. Status and headers come from the project's one table,
`modelhost.http_status` (re-exported here for the gateway's modules)."""

from __future__ import annotations

import orjson

from modelhost import errors as e
from modelhost.http_status import error_for_status, error_headers, status_of

__all__ = [
    "error_body",
    "error_for_status",
    "error_headers",
    "sse_error_event",
    "status_of",
]


def error_body(error: e.ModelhostError) -> bytes:
    return orjson.dumps({"error": {"type": error.code, "message": error.message}})


# OpenAI's error `type` by status, for the SSE `error` event of a stream cut short (the
# status line went out already, so the status only picks the type).
_SSE_ERROR_TYPES = {
    400: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


def sse_error_event(error: e.ModelhostError) -> bytes:
    """``event: error`` with OpenAI's error object, for a server-sent event stream that fails
    after it started (OpenAI's SDK raises it as an ``APIError``)."""
    payload = {
        "error": {
            "message": error.message,
            "type": _SSE_ERROR_TYPES.get(status_of(error), "server_error"),
            "param": None,
            "code": error.code,
        }
    }
    return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
