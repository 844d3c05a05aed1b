"""`LLMService`: the LLM protocols of one model, in front of its engine.

``handle(method, subpath, body)`` answers the model root (Practicus) and the OpenAI
endpoints below it (``chat/completions``, ``completions``, ``models``, each also under
``v1/``), and llama-server's ``tokenize`` / ``detokenize``. Errors come back as results
(status + error body) rather than exceptions: OpenAI's error object under ``v1/``,
``{"error": {"type", "message"}}`` at the root, the same shape the rest of modelhost uses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from modelhost.errors import BadRequest, MethodNotAllowed, ModelhostError, NotFound
from modelhost.llm.front import GenerationEngine, check_token_ids
from modelhost.llm.metrics import LLMMetrics, MeteredEngine
from modelhost.llm.output import THINK_OPEN, OutputSplitter
from modelhost.llm.params import SamplingParams
from modelhost.llm.protocols import openai, practicus
from modelhost.llm.protocols.common import collect, require_body
from modelhost.llm.protocols.openai import GenerationRequest, ResponseHeader
from modelhost.llm.protocols.openai_choices import (
    ChoiceState,
    Piece,
    chat_logprobs,
    chat_message,
    completion_logprobs,
)
from modelhost.llm.protocols.openai_stream import ChatChunks, CompletionChunks, sse_events
from modelhost.llm.protocols.openai_tools import check_forced_schemas, for_plain_template
from modelhost.llm.results import JSONResult, LLMResult, StreamResult
from modelhost.llm.stream import TokenStream
from modelhost.llm.structured import schema_grammar
from modelhost.llm.tool_calls import ToolSyntax, syntax_for

Handler = Callable[[Any], Awaitable[LLMResult]]


class LLMService:
    """``reasoning``: split ``<think>...</think>`` into ``reasoning_content`` for models
    whose chat template thinks (model.json ``"llm": {"reasoning": false}`` turns it off)."""

    def __init__(self, engine: GenerationEngine, model_name: str, reasoning: bool = True) -> None:
        self.model_name = model_name
        # vLLM's metric names (llm/metrics.py): every stream the engine returns is metered.
        self.metrics = LLMMetrics(model_name, engine)
        self.engine = MeteredEngine(engine, self.metrics)
        self._created = int(time.time())
        template = engine.backend.chat_template
        self._thinks = reasoning and THINK_OPEN in template
        self._takes_tools = "tools" in template
        self._syntax = syntax_for(template)
        openai_routes: dict[str, tuple[str, Handler]] = {
            "chat/completions": ("POST", self._chat),
            "completions": ("POST", self._completions),
            "models": ("GET", self._models),
            "tokenize": ("POST", self._tokenize),
            "detokenize": ("POST", self._detokenize),
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
        text = self._chat_text(req)
        params = self._tool_params(req)
        streams = await self.engine.generate_many(self.engine.backend.tokenize(text), params, req.n)
        splitters = [self._splitter(req, text) for _ in streams]
        states = [ChoiceState(i, sp) for i, sp in enumerate(splitters)]
        head = ResponseHeader.new("chatcmpl", self.model_name)
        want_logprobs = params.logprobs is not None
        if req.stream:
            shape = ChatChunks(head, req.include_usage, want_logprobs)
            return StreamResult(sse_events(streams, states, shape, head, req.include_usage))
        done = await asyncio.gather(*(_drain(s, st) for s, st in zip(streams, states, strict=True)))
        choices = [
            openai.chat_choice(
                st.index,
                chat_message(pieces),
                pieces[-1].finish_reason,
                chat_logprobs(st.logprobs) if want_logprobs else None,
            )
            for st, (pieces, _) in zip(states, done, strict=True)
        ]
        return JSONResult(200, openai.chat_response(head, choices, _usage(states, done)))

    async def _completions(self, body: Any) -> LLMResult:
        req = openai.parse_completion(body)
        streams = await self.engine.generate_many(self._prompt_tokens(req), req.params, req.n)
        states = [ChoiceState(i, None) for i in range(req.n)]
        head = ResponseHeader.new("cmpl", self.model_name)
        k = req.params.logprobs
        if req.stream:
            shape = CompletionChunks(head, req.include_usage, k)
            return StreamResult(sse_events(streams, states, shape, head, req.include_usage))
        done = await asyncio.gather(*(_drain(s, st) for s, st in zip(streams, states, strict=True)))
        choices = [
            openai.completion_choice(
                st.index,
                "".join(p.delta.content for p in pieces),
                pieces[-1].finish_reason,
                completion_logprobs(st.logprobs, 0, bool(k)) if k is not None else None,
            )
            for st, (pieces, _) in zip(states, done, strict=True)
        ]
        return JSONResult(200, openai.completion_response(head, choices, _usage(states, done)))

    async def _tokenize(self, body: Any) -> LLMResult:
        """llama-server's shape: ``{"content", "add_special"}`` → ``{"tokens"}``."""
        data = require_body(body)
        content, add_special = data.get("content"), data.get("add_special", False)
        if not isinstance(content, str):
            raise BadRequest("content: must be a string", param="content")
        if not isinstance(add_special, bool):
            raise BadRequest("add_special: must be a boolean", param="add_special")
        tokens = self.engine.backend.tokenize(content, special=add_special)
        return JSONResult(200, {"tokens": tokens})

    async def _detokenize(self, body: Any) -> LLMResult:
        """``{"tokens": [...]}`` → ``{"content": "..."}``."""
        tokens = require_body(body).get("tokens")
        if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
            raise BadRequest("tokens: must be a list of token ids", param="tokens")
        check_token_ids(tokens, self.engine.backend.vocab_size, "tokens")
        return JSONResult(200, {"content": self.engine.backend.detokenize(tokens)})

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

    def _prompt_tokens(self, req: GenerationRequest) -> list[int]:
        if isinstance(req.prompt, str):
            return self.engine.backend.tokenize(req.prompt)
        return req.prompt

    def _chat_text(self, req: GenerationRequest) -> str:
        """The prompt: tools through the template when it renders them, else described in
        a system message (earlier calls written in the model's syntax)."""
        backend = self.engine.backend
        tools = req.tools
        if self._takes_tools:
            specs = tools.tools if tools is not None else None
            return backend.render_chat(req.messages, tools=specs)
        has_calls = any("tool_calls" in m for m in req.messages)
        if tools is None and not has_calls:
            return backend.render_chat(req.messages)
        return backend.render_chat(for_plain_template(req.messages, tools, self._syntax))

    def _tool_params(self, req: GenerationRequest) -> SamplingParams:
        """A forced tool call (``required`` or a named function) is a grammar."""
        tools = req.tools
        if tools is None or tools.choice == "auto":
            return req.params
        if req.params.grammar is not None:
            raise BadRequest(
                "response_format: cannot be combined with a forced tool_choice",
                param="response_format",
            )
        check_forced_schemas(tools)
        call = schema_grammar(self._syntax.call_schema(tools.functions))
        return replace(req.params, grammar=self._syntax.grammar(call))

    def _splitter(self, req: GenerationRequest, prompt: str) -> OutputSplitter | None:
        syntax: ToolSyntax | None = self._syntax if req.tools is not None else None
        if syntax is None and not self._thinks:
            return None
        starts = self._thinks and prompt.rstrip().endswith(THINK_OPEN)
        return OutputSplitter(syntax, self._thinks, starts)

    def _chat_tokens(self, messages: list[dict[str, Any]]) -> list[int]:
        backend = self.engine.backend
        return backend.tokenize(backend.render_chat(messages))


