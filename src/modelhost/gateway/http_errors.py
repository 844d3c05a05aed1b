"""The one place where domain errors become HTTP answers."""

from __future__ import annotations

import orjson

from modelhost import errors as e

_STATUS: list[tuple[type[e.ModelhostError], int]] = [
    (e.BadRequest, 400),
    (e.Unauthorized, 401),
    (e.Forbidden, 403),
    (e.NotFound, 404),
    (e.MethodNotAllowed, 405),
    (e.Conflict, 409),
    (e.PayloadTooLarge, 413),
    (e.UnsupportedMediaType, 415),
    (e.QueueFull, 429),  # with Retry-After, like every TooManyRequests
    (e.TooManyRequests, 429),
    (e.PredictFailed, 500),
    (e.ModelNotReady, 503),
    (e.WorkerUnavailable, 503),
    (e.PredictTimeout, 504),
]


def status_of(error: e.ModelhostError) -> int:
    for cls, status in _STATUS:
        if isinstance(error, cls):
            return status
    return 500


def error_for_status(status: int, message: str) -> e.ModelhostError:
    """The domain error this table answers with ``status`` (for a model's own HTTPException).

    A 4xx the table lacks becomes `BadRequest`; anything else `PredictFailed` (500).
    """
    for cls, code in _STATUS:
        if code == status and code < 500:
            return cls(message)
    return e.BadRequest(message) if 400 <= status < 500 else e.PredictFailed(message)


def error_body(error: e.ModelhostError) -> bytes:
    return orjson.dumps({"error": {"type": error.code, "message": error.message}})


# Seconds a client should wait before retrying a 503: a version loading or restarting, or a
# worker that went away (the supervisor starts another), is usually back within about this.
RETRY_AFTER_503_S = 1


def error_headers(error: e.ModelhostError) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json")]
    if isinstance(error, e.TooManyRequests):
        headers.append((b"retry-after", str(max(1, round(error.retry_after))).encode()))
    elif isinstance(error, (e.ModelNotReady, e.WorkerUnavailable)):
        headers.append((b"retry-after", str(RETRY_AFTER_503_S).encode()))
    elif isinstance(error, e.MethodNotAllowed):
        headers.append((b"allow", error.allow.encode("latin-1")))
    if isinstance(error, e.Unauthorized):
        headers.append((b"www-authenticate", b'Bearer realm="modelhost"'))
    return headers


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
