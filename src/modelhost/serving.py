"""``prt.models.server``: an inference server next to your code, as Practicus AI documents it.

In a notebook (design time)::

    prt.models.server.start_serving(model="SmolLM2-135M-Instruct.Q4_1.gguf", options={...})
    client = OpenAI(base_url=prt.models.server.get_base_url() + "/v1", api_key="x")
    prt.models.server.get_status()      # "running"
    prt.models.server.stop()

In a deployed ``model.py`` (Practicus' "option 3" and proxy mode)::

    async def init(**kwargs):
        if not prt.models.server.initialized:
            prt.models.server.start_serving()     # PRT_SERVE_MODEL / _OPTIONS_B64 from "env"

    async def serve(**kwargs):
        return await prt.models.server.serve(**kwargs)

`start_serving` launches a local HTTP server on 127.0.0.1 and waits until its ``/health``
answers: a ``.py`` file runs as ``python FILE --port N`` (the tutorial's mock server), a
``.gguf`` file or a model folder runs the built-in engine (`modelhost.serving_app`; where
Practicus runs vLLM). Relative names are looked up in the current folder, then next to the
calling ``model.py``. Models are never downloaded: a hub id that is not a local folder is an
error. ``proxy_mode=True`` starts nothing: ``serve(proxy_base_url=..., proxy_token=...)``
forwards there instead.

`serve` forwards the request it is given (``http_request``: method, the sub-path below the
model URL, query, content type, body) to the local server or the proxy upstream and returns
the answer as a Starlette response: status and content type kept, event streams streamed
as they come. The client's own credentials never go upstream; ``proxy_token`` does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.responses import Response, StreamingResponse

from modelhost.errors import BadRequest, ModelNotReady, UpstreamUnavailable
from modelhost.worker.responses import GATEWAY_OWN_HEADERS

initialized = False  # Practicus' flag: start_serving succeeded and stop() was not called
_server: _Local | _ProxyMode | None = None
_client: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None
START_TIMEOUT_S = 600.0
TIMEOUT = httpx.Timeout(10.0, read=600.0)
_FORWARDED = ("content-type", "accept")
# Keywords the worker passes to hooks; never part of a request forwarded by serve(**kwargs).
_HOOK_KEYWORDS = frozenset({"model_meta", "df", "http_request", "sub_path", "payload_dict"})


@dataclass
class _Local:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, limit: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-limit:]
        return ""


@dataclass
class _ProxyMode:
    pass


def start_serving(
    model: str | None = None,
    options: dict[str, Any] | None = None,
    proxy_mode: bool = False,
    *,
    port: int | None = None,
    timeout_s: float = START_TIMEOUT_S,
    model_meta: Any = None,
) -> None:
    """Start the server (stopping one this process started before) and wait until ready."""
    global _server, initialized
    stop()
    if proxy_mode:
        _server, initialized = _ProxyMode(), True
        return
    name = model or os.environ.get("PRT_SERVE_MODEL")
    if not name:
        raise BadRequest(
            "start_serving: name the model (model='file.gguf', a model folder or a .py server) "
            'or set PRT_SERVE_MODEL in model.json\'s "env"'
        )
    if options is None:
        options = _env_options()
    path = _locate(name, _caller_dir(), model_meta)
    chosen = port or _free_port()
    _server = _launch(path, options, chosen)
    _wait_ready(_server, timeout_s)
    initialized = True


def get_status() -> str:
    """``"running"``, ``"stopped"`` or ``"error"`` (the server process has exited)."""
    if isinstance(_server, _ProxyMode):
        return "running"
    if _server is None:
        return "stopped"
    return "running" if _server.proc.poll() is None else "error"


def get_base_url() -> str | None:
    """``http://127.0.0.1:PORT`` of the running local server (append ``/v1`` for OpenAI)."""
    if isinstance(_server, _Local) and _server.proc.poll() is None:
        return _server.base_url
    return None


def get_logs() -> str:
    """The end of the local server's output (for a server that failed to start)."""
    return _server.log_tail() if isinstance(_server, _Local) else ""


def stop() -> None:
    """Stop the local server (SIGTERM, then SIGKILL after 10 s); no-op when none runs."""
    global _server, initialized
    server, _server, initialized = _server, None, False
    if isinstance(server, _Local) and server.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()


stop_serving = stop


async def serve(
    http_request: Any = None,
    *,
    proxy_base_url: str | None = None,
    proxy_token: str | None = None,
    sub_path: str | None = None,
    payload_dict: Any = None,
    **_kwargs: Any,
) -> Response:
    """Forward one request to the local server or, in proxy mode, to ``proxy_base_url``."""
    if isinstance(_server, _ProxyMode) or proxy_base_url:
        if not proxy_base_url:
            raise BadRequest("proxy mode: serve(...) needs proxy_base_url='https://...'")
        base, token = proxy_base_url, proxy_token
    elif isinstance(_server, _Local) and _server.proc.poll() is None:
        base, token = _server.base_url, None
    else:
        raise ModelNotReady("the model server is not running: call start_serving() in init()")
    if http_request is None and payload_dict is None:
        # serve(**payload_dict): the request's fields given as keywords (model_meta and the
        # like, which a serve hook may pass along, are not part of it)
        payload_dict = {k: v for k, v in _kwargs.items() if k not in _HOOK_KEYWORDS} or None
    request = await _Outgoing.of(http_request, sub_path, payload_dict)
    return await _forward(base, token, request)


