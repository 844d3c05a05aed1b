"""Loading a user's `model.py` in the worker: imported under its own module name, its hooks'
signatures validated, each error naming the file, the hook and the fix. (The cheap check at
deploy, without importing anything of the user's, is `wire/model_folder.check_folder`.)
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from modelhost.errors import InvalidModelFolder
from modelhost.wire.model_folder import HOOKS, SIGNATURES, hooks_in_source


@dataclass(frozen=True)
class LoadedModel:
    """The hooks of an imported model.py; `predict` may be sync, async or an async generator."""

    module: ModuleType
    predict: Callable[..., Any]
    init: Callable[..., Any] | None
    cleanup: Callable[..., Any] | None
    serve: Callable[..., Any] | None = None  # Practicus' serve(**kwargs); predict wraps it

    @property
    def hooks(self) -> list[str]:
        return [h for h in HOOKS if getattr(self, h) is not None]


def load_model(folder: Path, module_name: str) -> LoadedModel:
    """Import `folder/model.py` as `module_name` and validate its hooks."""
    path = folder / "model.py"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InvalidModelFolder(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError:
        hooks_in_source(path.read_text(encoding="utf-8"), "model.py")
        raise
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        raise InvalidModelFolder(
            f"model.py failed while importing: {type(exc).__name__}: {exc}{_user_line(exc, path)}; "
            "fix the import (is the package installed in the worker's environment?)"
        ) from exc
    hooks = {name: getattr(module, name, None) for name in HOOKS}
    for name, fn in hooks.items():
        if fn is not None and not callable(fn):
            raise InvalidModelFolder(
                f"model.py: `{name}` is not a function; define `{SIGNATURES[name]}`"
            )
    predict, serve = hooks["predict"], hooks["serve"]
    if predict is None:
        if serve is None:
            raise InvalidModelFolder(
                f"model.py defines no `predict` hook; add `{SIGNATURES['predict']}`"
            )
        _check_takes_kwargs(serve)
        predict = serve_as_predict(serve)
    _check_takes_payload(predict)
    for name in ("init", "cleanup"):
        hook = hooks[name]
        if hook is not None:
            _check_takes_model_meta(name, hook)
    return LoadedModel(module, predict, hooks["init"], hooks["cleanup"], serve)


def serve_as_predict(serve: Callable[..., Any]) -> Callable[..., Any]:
    """Practicus' ``serve(**kwargs)`` hook (used when there is no ``predict``): it gets the
    request as keywords (``http_request``, ``sub_path``, ``model_meta``) for every path under
    the model URL, and answers with what it returns (``prt.models.server.serve`` returns a
    Starlette response, streamed when the upstream streams)."""

    async def predict(http_request: Any, sub_path: str = "", model_meta: Any = None) -> Any:
        result = serve(http_request=http_request, sub_path=sub_path, model_meta=model_meta)
        return await result if inspect.isawaitable(result) else result

    return predict


def _check_takes_kwargs(fn: Callable[..., Any]) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    raise InvalidModelFolder(
        f"model.py: `serve{sig}` cannot take the request as keywords; "
        f"define `{SIGNATURES['serve']}`"
    )


def _check_takes_payload(fn: Callable[..., Any]) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = list(sig.parameters.values())
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    if not positional:
        raise InvalidModelFolder(
            f"model.py: `predict{sig}` takes no payload argument; define `{SIGNATURES['predict']}`"
        )


def _check_takes_model_meta(name: str, fn: Callable[..., Any]) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if "model_meta" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    raise InvalidModelFolder(
        f"model.py: `{name}{sig}` cannot take model_meta=...; define `{SIGNATURES[name]}`"
    )


def _user_line(exc: BaseException, path: Path) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    return f" (model.py, line {frames[-1].lineno})" if frames else ""
