"""Every setting modelhost reads, declared once and built once.

`Settings.from_env()` is called by the CLI (or a test) and the object is passed down;
nothing below this module reads ``os.environ``. Each field maps to ``MODELHOST_<NAME>``.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


def _default_home() -> Path:
    return Path.home() / ".modelhost"


@dataclass(frozen=True)
class Settings:
    """Typed configuration. See the README's configuration reference."""

    home: Path = field(default_factory=_default_home)
    # Registry: SQLite file in `home` unless a SQLAlchemy URL is given (postgresql+psycopg://...).
    database_url: str = ""
    # Object store: file:///dir (default: <home>/store) or s3://bucket/optional/prefix.
    store_url: str = ""
    s3_endpoint_url: str = ""
    # Where `download_files_from` lands by default (Practicus uses /var/practicus/cache).
    cache_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    # Public URL clients use (for deploy answers); defaults to http://host:port.
    public_url: str = ""
    jwt_secret: str = ""
    session_token_ttl_s: int = 4 * 3600
    access_token_ttl_s: int = 3600
    refresh_token_ttl_s: int = 7 * 24 * 3600
    admin_email: str = "admin@modelhost.local"
    admin_password: str = ""
    max_body_bytes: int = 32 * 1024 * 1024
    # Verified tokens are cached; revocations and disabled users apply within this bound.
    revocation_poll_s: float = 5.0
    worker_start_timeout_s: float = 600.0
    predict_timeout_s: float = 600.0
    default_replicas: int = 1
    # Versions of one model kept loaded: when a new version is ready, older ones beyond the
    # newest N stop their workers (their URLs then answer 404 naming this). 0 = keep all.
    keep_versions: int = 2
    log_level: str = "info"
    # Sample one access-log line per N requests on the hot path (0 = off, 1 = every request).
    access_log_sample: int = 0
    # Reverse proxies whose X-Forwarded-For/-Proto are trusted (comma-separated IPs or "*").
    forwarded_allow_ips: str = ""
    # Idle HTTP keep-alive connections are closed after this many seconds.
    keep_alive_s: int = 30
    # Worker sandbox (runtime/sandbox.py): "auto" hides the control plane from model code where
    # the kernel allows it (else warns), "required" refuses to start a worker without it, "off".
    worker_sandbox: str = "auto"
    # Extra environment variables (comma-separated names) passed on to model workers, whose
    # environment is otherwise an allow-list (no MODELHOST_*, AWS_*, database URL).
    worker_env_passthrough: str = ""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"MODELHOST_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _coerce(f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values).resolved()

    def resolved(self) -> Settings:
        """Fill the defaults that depend on `home`."""
        home = Path(self.home).expanduser()
        return replace(
            self,
            home=home,
            database_url=self.database_url or f"sqlite:///{home / 'registry.db'}",
            store_url=self.store_url or f"file://{home / 'store'}",
            cache_dir=Path(self.cache_dir) if self.cache_dir else home / "cache",
            public_url=(self.public_url or f"http://{self.host}:{self.port}").rstrip("/"),
        )

    @property
    def run_dir(self) -> Path:
        """Sockets and pid files of the workers."""
        return self.home / "run"

    @property
    def versions_dir(self) -> Path:
        """Unpacked model folders, one per deployed version."""
        return self.home / "versions"

    @property
    def workers_dir(self) -> Path:
        """Each worker's own writable folder (its HOME and working directory)."""
        return self.home / "work"

    def load_jwt_secret(self) -> str:
        """The signing key: from the environment, else a 0600 file in `home` made once."""
        if self.jwt_secret:
            return self.jwt_secret
        path = self.home / "jwt.key"
        if path.exists():
            return path.read_text().strip()
        self.home.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
        return key


def _coerce(kind: Any, raw: str) -> Any:
    kind = str(kind)
    if "Path" in kind:
        return Path(raw)
    if kind.startswith("int"):
        return int(raw)
    if kind.startswith("float"):
        return float(raw)
    if kind.startswith("bool"):
        return raw.lower() in {"1", "true", "yes", "on"}
    return raw