# --- forwarding ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outgoing:
    method: str
    path: str  # below the base URL, with the query
    headers: dict[str, str]
    body: bytes

    @classmethod
    async def of(cls, http_request: Any, sub_path: str | None, payload: Any) -> _Outgoing:
        if http_request is None:  # called from predict(payload_dict): an OpenAI chat request
            path = sub_path or "v1/chat/completions"
            body = json.dumps(payload or {}).encode()
            return cls("POST", path, {"content-type": "application/json"}, body)
        path = sub_path if sub_path is not None else getattr(http_request, "sub_path", "")
        query = http_request.url.query
        headers = {k: v for k in _FORWARDED if (v := http_request.headers.get(k))}
        body = await http_request.body()
        return cls(http_request.method, path + (f"?{query}" if query else ""), headers, body)


async def _forward(base: str, token: str | None, req: _Outgoing) -> Response:
    headers = dict(req.headers)
    if token:
        headers["authorization"] = f"Bearer {token}"
    url = base.rstrip("/") + "/" + req.path.lstrip("/")
    client = _http()
    try:
        upstream = await client.send(
            client.build_request(req.method, url, headers=headers, content=req.body), stream=True
        )
    except httpx.TransportError as exc:  # refused, reset, timed out, name not found
        origin = httpx.URL(base).copy_with(userinfo=b"", query=None)  # no credentials shown
        raise UpstreamUnavailable(
            f"the model's server at {origin} did not answer ({type(exc).__name__}: {exc}); "
            "check that it runs and that proxy_base_url is right"
        ) from exc
    content_type = upstream.headers.get("content-type", "application/octet-stream")
    kept = {k: v for k, v in upstream.headers.items() if k.lower() not in GATEWAY_OWN_HEADERS}
    if content_type.startswith("text/event-stream"):
        return StreamingResponse(
            _relay(upstream), upstream.status_code, kept, media_type=content_type
        )
    try:
        body = await upstream.aread()
    finally:
        await upstream.aclose()
    return Response(body, upstream.status_code, kept, media_type=content_type)


async def _relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    finally:
        await upstream.aclose()


def _http() -> httpx.AsyncClient:
    """One pooled client per event loop (a notebook may run several, one after another)."""
    global _client
    loop = asyncio.get_running_loop()
    if _client is None or _client[0] is not loop:
        _client = (loop, httpx.AsyncClient(timeout=TIMEOUT))
    return _client[1]


# --- the local server process -------------------------------------------------------------


def _env_options() -> dict[str, Any]:
    raw = os.environ.get("PRT_SERVE_MODEL_OPTIONS_B64", "").strip()
    if not raw:
        return {}
    try:
        options = json.loads(base64.b64decode(raw))
    except ValueError as exc:
        raise BadRequest(f"PRT_SERVE_MODEL_OPTIONS_B64 is not base64 of JSON: {exc}") from None
    if not isinstance(options, dict):
        raise BadRequest("PRT_SERVE_MODEL_OPTIONS_B64 must encode a JSON object")
    return options


def _caller_dir() -> Path | None:
    """The folder of the code that called start_serving (a deployed model.py's folder)."""
    frame = inspect.currentframe()
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    path = Path(frame.f_code.co_filename) if frame is not None else None
    return path.parent if path is not None and path.is_file() else None


def _locate(name: str, caller_dir: Path | None, model_meta: Any) -> Path:
    folders = [Path.cwd()]
    if caller_dir is not None:
        folders.append(caller_dir)
    for attr in ("model_dir", "cache_dir"):
        if getattr(model_meta, attr, None):
            folders.append(Path(getattr(model_meta, attr)))
    candidate = Path(name).expanduser()
    tried = [candidate] if candidate.is_absolute() else [f / candidate for f in folders]
    for path in tried:
        if path.exists():
            return path.resolve()
    raise BadRequest(
        f"start_serving: {name!r} is not a local file or folder (looked in "
        f"{', '.join(str(p.parent) for p in tried)}); modelhost never downloads models: "
        "name a .gguf file, a model folder or a .py server"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(path: Path, options: dict[str, Any], port: int) -> _Local:
    if path.suffix == ".py":
        argv = [sys.executable, str(path), "--port", str(port)]
    else:
        argv = [sys.executable, "-m", "modelhost.serving_app", "--model", str(path),
                "--port", str(port), "--options", json.dumps(options)]  # fmt: skip
    fd, log_name = tempfile.mkstemp(prefix="prt-model-server-", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=path.parent,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stop() signals its whole group
            preexec_fn=_die_with_parent,
        )
    return _Local(proc, port, Path(log_name))


def _die_with_parent() -> None:
    """In the child: SIGTERM when the process that started it dies (no orphaned server)."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _wait_ready(server: _Local, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"the model server exited with code {server.proc.returncode}:\n{server.log_tail()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.base_url + "/health", timeout=2).is_success:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the model server did not answer /health in {timeout_s:.0f} s")
