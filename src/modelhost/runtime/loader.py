"""Loading a user's `model.py`, and checking its contract before anything runs.

Two checks, both naming the file, the hook and the fix:
- `check_folder` (at deploy, in the gateway): model.json parses, model.py compiles and
  defines `predict` — cheap, imports nothing of the user's.
- `load_model` (in the worker): imports model.py under its own module name and validates
  the hooks' signatures.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from modelhost.errors import InvalidModelFolder
from modelhost.runtime.worker_env import model_env

HOOKS = ("init", "predict", "serve", "cleanup")
_SIGNATURES = {
    "init": "async def init(model_meta=None, *args, **kwargs)",
    "predict": "async def predict(payload_dict: dict, **kwargs)",
    "serve": "async def serve(**kwargs)",
    "cleanup": "async def cleanup(model_meta=None, *args, **kwargs)",
}


@dataclass(frozen=True)
class FolderCheck:
    model_json: dict[str, Any]
    hooks: list[str]
    has_model_py: bool


def read_model_json(folder: Path) -> dict[str, Any]:
    path = folder / "model.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except json.JSONDecodeError as exc:
        raise InvalidModelFolder(
            f"model.json, line {exc.lineno}: not valid JSON ({exc.msg}); fix it and deploy again"
        ) from None
    if not isinstance(data, dict):
        raise InvalidModelFolder(
            'model.json must hold a JSON object, e.g. {"download_files_from": "cache/x/"}'
        )
    check_model_json(data)
    return data


# --- model.json path rules ------------------------------------------------------------
# Checked at deploy (a violation is a 400) and again in the worker before it touches the
# filesystem (a violation fails the version), so a registry row written before these rules,
# or by hand, cannot reach outside either.

PLATFORM_KEY_SEGMENT = "_modelhost"  # the store's own keys: model folders, manifests
_DRIVE = re.compile(r"[A-Za-z]:")
_DOWNLOAD_TO_FIX = (
    'must be a folder relative to the cache dir, e.g. "my-model/" '
    "(absolute paths, '~' and '..' are refused); or leave it out to use the cache dir itself"
)
_LLM_MODEL_FIX = (
    "must name a file or folder relative to the model folder or the cache dir, "
    'e.g. "model.gguf" '
    "(absolute paths, '~' and '..' are refused)"
)


def check_model_json(data: dict[str, Any]) -> None:
    """The path and environment rules of model.json; InvalidModelFolder names the field."""
    source = data.get("download_files_from")
    if source is not None and source != "":
        check_download_from(source)
    target = data.get("download_files_to")
    if target is not None and target != "":
        check_download_to(target)
    llm = data.get("llm")
    if isinstance(llm, dict) and "model" in llm:
        check_llm_model(llm["model"])
    model_env(data)  # "env": string names and values, no reserved MODELHOST_*/AWS_* names


def check_download_from(value: object) -> str:
    """`download_files_from`: a key prefix outside the platform's own `_modelhost/` keys."""
    if not isinstance(value, str):
        raise InvalidModelFolder(
            "model.json: download_files_from must be a key prefix string like 'cache/my-model/'"
        )
    shown = _shown(value)
    if "\x00" in value or "\\" in value:
        raise InvalidModelFolder(
            f"model.json: download_files_from {shown} has a NUL or backslash; "
            "use a key prefix like 'cache/my-model/'"
        )
    segments = [s for s in value.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise InvalidModelFolder(
            f"model.json: download_files_from {shown} has a '.' or '..' segment; "
            "name the key prefix directly, like 'cache/my-model/'"
        )
    if segments and segments[0].lower() == PLATFORM_KEY_SEGMENT:
        raise InvalidModelFolder(
            f"model.json: download_files_from {shown} names the platform's own keys "
            f"under '{PLATFORM_KEY_SEGMENT}/'; upload the files with `modelhost files upload "
            "LOCAL_DIR cache/my-model/` and set download_files_from to 'cache/my-model/'"
        )
    return value


def check_download_to(value: object) -> str:
    """`download_files_to`: a relative folder without '..' (it lands under the cache dir)."""
    if not isinstance(value, str):
        raise InvalidModelFolder(f"model.json: download_files_to {_DOWNLOAD_TO_FIX}")
    _check_relative(value, "download_files_to", _DOWNLOAD_TO_FIX)
    return value


def check_llm_model(value: object) -> str:
    """`llm.model`: a file or folder name relative to the model folder or the cache dir."""
    if not isinstance(value, str) or not value:
        raise InvalidModelFolder(f"model.json: llm.model {_LLM_MODEL_FIX}")
    _check_relative(value, "llm.model", _LLM_MODEL_FIX)
    return value


def resolve_inside(base: Path, relative: str, field: str) -> Path:
    """`base / relative` if it resolves (symlinks followed) inside `base`, else the error."""
    candidate = base / relative
    if not candidate.resolve().is_relative_to(base.resolve()):
        fix = _LLM_MODEL_FIX if field == "llm.model" else _DOWNLOAD_TO_FIX
        raise InvalidModelFolder(
            f"model.json: {field} {_shown(relative)} resolves outside {base}; it {fix}"
        )
    return candidate


def _check_relative(value: str, field: str, fix: str) -> None:
    shown = _shown(value)
    if "\x00" in value or "\\" in value:
        raise InvalidModelFolder(f"model.json: {field} {shown} has a NUL or backslash; it {fix}")
    if value.startswith(("/", "~")) or _DRIVE.match(value) or Path(value).is_absolute():
        raise InvalidModelFolder(f"model.json: {field} {shown} is absolute; it {fix}")
    if ".." in value.split("/"):
        raise InvalidModelFolder(f"model.json: {field} {shown} has a '..' segment; it {fix}")


def _shown(value: str) -> str:
    return repr(value if len(value) <= 200 else value[:200] + "...")


def check_folder(folder: Path) -> FolderCheck:
    """Validate a model folder at deploy time without importing it."""
    model_json = read_model_json(folder)
    source_path = folder / "model.py"
    if not source_path.exists():
        if "llm" in model_json:
            return FolderCheck(model_json, [], has_model_py=False)
        raise InvalidModelFolder(
            "the folder has no model.py; add one defining "
            f'`{_SIGNATURES["predict"]}` (or a model.json with an "llm" section)'
        )
    hooks = _hooks_in_source(source_path.read_text(encoding="utf-8"), "model.py")
    if "predict" not in hooks and "serve" not in hooks and "llm" not in model_json:
        raise InvalidModelFolder(
            f"model.py defines no `predict` hook; add `{_SIGNATURES['predict']}` at module level"
        )
    return FolderCheck(model_json, hooks, has_model_py=True)


def _hooks_in_source(source: str, filename: str) -> list[str]:
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        line = (exc.text or "").strip()
        raise InvalidModelFolder(
            f"{filename}, line {exc.lineno}: SyntaxError: {exc.msg}"
            + (f" -> {line!r}" if line else "")
            + "; fix it and deploy again",
            file=filename,
            line=exc.lineno,
        ) from None
    names = {
        node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    return [h for h in HOOKS if h in names]


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
        _hooks_in_source(path.read_text(encoding="utf-8"), "model.py")
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
                f"model.py: `{name}` is not a function; define `{_SIGNATURES[name]}`"
            )
    predict, serve = hooks["predict"], hooks["serve"]
    if predict is None:
        if serve is None:
            raise InvalidModelFolder(
                f"model.py defines no `predict` hook; add `{_SIGNATURES['predict']}`"
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
        f"define `{_SIGNATURES['serve']}`"
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
            f"model.py: `predict{sig}` takes no payload argument; define `{_SIGNATURES['predict']}`"
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
        f"model.py: `{name}{sig}` cannot take model_meta=...; define `{_SIGNATURES[name]}`"
    )


def _user_line(exc: BaseException, path: Path) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    return f" (model.py, line {frames[-1].lineno})" if frames else ""
