"""Log output of the gateway and its workers: plain text or one JSON object per line.

`setup(level, fmt)` is the one place that configures logging: `modelhost serve` calls it with
`MODELHOST_LOG_LEVEL` / `MODELHOST_LOG_FORMAT`, and each worker with the same values from its
spec, so a collector reads one format from every process. A JSON line carries `ts` (UTC,
ISO 8601), `level`, `logger`, `message`, `request_id` when the record has one, the worker's
`pod`, and `exc` with the traceback. A record gets its `request_id` from
``extra={"request_id": rid}`` or, failing that, from `REQUEST_ID`: the gateway sets it for
each model request it answers and the worker for each request it serves (the id travels
in the request frame; sync `predict` calls run in a copy of the request's context), so
whatever is logged while a request is handled names it, `model.py`'s own lines included.

Credentials never reach the output: a filter on the handler masks bearer tokens, JWTs,
`mh_` access tokens and `password=` values in every message, whichever code logged them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

FORMATS = ("text", "json")
# "Bearer <anything>", a JWT (three base64url parts, header starting `eyJ`), an access token
# (`mh_...`), and `password`/`token`/`secret` given as key=value or "key": "value".
_SECRETS = re.compile(
    r"(?i)\bbearer\s+[^\s\"',;]+"
    r"|\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"
    r"|\bmh_[A-Za-z0-9_-]{8,}"
    r"|(?<=[\"']password[\"']: [\"'])[^\"']+"
    r"|(?<=password=)[^\s&]+"
)
_MASK = "[redacted]"
# The `x-request-id` of the request this task (or predict thread) is handling, if any.
REQUEST_ID: ContextVar[str | None] = ContextVar("modelhost_request_id", default=None)
# LogRecord attributes that are not the caller's `extra=` fields.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


def redact(text: str) -> str:
    """`text` with every credential-shaped part replaced by ``[redacted]``."""
    return _SECRETS.sub(_MASK, text)


class RedactSecrets(logging.Filter):
    """Formats the message once, masked; later handlers see the masked text only."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message or record.args:
            record.msg, record.args = masked, None
        return True


class TagRequest(logging.Filter):
    """Gives a record without a `request_id` the one of the request being handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "request_id" not in record.__dict__:
            request_id = REQUEST_ID.get()
            if request_id:
                record.request_id = request_id
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, pod: str = "") -> None:
        super().__init__()
        self.pod = pod

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.pod:
            entry["pod"] = self.pod
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = redact(record.exc_text)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic line, with the request id appended when the record has one."""

    def __init__(self, pod: str = "") -> None:
        where = f" [{pod}]" if pod else ""
        super().__init__(f"%(asctime)s %(levelname)s{where} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = redact(super().format(record))  # the traceback too
        request_id = getattr(record, "request_id", None)
        return f"{line} request_id={request_id}" if request_id else line


def _iso(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def check_format(fmt: str) -> str:
    value = (fmt or "text").strip().lower()
    if value not in FORMATS:
        raise ValueError(f"MODELHOST_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return value


def setup(level: str, fmt: str = "text", *, pod: str = "") -> None:
    """Root logging to stderr in `fmt` ("text" | "json") at `level`; replaces any handler
    set before (uvicorn's own are not used: the server passes ``log_config=None``)."""
    fmt = check_format(fmt)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter(pod) if fmt == "json" else TextFormatter(pod))
    handler.addFilter(RedactSecrets())
    handler.addFilter(TagRequest())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
