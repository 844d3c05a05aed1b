"""`LLMService`: the LLM protocols of one model, in front of its engine.

``handle(method, subpath, body)`` answers the model root (Practicus) and the OpenAI
endpoints below it (``chat/completions``, ``completions``, ``models``, each also under
``v1/``). Errors come back as results (status + error body) rather than
exceptions: OpenAI's error object under ``v1/``, ``{"error": {"type", "message"}}`` at
the root, the same shape the rest of modelhost uses.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from modelhost.errors import MethodNotAllowed, ModelhostError, NotFound
from modelhost.llm.engine_base import GenerationEngine
from modelhost.llm.metrics import LLMMetrics, MeteredEngine
from modelhost.llm.protocols import openai, practicus
from modelhost.llm.protocols.common import collect
from modelhost.llm.protocols.openai import GenerationRequest, ResponseHeader
from modelhost.llm.protocols.openai_stream import ChatChunks, CompletionChunks, sse_events
from modelhost.llm.results import JSONResult, LLMResult, StreamResult
from modelhost.llm.stream import TokenStream

Handler = Callable[[Any], Awaitable[LLMResult]]


class LLMService:
    def __init__(self, engine: GenerationEngine, model_name: str) -> None:
        self.model_name = model_name
        # vLLM's metric names (llm/metrics.py): every stream the engine returns is metered.
        self.metrics = LLMMetrics(model_name, engine)
        self.engine = MeteredEngine(engine, self.metrics)
        self._created = int(time.time())
        openai_routes: dict[str, tuple[str, Handler]] = {
            "chat/completions": ("POST", self._chat),
            "completions": ("POST", self._completions),
            "models": ("GET", self._models),
        }
        # Both under v1/ and directly under the model URL: OpenAI(base_url=api_url), as
        # Practicus documents it, posts to api_url + "chat/completions".
        self._routes = {**openai_routes, **{f"v1/{k}": v for k, v in openai_routes.items()}}

    async def handle(self, method: str, subpath: str, body: dict[str, Any] | None) -> LLMResult:
        result = await self._route(method, subpath, body)
        if isinstance(result, JSONResult) and result.status >= 400:
            self.metrics.error(result.status, _error_type(result.body))  # errors are values
        return result

    async def _route(self, method: str, subpath: str, body: dict[str, Any] | None) -> LLMResult:
        path = subpath.strip("/")
        if not path:
            return await self._guard(self._practicus, body, openai_errors=False)
        route = self._routes.get(path)
        if route is None:
            return _openai_error(NotFound(f"no such endpoint: {path}"))
        expected, handler = route
        if method.upper() != expected:
            return _openai_error(MethodNotAllowed(f"{path} accepts {expected} only", expected))
        return await self._guard(handler, body, openai_errors=True)

    async def _guard(self, handler: Handler, body: Any, *, openai_errors: bool) -> LLMResult:
        try:
            return await handler(body)
        except ModelhostError as exc:
            return _openai_error(exc) if openai_errors else _plain_error(exc)

    # --- OpenAI ------------------------------------------------------------------------

    async def _chat(self, body: Any) -> LLMResult:
        req = openai.parse_chat(body)
        stream = await self._start(req.messages, req)
        head = ResponseHeader.new("chatcmpl", self.model_name)
        if req.stream:
            shape = ChatChunks(head, req.include_usage)
            return StreamResult(sse_events(stream, shape, head, req.include_usage))
        return JSONResult(200, openai.chat_response(head, await collect(stream)))

    async def _completions(self, body: Any) -> LLMResult:
        req = openai.parse_completion(body)
        stream = await self._start(None, req)
        head = ResponseHeader.new("cmpl", self.model_name)
        if req.stream:
            shape = CompletionChunks(head, req.include_usage)
            return StreamResult(sse_events(stream, shape, head, req.include_usage))
        return JSONResult(200, openai.completion_response(head, await collect(stream)))

    async def _models(self, _body: Any) -> LLMResult:
        return JSONResult(200, openai.models_response(self.model_name, self._created))

    # --- Practicus ---------------------------------------------------------------------

    async def _practicus(self, body: Any) -> LLMResult:
        req = practicus.parse(body)
        stream = await self.engine.generate(self._chat_tokens(req.messages), req.params)
        if req.streaming:
            return StreamResult(
                practicus.text_chunks(stream), content_type=practicus.TEXT_CONTENT_TYPE
            )
        done = await collect(stream)
        return JSONResult(200, practicus.response_body(req, done, self.model_name))

    # --- prompts -----------------------------------------------------------------------

    async def _start(
        self, messages: list[dict[str, str]] | None, req: GenerationRequest
    ) -> TokenStream:
        if messages is not None:
            tokens = self._chat_tokens(messages)
        elif isinstance(req.prompt, str):
            tokens = self.engine.backend.tokenize(req.prompt)
        else:
            tokens = req.prompt
        return await self.engine.generate(tokens, req.params)

    def _chat_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        backend = self.engine.backend
        return backend.tokenize(backend.render_chat(messages))


def _error_type(body: dict[str, Any]) -> str:
    error = body.get("error")
    if not isinstance(error, dict):
        return "error"
    return str(error.get("type") or error.get("code") or "error")


def _openai_error(exc: ModelhostError) -> JSONResult:
    return JSONResult(openai.error_status(exc), openai.error_object(exc), openai.error_headers(exc))


def _plain_error(exc: ModelhostError) -> JSONResult:
    body = {"error": {"type": exc.code, "message": exc.message}}
    return JSONResult(openai.error_status(exc), body, openai.error_headers(exc))
