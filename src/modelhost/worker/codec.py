"""Turning request bodies into `payload_dict` and `predict` results into response bytes."""

from __future__ import annotations

import io
from typing import Any

import orjson

from modelhost.errors import BadRequest, InvalidJSON, UnsupportedMediaType

JSON_TYPE = "application/json"
_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def decode_payload(body: bytes, content_type: str) -> Any:
    """JSON (the default) → Python objects; CSV → a pandas DataFrame."""
    if not body:
        return {}
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in ("", JSON_TYPE, "text/plain", "application/x-www-form-urlencoded") or kind.endswith(
        "+json"
    ):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidJSON(f"the request body is not valid JSON: {exc}") from None
    if kind == "text/csv":
        try:
            import pandas as pd
        except ImportError:
            raise UnsupportedMediaType(
                "text/csv bodies need pandas in the worker's environment: "
                "pip install 'modelhost[classic]'"
            ) from None
        try:
            return pd.read_csv(io.BytesIO(body))
        except ValueError as exc:  # ParserError, EmptyDataError, bad UTF-8: 400, not 500
            raise BadRequest(f"the request body is not valid CSV: {exc}") from None
    raise UnsupportedMediaType(
        f"content-type {kind!r} is not supported; send application/json or text/csv"
    )


def _default(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)
    if callable(dump):  # pydantic
        return dump()
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):  # pandas DataFrame / Series
        try:
            return to_dict(orient="records")
        except TypeError:
            return to_dict()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"predict returned an object of type {type(obj).__name__} that is not JSON")


def encode_result(result: Any, csv: bool = False) -> tuple[bytes, str]:
    """The response body and its content type.

    A DataFrame (anything with ``to_csv``) goes back as CSV when ``csv`` (the request was
    CSV: Practicus clients read ``pd.read_csv(BytesIO(r.content))``), else as JSON records.
    """
    if isinstance(result, bytes | bytearray | memoryview):
        return bytes(result), "application/octet-stream"
    to_csv = getattr(result, "to_csv", None)
    if csv and callable(to_csv):
        return str(to_csv(index=False)).encode(), "text/csv; charset=utf-8"
    return orjson.dumps(result, default=_default, option=_OPTS), JSON_TYPE


def encode_chunk(item: Any) -> bytes:
    """One piece of a streamed answer: text as is, anything else as a JSON line."""
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    return orjson.dumps(item, default=_default, option=_OPTS) + b"\n"
