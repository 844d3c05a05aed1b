"""The environment a worker process starts with: an allow-list, never the gateway's own.

The gateway's environment holds the admin password, the database URL and the object store's
credentials (AWS_*); model code must see none of them. A worker gets only what the Python
interpreter and the usual numeric/ML libraries read, the names an operator lists in
MODELHOST_WORKER_ENV_PASSTHROUGH, and the model's own `"env"` object from model.json.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from modelhost.errors import InvalidModelFolder

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
FORBIDDEN_PREFIXES = ("MODELHOST_", "AWS_")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def passthrough_names(setting: str) -> list[str]:
    """MODELHOST_WORKER_ENV_PASSTHROUGH: comma-separated variable names."""
    return [name.strip() for name in setting.split(",") if name.strip()]


def model_env(model_json: Mapping[str, Any]) -> dict[str, str]:
    """model.json's optional `"env": {"NAME": "value"}`, checked."""
    env = model_json.get("env")
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise InvalidModelFolder('model.json: "env" must be an object of strings')
    for name, value in env.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidModelFolder(f'model.json: "env" has an invalid variable name {name!r}')
        if not isinstance(value, str):
            raise InvalidModelFolder(f'model.json: "env" value of {name} must be a string')
        if name.upper().startswith(FORBIDDEN_PREFIXES):
            raise InvalidModelFolder(
                f'model.json: "env" may not set {name} (MODELHOST_* and AWS_* are reserved)'
            )
    return dict(env)


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
    return env
