"""Domain errors, raised anywhere in modelhost and mapped to HTTP in one place
(`modelhost.http_status`; the gateway's responses in `modelhost.gateway.http_errors`).

    ModelhostError            base; `code` is the wire name of the error type
    ├── BadRequest            the request is wrong (400)
    │   ├── InvalidJSON       the body is not JSON
    │   └── InvalidModelFolder  model.py / model.json cannot be deployed
    ├── Unauthorized          no or bad credentials (401)
    ├── Forbidden             valid credentials, wrong scope (403)
    ├── NotFound              unknown prefix, model, version, file (404)
    ├── MethodNotAllowed      a method the URL does not take; `allow` lists those it does (405)
    ├── Conflict              already exists (409)
    ├── PayloadTooLarge       body over the limit, or a decompression bomb (413)
    ├── UnsupportedMediaType  content-type or content-encoding we cannot read (415)
    ├── TooManyRequests       throttled; `retry_after` seconds (429)
    │   └── QueueFull         a version's `max_queue` requests are in flight already
    ├── PredictFailed         the model's predict raised (500)
    ├── UpstreamUnavailable   a model's upstream server (proxy mode) cannot be reached (502)
    ├── ModelNotReady         loading, or init failed; `reason` says why (503)
    ├── WorkerUnavailable     the worker process is gone or timed out (503)
    └── PredictTimeout        predict did not answer within MODELHOST_PREDICT_TIMEOUT_S (504)

Errors cross the worker boundary as ``{"type": code, "message": ...}`` and are rebuilt with
`from_wire`, never pickled.
"""

from __future__ import annotations


class ModelhostError(Exception):
    code = "internal_error"

    def __init__(self, message: str, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def to_wire(self) -> dict[str, object]:
        return {"type": self.code, "message": self.message, **self.extra}


class BadRequest(ModelhostError):
    code = "bad_request"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class InvalidModelFolder(BadRequest):
    code = "invalid_model_folder"


class Unauthorized(ModelhostError):
    code = "unauthorized"


class Forbidden(ModelhostError):
    code = "forbidden"


class NotFound(ModelhostError):
    code = "not_found"


class MethodNotAllowed(ModelhostError):
    code = "method_not_allowed"

    def __init__(self, message: str, allow: str = "GET, POST", **extra: object) -> None:
        super().__init__(message, **extra)
        self.allow = allow


class Conflict(ModelhostError):
    code = "conflict"


class PayloadTooLarge(ModelhostError):
    code = "payload_too_large"


class UnsupportedMediaType(ModelhostError):
    code = "unsupported_media_type"


class TooManyRequests(ModelhostError):
    code = "too_many_requests"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after


class QueueFull(TooManyRequests):
    """A version already has its deployment's `max_queue` requests in flight (429)."""

    code = "queue_full"


class PredictFailed(ModelhostError):
    code = "predict_error"


class UpstreamUnavailable(ModelhostError):
    """The server a model forwards to (`prt.models.server` proxy or local) did not answer."""

    code = "upstream_unavailable"


class ModelNotReady(ModelhostError):
    code = "model_not_ready"


class WorkerUnavailable(ModelhostError):
    code = "worker_unavailable"


class PredictTimeout(ModelhostError):
    code = "predict_timeout"


_BY_CODE: dict[str, type[ModelhostError]] = {
    cls.code: cls
    for cls in (
        ModelhostError,
        BadRequest,
        InvalidJSON,
        InvalidModelFolder,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        PredictFailed,
        UpstreamUnavailable,
        ModelNotReady,
        WorkerUnavailable,
        PredictTimeout,
    )
}


def from_wire(data: dict[str, object]) -> ModelhostError:
    """Rebuild an error sent across the worker boundary."""
    code = str(data.get("type", "internal_error"))
    message = str(data.get("message", ""))
    if code == TooManyRequests.code:
        return TooManyRequests(message, float(data.get("retry_after", 1.0)))  # type: ignore[arg-type]
    extra = {k: v for k, v in data.items() if k not in {"type", "message"}}
    return _BY_CODE.get(code, ModelhostError)(message, **extra)
