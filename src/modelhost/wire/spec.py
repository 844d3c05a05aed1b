"""Everything a worker process needs to know, written by the supervisor as one JSON file."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelhost.wire.model_folder import check_download_from, check_download_to, resolve_inside


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
    # MODELHOST_PREDICT_TIMEOUT_S: a predict not answered within this is cancelled (504); for
    # a stream it bounds the wait for the first chunk. 0 = no deadline.
    predict_timeout_s: float = 600.0
    # The deployment's memory bound per worker process in MiB (0 = none).
    memory_mb: int = 0
    log_level: str = "info"
    log_format: str = "text"  # MODELHOST_LOG_FORMAT (modelhost/logs.py)
    # The worker's sandbox (worker/sandbox.py): "auto" | "required" | "off", the control
    # plane's paths it hides, and its own writable folder (HOME, working directory).
    sandbox: str = "auto"
    hide_paths: list[str] = field(default_factory=list)
    work_dir: str = ""
    # TCP instead of the Unix socket (a Ray actor starts the worker): the listening socket's
    # descriptor, bound by the process that starts the worker (so it knows the port before
    # the worker runs), and the replica's key in hex, which every connection must prove
    # before its first frame (wire/handshake.py). -1 / "": the Unix socket at socket_path.
    listen_fd: int = -1
    key: str = field(default="", repr=False)

    def dump(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(asdict(self)))
        os.chmod(path, 0o600)

    @classmethod
    def load(cls, path: Path) -> WorkerSpec:
        return cls(**json.loads(path.read_text()))

    @property
    def download_from(self) -> str | None:
        """model.json's `download_files_from`; never one of the platform's `_modelhost/` keys
        (InvalidModelFolder, checked again here in case the registry row predates the rule)."""
        value = self.model_json.get("download_files_from")
        if value is None or value == "":
            return None
        return check_download_from(value)

    @property
    def download_to(self) -> str:
        """model.json's `download_files_to`: a folder under the cache dir, or InvalidModelFolder
        (absolute, '..', or resolving outside it) before anything is written there."""
        target = self.model_json.get("download_files_to")
        if target is None or target == "":
            return self.cache_dir
        relative = check_download_to(target)
        return str(resolve_inside(Path(self.cache_dir), relative, "download_files_to"))
