"""Every setting modelhost reads, declared once and built once.

`Settings.from_env()` is called by the CLI (or a test) and the object is passed down;
nothing below this module reads ``os.environ``. Each field maps to ``MODELHOST_<NAME>``.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelhost.auth.keyring import Keyring


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
    # Signing key: MODELHOST_JWT_SECRET (key id `jwt_kid`), else the keyring file
    # <home>/jwt.key that `modelhost admin rotate-keys` rotates.
    jwt_secret: str = ""
    jwt_kid: str = "env"
    # Old keys still accepted: "kid:secret,kid:secret" (e.g. after changing MODELHOST_JWT_SECRET).
    jwt_previous_keys: str = ""
    # The keyring file, when not <home>/jwt.key: one file on a volume every gateway mounts
    # (several hosts), so `modelhost admin rotate-keys` on one reaches them all.
    jwt_key_file: Path | None = None
    session_token_ttl_s: int = 4 * 3600
    access_token_ttl_s: int = 3600
    refresh_token_ttl_s: int = 7 * 24 * 3600
    admin_email: str = "admin@modelhost.local"
    admin_password: str = ""
    max_body_bytes: int = 32 * 1024 * 1024
    # Console JSON bodies (login, admin calls) are refused with 413 past this, before parsing.
    console_max_body_bytes: int = 64 * 1024
    # A deploy upload (gzip tar of the model folder) is refused with 413 past this.
    max_deploy_bytes: int = 256 * 1024 * 1024
    # Failed logins: past N failures per account (10x N per client address) within the window,
    # each further failure doubles a lockout (429 + Retry-After) up to login_lock_max_s.
    login_max_failures: int = 5
    login_window_s: float = 900.0
    login_lock_max_s: float = 900.0
    # GET /metrics needs this bearer token (or an admin's console token); empty = admins only.
    metrics_token: str = ""
    # Verified tokens are cached; revocations and disabled users apply within this bound.
    revocation_poll_s: float = 5.0
    worker_start_timeout_s: float = 600.0
    # A crashed worker is restarted after a backoff doubling from 0.5 s up to this cap (reset
    # once a worker has been ready for a minute); 0 restarts = restart forever.
    worker_max_restarts: int = 0
    worker_restart_backoff_max_s: float = 30.0
    # A Ray replica whose TCP connection dropped is connected to again for this long (its
    # worker may be fine: a network blip) before its actor is stopped and it is restarted.
    worker_reconnect_s: float = 30.0
    # Retiring a version or stopping the server: in-flight requests and streams get this long to
    # finish (no new ones are routed there), then workers get SIGTERM (cleanup), and SIGKILL
    # `worker_stop_timeout_s` later.
    drain_timeout_s: float = 30.0
    worker_stop_timeout_s: float = 10.0
    predict_timeout_s: float = 600.0
    # Resident memory (VmRSS, MiB) a worker process may use before it is killed and restarted;
    # a deployment's memory_mb overrides it. 0 = unlimited.
    worker_memory_mb: int = 0
    # Requests in flight per model version at the gateway; one more gets 429 + Retry-After.
    # 0 = no bound. A deployment's own max_queue (admin API) overrides it.
    max_queue: int = 0
    # Versions of one model kept loaded: when a new version is ready, older ones beyond the
    # newest N stop their workers (their URLs then answer 404 naming this). 0 = keep all.
    keep_versions: int = 2
    log_level: str = "info"
    # "text" or "json" (one object per line: ts, level, logger, message, request_id), for the
    # gateway and its workers alike (modelhost/logs.py).
    log_format: str = "text"
    # Sample one access-log line per N requests on the hot path (0 = off, 1 = every request).
    access_log_sample: int = 0
    # Reverse proxies whose X-Forwarded-For/-Proto are trusted (comma-separated IPs or "*").
    forwarded_allow_ips: str = ""
    # Idle HTTP keep-alive connections are closed after this many seconds.
    keep_alive_s: int = 30
    # Worker sandbox (worker/sandbox.py): "auto" hides the control plane from model code where
    # the kernel allows it (else warns), "required" refuses to start a worker without it, "off".
    worker_sandbox: str = "auto"
    # Extra environment variables (comma-separated names) passed on to model workers, whose
    # environment is otherwise an allow-list (no MODELHOST_*, AWS_*, database URL).
    worker_env_passthrough: str = ""
    # Request line + headers over this many bytes are answered 431 and the connection closed.
    max_header_bytes: int = 64 * 1024
    # A request head not complete this many seconds after it started (a new connection: after
    # it opened) is answered 408 and the connection closed; a silent new one is just closed.
    header_timeout_s: float = 10.0
    # A request body of which no byte arrived for this many seconds (after its head or its
    # last byte) is answered 408 and the connection closed (0 = no deadline).
    body_timeout_s: float = 30.0
    # Open HTTP connections beyond this are answered 503 and closed (0 = unlimited).
    max_connections: int = 1024
    # Several gateways: this one's name. It sends change notices under it, and when set its
    # worker sockets, work folders and unpacked versions go under <home>/run|work|versions/<id>
    # so gateways sharing one home do not collide. Empty: <hostname>-<pid> names it, and with
    # reuse_port the folders too (then set a stable id, so restarts reuse their folders).
    gateway_id: str = ""
    # Bind with SO_REUSEPORT: several `modelhost serve` processes share one port.
    reuse_port: bool = False
    # Every N seconds the gateway reconciles its routes with the registry (the fallback for
    # change notices: a lost notice, or SQLite, which has none). 0 = off.
    sync_poll_s: float = 5.0
    # Autoscaling (gateway/autoscale.py; deployments with max_replicas): the control loop's
    # period, and the window its average of in-flight requests per version spans.
    autoscale_tick_s: float = 0.5
    autoscale_window_s: float = 5.0
    # A request to a version scaled to zero (min_replicas 0) waits this long for its first
    # replica to be ready, then gets 503 + Retry-After.
    cold_start_timeout_s: float = 120.0
    # Where workers run (docs/scale-out.md): "local" (child processes of this gateway) or
    # "ray" (each replica a named Ray actor on a Ray cluster, reached over authenticated TCP).
    runtime: str = "local"
    # The Ray cluster ("" = start or find one as `ray.init()` does; e.g. 127.0.0.1:6379).
    ray_address: str = ""
    # The Ray namespace the replica actors are named in (gateways sharing it share actors).
    # "" = one per registry: "modelhost-" + a digest of the database URL (less its password),
    # so two installations on one Ray cluster never take each other's actors.
    ray_namespace: str = ""
    # The address a worker's TCP socket binds on its node ("" = the Ray node's own IP).
    worker_host: str = ""
    # The secret worker TCP connections authenticate with (HMAC challenge-response, both
    # ways). Empty: generated once into <home>/cluster.key (0600); gateways sharing a Ray
    # cluster must share it. Never logged.
    cluster_secret: str = field(default="", repr=False)

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
        _check_gateway_id(self.gateway_id)
        database_url = self.database_url or f"sqlite:///{home / 'registry.db'}"
        return replace(
            self,
            home=home,
            database_url=database_url,
            ray_namespace=self.ray_namespace or _registry_namespace(database_url),
            store_url=self.store_url or f"file://{home / 'store'}",
            cache_dir=Path(self.cache_dir) if self.cache_dir else home / "cache",
            public_url=(self.public_url or f"http://{self.host}:{self.port}").rstrip("/"),
            gateway_id=self.gateway_id or (_process_name() if self.reuse_port else ""),
        )

    @property
    def instance_id(self) -> str:
        """Who this gateway is in change notices: `gateway_id`, else <hostname>-<pid>."""
        return self.gateway_id or _process_name()

    def _own(self, folder: str) -> Path:
        """A per-gateway folder: <home>/<folder>, or <home>/<folder>/<gateway_id>."""
        base = self.home / folder
        return base / self.gateway_id if self.gateway_id else base

    @property
    def run_dir(self) -> Path:
        """Sockets and pid files of the workers."""
        return self._own("run")

    @property
    def versions_dir(self) -> Path:
        """Unpacked model folders, one per deployed version."""
        return self._own("versions")

    @property
    def workers_dir(self) -> Path:
        """Each worker's own writable folder (its HOME and working directory)."""
        return self._own("work")

    @property
    def jwt_key_path(self) -> Path:
        """The keyring file (JSON, mode 0600) used when MODELHOST_JWT_SECRET is not set:
        MODELHOST_JWT_KEY_FILE, else <home>/jwt.key."""
        if self.jwt_key_file:
            return Path(self.jwt_key_file).expanduser()
        return self.home / "jwt.key"

    def load_jwt_keyring(self) -> Keyring:
        """The signing keys: MODELHOST_JWT_SECRET as kid `jwt_kid`, else the keyring file
        (`jwt_key_path`, made on first use). `jwt_previous_keys` are not included."""
        from modelhost.auth.keyring import Keyring, load_or_create

        if self.jwt_secret:
            return Keyring(self.jwt_kid, {self.jwt_kid: self.jwt_secret})
        return load_or_create(self.jwt_key_path)

    def load_jwt_secret(self) -> str:
        """The current signing key (see `load_jwt_keyring`)."""
        return self.load_jwt_keyring().secret


def _check_gateway_id(name: str) -> None:
    """It names folders: one plain path segment."""
    if name in (".", "..") or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in name):
        raise ValueError(
            f"MODELHOST_GATEWAY_ID={name!r}: use letters, digits, '-', '_' and '.' (it names "
            "this gateway's folders under MODELHOST_HOME)"
        )


def _process_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


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


def _registry_namespace(database_url: str) -> str:
    """The default Ray namespace of a registry: the same for every gateway that reaches it by
    the same URL, another for another registry (the password is left out of the digest)."""
    from sqlalchemy.engine import make_url

    try:
        plain = make_url(database_url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: the registry will say so itself
        plain = database_url
    return "modelhost-" + hashlib.sha256(plain.encode()).hexdigest()[:12]
