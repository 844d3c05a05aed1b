"""Serving a model with the built-in LLM engine (model.json's "llm" section).

    {"llm": {"model": "SmolLM2-135M-Instruct.Q4_1.gguf", "max_seqs": 32},
     "download_files_from": "cache/smollm2-135m-instruct/"}

The model file is looked up in the version folder, then in the folder `download_files_from`
filled. Every protocol of `modelhost.llm.service` is served under the model URL. When the
folder also has a model.py, its `predict` answers the model URL itself and gets the engine as
`model_meta.llm`; the OpenAI routes stay with the engine.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from modelhost.errors import BadRequest, InvalidModelFolder
from modelhost.runtime.codec import decode_payload
from modelhost.runtime.meta import ModelMeta
from modelhost.runtime.runner import Reply, Runner, StreamReply, WorkRequest


def _model_path(meta: ModelMeta, name: str) -> Path:
    for folder in (Path(meta.model_dir), Path(meta.cache_dir)):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    raise InvalidModelFolder(
        f"model.json names llm model {name!r} but no such file is in the model folder or in "
        f"{meta.cache_dir}; upload it under the download_files_from prefix"
    )


ENGINE_OPTIONS = ("kv_capacity", "seq_ctx", "max_batch_tokens", "n_threads")


def build_service(model_path: Path, name: str, options: dict[str, Any]) -> Any:
    """An `LLMService` over a llama.cpp engine for one GGUF file (blocking: loads weights)."""
    from modelhost.llm.engine import LLMEngine
    from modelhost.llm.llamacpp import LlamaCppBackend
    from modelhost.llm.service import LLMService

    max_seqs = int(options.get("max_seqs", 32))
    extra = {key: int(options[key]) for key in ENGINE_OPTIONS if key in options}
    backend = LlamaCppBackend(model_path, max_seqs=max_seqs, **extra)
    engine = LLMEngine(backend, max_seqs, int(options.get("max_queue", 64)))
    return LLMService(engine, name)


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
            raise InvalidModelFolder('model.json: "llm" needs "model": "<file.gguf>"')
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
