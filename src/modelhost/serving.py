"""LLM server mode inside a model.py, as Practicus' `prt.models.server` offers it.

    import practicuscore as prt

    async def init(model_meta=None, *args, **kwargs):
        prt.models.server.start_serving(model="SmolLM2-135M-Instruct.Q4_1.gguf",
                                        model_meta=model_meta)   # or base_url=..., api_key=...

    async def predict(payload_dict: dict, **kwargs):
        return await prt.models.server.serve(**payload_dict)

`start_serving` either loads a GGUF into the built-in engine (continuous batching) or, given
`base_url`, proxies to an external OpenAI-compatible server with its own key. `serve` takes an
OpenAI chat request (`messages`, ...), a PrtLangRequest or `{"user_prompt": ...}` and returns
the answer; with `stream: true` it returns an async iterator of SSE chunks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from modelhost.errors import BadRequest, ModelNotReady, PredictFailed, TooManyRequests

_state: _Local | _Proxy | None = None


@dataclass
class _Local:
    service: Any

    async def call(self, payload: dict[str, Any]) -> Any:
        path = "v1/chat/completions" if _is_openai(payload) else ""
        result = await self.service.handle("POST", path, payload)
        if hasattr(result, "chunks"):
            return result.chunks
        if result.status >= 400:
            raise _error(result.status, result.body)
        return result.body


@dataclass
class _Proxy:
    base_url: str
    api_key: str | None
    timeout: float = 600.0

    async def call(self, payload: dict[str, Any]) -> Any:
        if not _is_openai(payload):
            raise BadRequest("proxy mode forwards OpenAI chat requests: send 'messages'")
        url = self.base_url.rstrip("/") + "/chat/completions"
        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        if payload.get("stream"):
            return _proxy_stream(url, headers, payload, self.timeout)
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            r = await client.post(url, json=payload, headers=headers)
        if r.status_code >= 400:
            raise _error(r.status_code, _json_or_text(r))
        return r.json()


def start_serving(
    model: str | None = None,
    options: dict[str, Any] | None = None,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    model_meta: Any = None,
) -> None:
    """Load `model` (a GGUF path, absolute or relative to the model's cache dir) into the
    built-in engine, or proxy to `base_url`. Call it from `init`."""
    global _state
    if base_url:
        _state = _Proxy(base_url, api_key)
        return
    if not model:
        raise BadRequest("start_serving needs model='<file.gguf>' or base_url='https://...'")
    path = Path(model)
    if not path.is_absolute() and model_meta is not None:
        for folder in (model_meta.cache_dir, model_meta.model_dir):
            if (Path(folder) / model).is_file():
                path = Path(folder) / model
                break
    if not path.is_file():
        raise BadRequest(f"start_serving: model file {model!r} not found (looked in the cache dir)")
    from modelhost.runtime.llm_runner import build_service

    name = getattr(model_meta, "name", None) or path.stem
    _state = _Local(build_service(path, name, dict(options or {})))


async def serve(**payload: Any) -> Any:
    """Answer one request with what `start_serving` set up."""
    if _state is None:
        raise ModelNotReady("call prt.models.server.start_serving(...) in init() first")
    return await _state.call(payload)


def stop_serving() -> None:
    global _state
    if isinstance(_state, _Local):
        _state.service.engine.close()
    _state = None


def _is_openai(payload: dict[str, Any]) -> bool:
    return (
        "messages" in payload and "lang_model_kwargs" not in payload and "streaming" not in payload
    )


async def _proxy_stream(
    url: str, headers: dict[str, str], payload: dict[str, Any], timeout: float
) -> AsyncIterator[bytes]:
    async with (
        httpx.AsyncClient(timeout=timeout) as client,
        client.stream("POST", url, json=payload, headers=headers) as r,
    ):
        if r.status_code >= 400:
            await r.aread()
            raise _error(r.status_code, _json_or_text(r))
        async for chunk in r.aiter_raw():
            yield chunk


def _json_or_text(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return r.text


def _error(status: int, body: Any) -> Exception:
    message = body
    if isinstance(body, dict):
        err = body.get("error", body)
        message = err.get("message", err) if isinstance(err, dict) else err
    text = f"LLM server answered {status}: {message}"
    if status == 429:
        return TooManyRequests(text)
    if 400 <= status < 500:
        return BadRequest(text)
    return PredictFailed(text)
