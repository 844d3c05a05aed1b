"""A model folder's contract, checked on both sides of the worker seam.

The gateway checks a folder at deploy (`check_folder`: model.json parses, model.py compiles
and defines `predict`; cheap, imports nothing of the user's); the worker checks model.json's
paths again before it touches the filesystem (`WorkerSpec.download_to`, the LLM runner), and
`worker/loader.py` imports model.py against the same HOOKS and SIGNATURES.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelhost.errors import InvalidModelFolder

HOOKS = ("init", "predict", "serve", "cleanup")
SIGNATURES = {
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
            f'`{SIGNATURES["predict"]}` (or a model.json with an "llm" section)'
        )
    hooks = hooks_in_source(source_path.read_text(encoding="utf-8"), "model.py")
    if "predict" not in hooks and "serve" not in hooks and "llm" not in model_json:
        raise InvalidModelFolder(
            f"model.py defines no `predict` hook; add `{SIGNATURES['predict']}` at module level"
        )
    return FolderCheck(model_json, hooks, has_model_py=True)


def hooks_in_source(source: str, filename: str) -> list[str]:
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


# model.json's "env" may not set these (the platform's own and the store's credentials).
FORBIDDEN_ENV_PREFIXES = ("MODELHOST_", "AWS_", "PROMETHEUS_MULTIPROC")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def model_env(model_json: Mapping[str, Any]) -> dict[str, str]:
    """model.json's optional `"env": {"NAME": "value"}`, checked."""
    env = model_json.get("env")
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise InvalidModelFolder('model.json: "env" must be an object of strings')
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise InvalidModelFolder(f'model.json: "env" has an invalid variable name {name!r}')
        if not isinstance(value, str):
            raise InvalidModelFolder(f'model.json: "env" value of {name} must be a string')
        if name.upper().startswith(FORBIDDEN_ENV_PREFIXES):
            raise InvalidModelFolder(
                f'model.json: "env" may not set {name} '
                "(MODELHOST_*, AWS_* and PROMETHEUS_MULTIPROC_DIR are reserved)"
            )
    return dict(env)
