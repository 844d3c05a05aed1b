"""A Starlette (or FastAPI) response returned by ``predict`` / ``serve``, kept as it is.

Practicus model code may answer with a ``Response`` or ``StreamingResponse`` (what
``prt.models.server.serve`` returns): its status, content type and headers reach the client,
and a streaming body is streamed. Hop-by-hop and framing headers are the gateway's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.responses import Response, StreamingResponse

from modelhost.errors import PredictFailed

if TYPE_CHECKING:
    from modelhost.worker.runner import Reply, StreamReply

# Framing and hop-by-hop headers: set by whoever sends the bytes, never copied from a response.
GATEWAY_OWN_HEADERS = frozenset(
    {
        "content-length",
        "content-type",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "date",
        "server",
        "x-request-id",
    }
)


def is_response(result: object) -> bool:
    return isinstance(result, Response)


def to_reply(response: Response) -> Reply | StreamReply:
    from modelhost.worker.runner import Reply, StreamReply  # runner imports this module

    content_type = response.headers.get("content-type") or "application/octet-stream"
    headers = {
        k.decode("latin-1"): v.decode("latin-1")
        for k, v in response.raw_headers
        if k.decode("latin-1").lower() not in GATEWAY_OWN_HEADERS
    }
    if isinstance(response, StreamingResponse):
        chunks = _bytes(response.body_iterator)
        return StreamReply(chunks, content_type, response.status_code, headers)
    return Reply(bytes(response.body), content_type, response.status_code, headers)


async def _bytes(chunks: AsyncIterable[Any]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk.encode() if isinstance(chunk, str) else bytes(chunk)
    except Exception as exc:
        raise PredictFailed(f"the streamed response failed: {type(exc).__name__}: {exc}") from exc
