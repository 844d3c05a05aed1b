"""A model's descriptive metadata in model.json, as Practicus' ``prt.models.ModelConfig``.

    config = prt.models.create_model_config(df=df, target="charges", model_name="My model",
                                            problem_type="Regression", score=0.93)
    config.save("model.json")    # merged into an existing model.json ("llm", "env" kept)

``model_signature_json`` is MLflow's signature format (what Practicus uses): a JSON object
whose ``inputs`` and ``outputs`` are JSON strings of column specs
(``[{"type": "long", "name": "age", "required": true}, ...]``), built from the DataFrame's
dtypes. The server answers these fields at the top level of ``?get_meta=true`` (beside its
own, which win on a clash) and builds the model's OpenAPI page from the signature.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

# model.json keys that configure modelhost itself rather than describe the model
PLATFORM_KEYS = frozenset({"llm", "env", "download_files_from", "download_files_to"})
_MLFLOW_TYPES = (
    ("bool", "boolean"),
    ("int64", "long"),
    ("int", "integer"),
    ("uint", "long"),
    ("float32", "float"),
    ("float", "double"),
    ("datetime", "datetime"),
    ("bytes", "binary"),
)


class ModelConfig(BaseModel):
    """Practicus' model metadata; unknown fields are kept (``extra="allow"``)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model_name: str | None = None
    model_desc: str | None = None
    problem_type: str | None = None
    version_name: str | None = None
    target: str | None = None
    final_model: str | None = None
    score: float | None = None
    model_signature_json: str | None = None

    @property
    def signature(self) -> dict[str, Any] | None:
        """The signature with ``inputs`` / ``outputs`` parsed into lists of column specs."""
        return parse_signature(self.model_signature_json)

    def save(self, path: str | Path = "model.json") -> Path:
        """Write the set fields into ``path``, keeping what else a model.json there holds."""
        target = Path(path)
        data: dict[str, Any] = {}
        if target.is_file():
            existing = json.loads(target.read_text(encoding="utf-8") or "{}")
            data = existing if isinstance(existing, dict) else {}
        data.update(self.model_dump(exclude_none=True))
        target.write_text(json.dumps(data, indent=2), encoding="utf-8")
        return target

    @classmethod
    def load(cls, path: str | Path = "model.json") -> ModelConfig:
        data = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
        return cls.model_validate(described(data))


def create_model_config(
    df: Any = None,
    target: str | None = None,
    model_name: str | None = None,
    problem_type: str | None = None,
    version_name: str | None = None,
    final_model: str | None = None,
    score: float | None = None,
    model_desc: str | None = None,
    **extra: Any,
) -> ModelConfig:
    """A `ModelConfig`; with a pandas ``df``, its signature (``target`` is the output)."""
    signature = model_signature(df, target) if df is not None else None
    return ModelConfig(
        model_name=model_name,
        model_desc=model_desc,
        problem_type=problem_type,
        version_name=version_name,
        target=target,
        final_model=final_model,
        score=score,
        model_signature_json=signature,
        **extra,
    )


def model_signature(df: Any, target: str | None = None) -> str:
    """MLflow's signature JSON for a DataFrame: every column but ``target`` is an input."""
    inputs = [_column(name, df[name].dtype) for name in df.columns if name != target]
    outputs = [_column(target, df[target].dtype)] if target is not None else []
    return json.dumps(
        {"inputs": json.dumps(inputs), "outputs": json.dumps(outputs) if outputs else None}
    )


def _column(name: Any, dtype: Any) -> dict[str, Any]:
    kind = str(dtype).lower()
    mlflow = next((t for prefix, t in _MLFLOW_TYPES if kind.startswith(prefix)), "string")
    return {"type": mlflow, "name": str(name), "required": True}


def parse_signature(value: object) -> dict[str, Any] | None:
    """``{"inputs": [...], "outputs": [...]}`` from a ``model_signature_json`` (None if absent
    or malformed: metadata never breaks a model)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        data = json.loads(value)
        return {
            part: json.loads(data[part]) if isinstance(data.get(part), str) else []
            for part in ("inputs", "outputs")
        }
    except (ValueError, TypeError, AttributeError):
        return None


def described(model_json: object) -> dict[str, Any]:
    """The descriptive part of a model.json: everything but the platform's own keys."""
    if not isinstance(model_json, dict):
        return {}
    return {k: v for k, v in model_json.items() if k not in PLATFORM_KEYS}
