"""Reading a request body within its size limit, and undoing `content-encoding`.

Compressed bodies are inflated incrementally with an output cap, so a small "zip bomb"
is refused with 413 before it can use memory. Responses to compressed requests are
compressed the same way (Practicus clients expect that).
"""

from __future__ import annotations

import gzip
import zlib

import lz4.frame

from modelhost.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from modelhost.types import Message, Receive

ENCODINGS = ("gzip", "deflate", "zlib", "lz4")


class ClientDisconnected(Exception):
    """The client went away before its body was read (or its body stalled past
    MODELHOST_BODY_TIMEOUT_S, which the HTTP protocol answered with 408): nobody to answer."""


def first_part(message: Message, limit: int, declared: int | None) -> bytes | None:
    """The whole body when it came in one message (the common case), else None."""
    if declared is not None and declared > limit:
        raise _too_large(limit)
    if message["type"] == "http.disconnect":  # not an empty body: nobody is there
        raise ClientDisconnected
    body: bytes = message.get("body", b"")
    if message.get("more_body", False):
        return None
    if len(body) > limit:
        raise _too_large(limit)
    return body


async def read_rest(receive: Receive, first: Message, limit: int) -> bytes:
    """The body that did not fit in the first message."""
    body: bytes = first.get("body", b"")
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def decode(body: bytes, encoding: str, limit: int) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "lz4":
        return _inflate_lz4(body, limit)
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding in ("deflate", "zlib"):
        wbits = zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS
    else:
        raise UnsupportedMediaType(
            f"content-encoding {encoding!r} is not supported; use one of {', '.join(ENCODINGS)}"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"the body is not valid {encoding} data: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise _too_large(limit, inflated=True)
    return out


def _inflate_lz4(body: bytes, limit: int) -> bytes:
    inflater = lz4.frame.LZ4FrameDecompressor()
    try:
        out = inflater.decompress(body, max_length=limit + 1)
    except RuntimeError as exc:
        raise BadRequest(f"the body is not valid lz4 frame data: {exc}") from None
    if len(out) > limit or not inflater.eof:
        raise _too_large(limit, inflated=True)
    return out


def encode(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return gzip.compress(body, compresslevel=5)
    if encoding in ("deflate", "zlib"):
        return zlib.compress(body, 5)
    if encoding == "lz4":
        return lz4.frame.compress(body)
    return body


def _too_large(limit: int, inflated: bool = False) -> PayloadTooLarge:
    what = "the decompressed body" if inflated else "the request body"
    return PayloadTooLarge(
        f"{what} is over the limit of {limit} bytes; send less, or raise MODELHOST_MAX_BODY_BYTES"
    )
