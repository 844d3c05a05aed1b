"""Everything a worker process needs to know, written by the supervisor as one JSON file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class WorkerSpec:
    socket_path: str
    version_dir: str
    store_url: str
    store_key: str  # where the model folder itself lives in the object store
    model_id: int
    name: str
    prefix: str
    version: int
    deployment: str
    cache_dir: str
    pod_name: str
    s3_endpoint_url: str = ""
    model_json: dict[str, Any] = field(default_factory=dict)
    sync_threads: int = 4
    log_level: str = "info"

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> WorkerSpec:
        return cls(**json.loads(path.read_text()))

    @property
    def download_from(self) -> str | None:
        value = self.model_json.get("download_files_from")
        return str(value) if value else None

    @property
    def download_to(self) -> str:
        """model.json's `download_files_to`; a relative one lives under the cache dir."""
        target = self.model_json.get("download_files_to")
        if not target:
            return self.cache_dir
        return str(Path(self.cache_dir) / str(target))  # an absolute target stays as it is
