"""The built-in engine as a plain local HTTP server: what `prt.models.server.start_serving`
runs for a GGUF file or a model folder, as Practicus runs vLLM.

    python -m modelhost.serving_app --model SmolLM2.gguf --port 8585 [--options '{"max_seqs": 8}']

It answers ``GET /health`` (200 once the weights are loaded) and every route of the model's
service (`LLMService` or `EmbeddingService`): ``/v1/chat/completions``, ``/v1/completions``,
``/v1/models``, ``/v1/embeddings``, the same without ``v1/``, and ``/`` (Practicus'
``PrtLangRequest``). No authentication: it binds to 127.0.0.1 and only the code that
started it calls it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from modelhost.llm.results import StreamResult


def build_app(service: Any) -> Starlette:
    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "healthy"})

    async def call(request: Request) -> Response:
        raw = await request.body()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            return JSONResponse({"error": {"message": "the body is not JSON"}}, status_code=400)
        result = await service.handle(request.method, request.path_params["path"], body)
        if isinstance(result, StreamResult):
            return StreamingResponse(
                result.chunks, result.status, result.headers, media_type=result.content_type
            )
        return Response(
            orjson.dumps(result.body), result.status, result.headers, "application/json"
        )

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/{path:path}", call, methods=["GET", "POST"]),
    ]
    return Starlette(routes=routes)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from modelhost.worker.llm_runner import build_service

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a .gguf file or a model folder")
    parser.add_argument("--port", type=int, default=8585)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default=None, help="the model name answers carry")
    parser.add_argument("--options", default="{}", help="JSON: model.json's llm options")
    args = parser.parse_args(argv)
    path = Path(args.model)
    service = build_service(path, args.name or path.stem, dict(json.loads(args.options)))
    uvicorn.run(build_app(service), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
