"""The environment a worker process starts with: an allow-list, never the gateway's own.

The gateway's environment holds the admin password, the database URL and the object store's
credentials (AWS_*); model code must see none of them. A worker gets only what the Python
interpreter and the usual numeric/ML libraries read, the names an operator lists in
MODELHOST_WORKER_ENV_PASSTHROUGH, and the model's own `"env"` object from model.json.

It also gets `PROMETHEUS_MULTIPROC_DIR`: a folder inside its own HOME (so writable inside its
sandbox), emptied at every start. prometheus_client then keeps every metric the process
makes (the model's own, the LLM engine's `vllm:*`) in memory-mapped files there, which the
gateway merges into its `/metrics` at scrape time (`gateway/model_metrics.py`; for a Ray
replica its actor merges them on its node, `merged_metrics`).
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from modelhost.wire.model_folder import model_env

ALLOWED = frozenset(
    {
        "PATH",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "LD_LIBRARY_PATH",
        # where the CA bundle is (HTTPS from model code); proxies may hold credentials:
        # pass HTTP(S)_PROXY / NO_PROXY with MODELHOST_WORKER_ENV_PASSTHROUGH
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        # what the interpreter reads (not PYTHONSTARTUP: interactive only)
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONHASHSEED",
        "PYTHONIOENCODING",
        "PYTHONUTF8",
        "PYTHONWARNINGS",
        "PYTHONFAULTHANDLER",
        "PYTHONPYCACHEPREFIX",
        "PYTHONNOUSERSITE",
        "PYTHONOPTIMIZE",
        "PYTHONMALLOC",
        "PYTHONSAFEPATH",
        # thread counts, offline switches and devices of the ML libraries
        "OMP_NUM_THREADS",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_HOME",
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
    }
)
ALLOWED_PREFIXES = ("LC_", "MKL_", "OPENBLAS_")
METRICS_SUBDIR = "prometheus"
log = logging.getLogger("modelhost.metrics")


def passthrough_names(setting: str) -> list[str]:
    """MODELHOST_WORKER_ENV_PASSTHROUGH: comma-separated variable names."""
    return [name.strip() for name in setting.split(",") if name.strip()]


def worker_environ(
    gateway_env: Mapping[str, str],
    passthrough: str,
    model_json: Mapping[str, Any],
    home: str,
) -> dict[str, str]:
    """The worker's whole environment; HOME is its own writable folder."""
    extra = set(passthrough_names(passthrough))
    env = {
        name: value
        for name, value in gateway_env.items()
        if name in ALLOWED or name.startswith(ALLOWED_PREFIXES) or name in extra
    }
    env.update(model_env(model_json))
    env["HOME"] = home
    env["PROMETHEUS_MULTIPROC_DIR"] = str(fresh_metrics_dir(home))
    return env


def replica_home(workers_dir: Path, version_id: int, index: int) -> Path:
    """The HOME of replica `index` of a version (the supervisor names it the same way)."""
    return workers_dir / f"w{version_id}-{index}"


def metrics_dir(home: str | Path) -> Path:
    """Where a worker whose HOME is `home` keeps its prometheus_client files."""
    return Path(home) / METRICS_SUBDIR


def remove_metrics_dir(home: str | Path) -> None:
    """A stopped worker's metrics folder: nothing renders it any more."""
    shutil.rmtree(metrics_dir(home), ignore_errors=True)


def fresh_metrics_dir(home: str | Path) -> Path:
    """The metrics folder of a worker about to start, emptied: the files of the process it
    replaces (a restart, an earlier server run) must not be added to the new one's."""
    path = metrics_dir(home)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def merged_metrics(folder: str | Path) -> list[Metric]:
    """The metrics a worker keeps in `folder`, merged over its processes' files; [] while it
    has none, or when a file is being replaced as it is read (the next scrape has them)."""
    files = glob.glob(os.path.join(folder, "*.db"))
    if not files:
        return []
    try:
        return list(MultiProcessCollector.merge(files, accumulate=True))
    except Exception as exc:
        log.debug("could not read the metrics in %s: %s", folder, exc)
        return []
