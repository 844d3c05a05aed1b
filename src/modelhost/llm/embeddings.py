"""Embedding models: OpenAI's ``embeddings`` endpoint and Practicus' ``PrtEmbeddingsRequest``.

    {"llm": {"model": "all-MiniLM-L6-v2/", "embedding": true}}      (or "task": "embeddings")

`EmbeddingService` answers ``embeddings`` and ``v1/embeddings`` (POST), ``models`` and
``v1/models`` (GET), and the model URL itself (a ``PrtEmbeddingsRequest``, answered as a
``PrtEmbeddingsResponse``: the same body). Requests follow OpenAI: ``input`` is a string, a
list of strings, token ids or lists of token ids; ``encoding_format`` ``float`` (default) or
``base64`` (little-endian float32, what the ``openai`` SDK asks for); ``dimensions`` only at
the model's own size; ``model`` and ``user`` are accepted and ignored (one model per URL);
any other field is a 400 naming it. An input longer than the model's window is a 400
naming it, unless model.json sets ``"truncate": true``.

One thread runs the model (`Batcher`): the requests that arrive while it works are embedded
together in its next pass, up to ``max_batch`` inputs (model.json, default 64). Always the
same thread: ggml's (and torch's) OpenMP workers belong to the thread that starts a pass,
and a second live thread that had run one left libgomp spinning only briefly at the
barriers (more OpenMP threads than cores), every later pass much slower (measured with
llama.cpp: ~40%).
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelhost.errors import BadRequest, MethodNotAllowed, ModelhostError, NotFound
from modelhost.llm.embedding_backends import Embedder, Text, load_embedder
from modelhost.llm.protocols import openai
from modelhost.llm.results import JSONResult, LLMResult

FIELDS = frozenset({"input", "model", "user", "encoding_format", "dimensions"})
ENCODINGS = ("float", "base64")
Handler = Callable[[Any], Awaitable[LLMResult]]


def is_embedding_model(config: dict[str, Any]) -> bool:
    """Whether model.json's ``llm`` section declares an embedding model."""
    return bool(config.get("embedding")) or config.get("task") in ("embeddings", "embedding")


def build_embedding_service(model_path: Path, name: str, options: dict[str, Any]) -> Any:
    """An `EmbeddingService` over the model at ``model_path`` (blocking: loads weights)."""
    batcher = Batcher(load_embedder(model_path, options), int(options.get("max_batch", 64)))
    return EmbeddingService(batcher, name)


# --- batching ------------------------------------------------------------------------------

Vectors = tuple[list[list[float]], list[int]]  # one vector and one token count per input


@dataclass
class _Job:
    inputs: list[Text]
    done: asyncio.Future[Vectors]


class Batcher:
    """Runs the embedder on one thread, one batch at a time: every request waiting when a
    pass starts joins it. An input refused by `prepare` fails its own request only."""

    def __init__(self, embedder: Embedder, max_batch: int = 64) -> None:
        self.embedder = embedder
        self.max_batch = max(1, max_batch)
        self._waiting: list[_Job] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="embedder")

    async def embed(self, inputs: list[Text]) -> Vectors:
        loop = asyncio.get_running_loop()
        job = _Job(inputs, loop.create_future())
        self._waiting.append(job)
        if not self._running:
            self._running = True
            self._task = loop.create_task(self._drain())  # referenced: not collected mid-run
        return await job.done

    async def _drain(self) -> None:
        try:
            while self._waiting:
                jobs = self._take()
                loop = asyncio.get_running_loop()
                outcomes = await loop.run_in_executor(self._thread, self._run, jobs)
                for job, outcome in zip(jobs, outcomes, strict=True):
                    if job.done.done():  # its client went away
                        continue
                    if isinstance(outcome, BaseException):
                        job.done.set_exception(outcome)
                    else:
                        job.done.set_result(outcome)
        finally:
            self._running = False

    def _take(self) -> list[_Job]:
        jobs = [self._waiting.pop(0)]
        total = len(jobs[0].inputs)
        while self._waiting and total + len(self._waiting[0].inputs) <= self.max_batch:
            total += len(self._waiting[0].inputs)
            jobs.append(self._waiting.pop(0))
        return jobs

    def _run(self, jobs: list[_Job]) -> list[Vectors | Exception]:
        """On the embedding thread: prepare each request, then one pass over all of them."""
        outcomes: list[Vectors | Exception] = []
        prepared: list[Any] = []
        for job in jobs:
            try:
                items, counts = self.embedder.prepare(job.inputs)
            except Exception as exc:
                outcomes.append(exc)
                continue
            outcomes.append(([], counts))
            prepared.extend(items)
        try:
            vectors = self.embedder.embed(prepared) if prepared else []
        except Exception as exc:
            return [o if isinstance(o, Exception) else exc for o in outcomes]
        start = 0
        for i, outcome in enumerate(outcomes):
            if not isinstance(outcome, Exception):
                end = start + len(outcome[1])
                outcomes[i] = (vectors[start:end], outcome[1])
                start = end
        return outcomes

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.embedder.close()