def _error_type(body: dict[str, Any]) -> str:
    error = body.get("error")
    if not isinstance(error, dict):
        return "error"
    return str(error.get("type") or error.get("code") or "error")


PromptUse = tuple[int, int]
"""A choice's prompt tokens, and how many of them came from the prefix cache."""


async def _drain(stream: TokenStream, state: ChoiceState) -> tuple[list[Piece], PromptUse]:
    """A choice's pieces (as a stream would send them) and its prompt's token counts."""
    pieces: list[Piece] = []
    prompt: PromptUse = (0, 0)
    try:
        async for event in stream:
            prompt = (event.prompt_tokens, event.cached_tokens)
            piece = state.feed(event)
            if piece:
                pieces.append(piece)
    finally:
        await stream.aclose()
    return pieces, prompt


def _usage(states: list[ChoiceState], done: list[tuple[list[Piece], PromptUse]]) -> dict[str, Any]:
    """The prompt is computed (and counted) once, however many choices: the first one's."""
    prompt, cached = done[0][1] if done else (0, 0)
    return openai.usage(prompt, sum(s.completion_tokens for s in states), cached)


def _openai_error(exc: ModelhostError) -> JSONResult:
    return JSONResult(openai.error_status(exc), openai.error_object(exc), openai.error_headers(exc))


def _plain_error(exc: ModelhostError) -> JSONResult:
    body = {"error": {"type": exc.code, "message": exc.message}}
    return JSONResult(openai.error_status(exc), body, openai.error_headers(exc))
