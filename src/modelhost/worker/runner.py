"""Runs a loaded model's hooks for the worker: `init` once, `predict` per request, `cleanup`.

A runner turns a `WorkRequest` into a `Reply` (one body) or a `StreamReply` (chunks). The
worker's socket server knows nothing about models; the model knows nothing about sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelhost.errors import ModelhostError, NotFound, PredictFailed
from modelhost.worker.calling import CallPlan, is_csv, predict_error
from modelhost.worker.codec import encode_chunk, encode_result
from modelhost.worker.loader import LoadedModel
from modelhost.worker.meta import ModelMeta
from modelhost.worker.responses import is_response, to_reply


@dataclass(frozen=True, slots=True)
class WorkRequest:
    method: str
    subpath: str
    query: str
    content_type: str
    body: bytes
    # The client's request headers, names lower-case (repeated ones joined with ", "), less
    # its credentials (authorization, cookie) and the body's framing (content-length,
    # content-encoding: the body here is already decoded).
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    body: bytes
    content_type: str = "application/json"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamReply:
    chunks: AsyncIterator[bytes]
    content_type: str = "text/plain; charset=utf-8"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


class Runner(Protocol):
    hooks: list[str]

    async def start(self) -> None: ...

    async def handle(self, request: WorkRequest) -> Reply | StreamReply: ...

    async def stop(self) -> None: ...


class PythonModelRunner:
    """A user's model.py. Sync hooks run in a thread pool; async hooks on the worker's loop."""

    def __init__(self, model: LoadedModel, meta: ModelMeta, threads: int = 4) -> None:
        self.model = model
        self.meta = meta
        self.hooks = model.hooks
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="predict")
        self.threads = threads
        # Sync calls whose caller gave up (deadline, client gone) while their thread runs on:
        # a thread cannot be stopped, so it is abandoned and counted until it returns.
        self.abandoned = 0
        self._predict_kind = _kind(model.predict)
        self._plan = CallPlan.of(model.predict)  # what predict asks for (worker/calling.py)

    async def start(self) -> None:
        if self.model.init is not None:
            await self._call(self.model.init, model_meta=self.meta)

    async def stop(self) -> None:
        if self.model.cleanup is not None:
            await self._call(self.model.cleanup, model_meta=self.meta)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def handle(self, request: WorkRequest) -> Reply | StreamReply:
        if request.subpath and not self._plan.sees_sub_path:
            raise NotFound(
                f"this model serves its URL only, not '{request.subpath}': its predict takes "
                "no sub_path (add a sub_path or **kwargs parameter to serve sub-paths)"
            )
        args, kwargs = self._plan.arguments(request, self.meta)
        if self._predict_kind == "asyncgen":
            return StreamReply(_stream(self.model.predict(*args, **kwargs)))
        try:
            if self._predict_kind == "async":
                result = await self.model.predict(*args, **kwargs)
            else:
                result = await self._call(self.model.predict, *args, **kwargs)
        except ModelhostError:  # ours (e.g. prt.models.server's 502): its status is kept
            raise
        except Exception as exc:
            raise predict_error(exc) from exc
        if inspect.isasyncgen(result):
            return StreamReply(_stream(result))
        if is_response(result):  # a Starlette/FastAPI response: status and headers kept
            return to_reply(result)
        try:
            body, content_type = encode_result(result, csv=_wants_csv(request))
        except TypeError as exc:
            raise PredictFailed(str(exc)) from exc
        return Reply(body, content_type)

    @property
    def wedged(self) -> str:
        """Why this runner can serve no more sync calls ("" = it can): every thread of its
        pool is held by an abandoned call."""
        if self.abandoned < self.threads:
            return ""
        return (
            f"all {self.threads} predict threads are stuck in calls abandoned past their "
            "deadline (MODELHOST_PREDICT_TIMEOUT_S, or the deployment's predict_timeout_s) "
            "or by their clients"
        )

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        # in the request's context: what predict logs names the request (`logs.REQUEST_ID`)
        running = self._pool.submit(contextvars.copy_context().run, fn, *args, **kwargs)
        try:
            result = await asyncio.wrap_future(running, loop=loop)
        except asyncio.CancelledError:
            if not running.cancel():  # started already: its thread goes on, abandoned
                self.abandoned += 1
                running.add_done_callback(lambda _f: _call_soon(loop, self._returned))
            raise
        if inspect.isawaitable(result):
            return await result
        return result

    def _returned(self) -> None:
        self.abandoned -= 1


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """From a pool thread: run `callback` on the worker's loop (unless it is closed)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


def _wants_csv(request: WorkRequest) -> bool:
    """A DataFrame answers as CSV to a CSV request, or to one that accepts CSV first."""
    if is_csv(request.content_type):
        return True
    accept = request.headers.get("accept")
    return accept is not None and is_csv(accept.split(",", 1)[0])


def _kind(fn: Callable[..., Any]) -> str:
    if inspect.isasyncgenfunction(fn):
        return "asyncgen"
    if inspect.iscoroutinefunction(fn):
        return "async"
    return "sync"


async def _stream(gen: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    try:
        async for item in gen:
            yield encode_chunk(item)
    except ModelhostError:
        raise
    except Exception as exc:
        raise PredictFailed(f"predict raised {type(exc).__name__} while streaming: {exc}") from exc