# --- protocol ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    inputs: list[Text]
    base64: bool


def parse(body: object, dimensions: int) -> EmbeddingsRequest:
    if not isinstance(body, dict):
        raise BadRequest('send a JSON object like {"input": ["text", ...]}')
    for name, value in body.items():
        if name not in FIELDS and value is not None:
            raise BadRequest(
                f"{name}: unknown or unsupported field; embeddings take "
                "input, encoding_format, dimensions, model and user",
                param=name,
            )
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        raise BadRequest("encoding_format must be 'float' or 'base64'", param="encoding_format")
    wanted = body.get("dimensions")
    if wanted is not None and wanted != dimensions:
        raise BadRequest(
            f"dimensions: this model's vectors have {dimensions} dimensions and cannot be "
            "shortened; leave it out",
            param="dimensions",
        )
    return EmbeddingsRequest(_inputs(body.get("input")), encoding == "base64")


def _inputs(value: object) -> list[Text]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return list(value)
        if all(_is_id(v) for v in value):
            return [list(value)]
        if all(isinstance(v, list) and v and all(_is_id(i) for i in v) for v in value):
            return [list(v) for v in value]
    raise BadRequest(
        "input must be a string, a non-empty list of strings, token ids (a list of integers) "
        "or a list of token id lists",
        param="input",
    )


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def encode(vector: list[float], as_base64: bool) -> list[float] | str:
    if not as_base64:
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def response_body(req: EmbeddingsRequest, result: Vectors, model: str) -> dict[str, Any]:
    vectors, counts = result
    tokens = sum(counts)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": encode(v, req.base64), "index": i}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# --- service -------------------------------------------------------------------------------


class EmbeddingService:
    """`LLMService`'s counterpart for an embedding model (same ``handle`` contract)."""

    def __init__(self, batcher: Batcher, model_name: str) -> None:
        self.engine = batcher  # LLMRunner closes `engine` when the version stops
        self.model_name = model_name
        self._created = int(time.time())
        routes: dict[str, tuple[str, Handler]] = {
            "embeddings": ("POST", self._embeddings),
            "models": ("GET", self._models),
        }
        self._routes = {**routes, **{f"v1/{k}": v for k, v in routes.items()}}

    async def handle(self, method: str, subpath: str, body: dict[str, Any] | None) -> LLMResult:
        path = subpath.strip("/")
        if not path:
            return await self._guard(self._embeddings, body, openai_errors=False)
        route = self._routes.get(path)
        if route is None:
            return _error(
                NotFound(f"no such endpoint: {path} (an embedding model serves v1/embeddings)"),
                openai_errors=True,
            )
        expected, handler = route
        if method.upper() != expected:
            return _error(MethodNotAllowed(f"{path} accepts {expected} only", expected), True)
        return await self._guard(handler, body, openai_errors=True)

    async def _guard(self, handler: Handler, body: Any, *, openai_errors: bool) -> LLMResult:
        try:
            return await handler(body)
        except ModelhostError as exc:
            return _error(exc, openai_errors)

    async def _embeddings(self, body: Any) -> LLMResult:
        req = parse(body, self.engine.embedder.dimensions)
        result = await self.engine.embed(req.inputs)
        return JSONResult(200, response_body(req, result, self.model_name))

    async def _models(self, _body: Any) -> LLMResult:
        return JSONResult(200, openai.models_response(self.model_name, self._created))


def _error(exc: ModelhostError, openai_errors: bool) -> JSONResult:
    if openai_errors:
        body = openai.error_object(exc)
    else:
        body = {"error": {"type": exc.code, "message": exc.message}}
    return JSONResult(openai.error_status(exc), body, openai.error_headers(exc))
