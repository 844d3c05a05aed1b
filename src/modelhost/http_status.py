"""The one table from domain errors to HTTP: each error's status and the headers that go
with it (Retry-After, Allow, WWW-Authenticate).

Both sides of the worker boundary read it: the gateway builds its responses from it
(`modelhost.gateway.http_errors`), and the LLM protocols, which answer inside the worker,
pick their status here too, so an error has one status whichever path it takes. It
imports nothing but `modelhost.errors`, so worker-side code can use it without pulling in
the gateway.
"""

from __future__ import annotations

from modelhost import errors as e

# Most specific first: the first class an error is an instance of gives its status.
STATUS: tuple[tuple[type[e.ModelhostError], int], ...] = (
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
    (e.UpstreamUnavailable, 502),
    (e.ModelNotReady, 503),
    (e.WorkerUnavailable, 503),
    (e.PredictTimeout, 504),
)

# Seconds a client should wait before retrying a 503: a version loading or restarting, or a
# worker that went away (the supervisor starts another), is usually back within about this.
RETRY_AFTER_503_S = 1


def status_of(error: e.ModelhostError) -> int:
    for cls, status in STATUS:
        if isinstance(error, cls):
            return status
    return 500


def error_for_status(status: int, message: str) -> e.ModelhostError:
    """The domain error this table answers with ``status`` (for a model's own HTTPException).

    A 4xx the table lacks becomes `BadRequest`; anything else `PredictFailed` (500).
    """
    for cls, code in STATUS:
        if code == status and code < 500:
            return cls(message)
    return e.BadRequest(message) if 400 <= status < 500 else e.PredictFailed(message)


def error_headers(error: e.ModelhostError) -> list[tuple[bytes, bytes]]:
    """The response headers of ``error``, content-type first."""
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
