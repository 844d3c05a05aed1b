"""What a model learns about itself: passed to `init` and `cleanup` as `model_meta`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelMeta:
    """Attribute and mapping access both work: `model_meta.cache_dir`, `model_meta["cache_dir"]`."""

    model_id: int
    name: str
    prefix: str
    version: int
    deployment: str
    cache_dir: str
    model_dir: str
    pod_name: str
    model_json: dict[str, Any]
    # The built-in LLM engine's service, when model.json has an "llm" section.
    llm: Any = field(default=None, repr=False, compare=False)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("llm", None)
        return data

    # Practicus-style aliases
    @property
    def model_name(self) -> str:
        return self.name

    @property
    def model_version(self) -> int:
        return self.version

    @property
    def model_prefix(self) -> str:
        return self.prefix
