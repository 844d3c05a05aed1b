"""Serving a model with the built-in LLM engine (model.json's "llm" section).

    {"llm": {"model": "SmolLM2-135M-Instruct.Q4_1.gguf", "max_seqs": 32},
     "download_files_from": "cache/smollm2-135m-instruct/"}

``"backend"`` picks the engine and the other keys set it up (`modelhost.llm.engines` lists
them: ``max_seqs``, ``max_queue``, ``seq_ctx``, ``threads``, ``threads_batch``, ...). The
model file or folder is looked up in the version folder, then in the folder
`download_files_from` filled. Every protocol of
`modelhost.llm.service` is served under the model URL. When the folder also has a model.py,
its `predict` answers the model URL itself and gets the engine as `model_meta.llm`; the
OpenAI routes stay with the engine.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from modelhost.errors import BadRequest, InvalidModelFolder
from modelhost.llm.engines import build_engine
from modelhost.wire.model_folder import check_llm_model, resolve_inside
from modelhost.worker.codec import decode_payload
from modelhost.worker.meta import ModelMeta
from modelhost.worker.runner import Reply, Runner, StreamReply, WorkRequest


def _model_path(meta: ModelMeta, name: str) -> Path:
    """`name` in the model folder or the cache dir; never a path that leaves them."""
    check_llm_model(name)
    for folder in (Path(meta.model_dir), Path(meta.cache_dir)):
        candidate = folder / name
        if candidate.is_file() or candidate.is_dir():
            return resolve_inside(folder, name, "llm.model")
    raise InvalidModelFolder(
        f"model.json names llm model {name!r} but no such file or folder is in the model "
        f"folder or in {meta.cache_dir}; upload it under the download_files_from prefix"
    )


def build_service(model_path: Path, name: str, options: dict[str, Any]) -> Any:
    """An `LLMService` over the engine `modelhost.llm.engines` picks (blocking: loads weights); an
    `EmbeddingService` for an embedding model (``"embedding": true``)."""
    from modelhost.llm.embeddings import build_embedding_service, is_embedding_model
    from modelhost.llm.service import LLMService

    if is_embedding_model(options):
        return build_embedding_service(model_path, name, options)

    engine = build_engine(model_path, options)
    # "reasoning": false keeps <think>...</think> in the content (no reasoning_content split)
    return LLMService(engine, name, reasoning=options.get("reasoning") is not False)


class LLMRunner:
    def __init__(self, meta: ModelMeta, config: dict[str, Any]) -> None:
        self.meta = meta
        self.config = config
        self.hooks = ["llm"]
        self.service: Any = None
        self.engine: Any = None

    async def start(self) -> None:
        self.service = await asyncio.to_thread(self._build)

    def _build(self) -> Any:
        cfg = self.config
        if not isinstance(cfg.get("model"), str):
            raise InvalidModelFolder(
                'model.json: "llm" needs "model": "<file.gguf or HF model folder>"'
            )
        name = str(cfg.get("served_name") or self.meta.name)
        self.service = build_service(_model_path(self.meta, cfg["model"]), name, cfg)
        self.engine = self.service.engine
        return self.service

    async def handle(self, request: WorkRequest) -> Reply | StreamReply:
        body = decode_payload(request.body, request.content_type) if request.body else None
        if body is not None and not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        result = await self.service.handle(request.method, request.subpath, body)
        if hasattr(result, "chunks"):
            return StreamReply(result.chunks, result.content_type, result.status, result.headers)
        return Reply(orjson.dumps(result.body), "application/json", result.status, result.headers)

    async def stop(self) -> None:
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)


class LLMWithModelRunner:
    """model.py on top of the engine: predict answers the model URL, v1/... the engine."""

    def __init__(self, llm: LLMRunner, model: Runner) -> None:
        self.llm = llm
        self.model = model
        self.hooks = [*model.hooks, "llm"]

    @property
    def wedged(self) -> str:
        """The model.py runner's (its sync predict may have used up its threads)."""
        return str(getattr(self.model, "wedged", ""))

    async def start(self) -> None:
        await self.llm.start()
        model_meta = getattr(self.model, "meta", None)
        if isinstance(model_meta, ModelMeta):
            self.model.meta = replace(model_meta, llm=self.llm.service)  # type: ignore[attr-defined]
        await self.model.start()

    async def handle(self, request: WorkRequest) -> Reply | StreamReply:
        if request.subpath:
            return await self.llm.handle(request)
        return await self.model.handle(request)

    async def stop(self) -> None:
        await self.model.stop()
        await self.llm.stop()


async def build_llm_runner(meta: ModelMeta) -> LLMRunner:
    config = meta.model_json.get("llm")
    if not isinstance(config, dict):
        raise InvalidModelFolder('model.json: "llm" must be an object like {"model": "x.gguf"}')
    return LLMRunner(meta, config)
