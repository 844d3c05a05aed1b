"""Where the SDK finds who you are on which server.

Precedence, first match wins:
1. environment: ``MODELHOST_URL`` + ``MODELHOST_ACCESS_TOKEN`` or
   ``MODELHOST_EMAIL``/``MODELHOST_PASSWORD`` (CI jobs, containers);
2. the file `save_credentials` writes (``modelhost login URL``), at
   ``$MODELHOST_CONFIG_DIR/credentials.json`` or ``~/.modelhost-client/credentials.json``.

The file is a JSON list with one entry per server URL, so one user can work with several
servers; the entry saved last is the default when no URL is known. It holds secrets, so it
is only ever created with mode 0600, and a file found with looser permissions is fixed and
reported rather than silently used.

``modelhost login`` saves ``{url, email, refresh_token}``, never the password. Refresh
tokens rotate on use (the old one is dead once used), so the SDK writes the new one back
with `replace_refresh_token` every time it refreshes. Entries with a password, written by
older versions, are still read.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from modelhost.errors import Unauthorized

FILE_NAME = "credentials.json"


@dataclass(frozen=True)
class Credentials:
    """A server base URL plus an access token, a refresh token, or an email and password."""

    url: str
    email: str | None = None
    password: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not (self.access_token or self.refresh_token or (self.email and self.password)):
            raise ValueError(
                "credentials need an access_token, a refresh_token, or an email and a password"
            )


def server_url(url: str) -> str:
    """``scheme://host:port`` of any URL on the server (a model URL, a console URL...)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {url!r}; expected e.g. https://host/prefix/model/")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def credentials_path(environ: Mapping[str, str] | None = None) -> Path:
    """The credentials file for this environment (it may not exist yet)."""
    env = os.environ if environ is None else environ
    base = env.get("MODELHOST_CONFIG_DIR") or str(Path.home() / ".modelhost-client")
    return Path(base).expanduser() / FILE_NAME


def load_credentials(api_url: str | None, environ: Mapping[str, str] | None = None) -> Credentials:
    """Credentials for the server of `api_url` (or ``MODELHOST_URL``, or the default one)."""
    env = os.environ if environ is None else environ
    raw_url = env.get("MODELHOST_URL") or api_url
    url = server_url(raw_url) if raw_url else None
    from_env = _from_environ(url, env)
    if from_env is not None:
        return from_env
    entries = _read_entries(credentials_path(env))
    matches = [e for e in entries if url is None or e.get("url") == url]
    if matches:
        return _entry_to_credentials(matches[-1])
    raise Unauthorized(_missing_message(url))


def save_credentials(creds: Credentials, environ: Mapping[str, str] | None = None) -> Path:
    """Store `creds`, replacing any entry for the same server; it becomes the default."""
    path = credentials_path(environ)
    entry = {k: v for k, v in asdict(creds).items() if v is not None}
    entries = [e for e in _read_entries(path) if e.get("url") != creds.url] + [entry]
    _write_entries(path, entries)
    return path


def saved_refresh_token(url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The refresh token saved for the server `url` now (another process may have rotated
    it since this one read the file)."""
    for entry in _read_entries(credentials_path(environ)):
        if entry.get("url") == url and entry.get("refresh_token"):
            return str(entry["refresh_token"])
    return None


def replace_refresh_token(
    url: str, old: str, new: str, environ: Mapping[str, str] | None = None
) -> bool:
    """Swap the rotated refresh token in place (the entry keeps its position, so the default
    server stays the same); False if the entry no longer holds `old` (logged in again)."""
    path = credentials_path(environ)
    entries = _read_entries(path)
    for entry in entries:
        if entry.get("url") == url and entry.get("refresh_token") == old:
            entry["refresh_token"] = new
            _write_entries(path, entries)
            return True
    return False


def remove_credentials(
    url: str | None, environ: Mapping[str, str] | None = None
) -> Credentials | None:
    """Remove the saved entry for the server of `url` (default: the default entry) and
    return it; None if there was none."""
    path = credentials_path(environ)
    entries = _read_entries(path)
    target = server_url(url) if url else (entries[-1]["url"] if entries else None)
    removed = [e for e in entries if e.get("url") == target]
    if not removed:
        return None
    _write_entries(path, [e for e in entries if e.get("url") != target])
    entry = removed[-1]
    try:
        return _entry_to_credentials(entry)
    except Unauthorized:  # an incomplete entry: removed all the same
        return None


def _write_entries(path: Path, entries: list[dict[str, Any]]) -> None:
    """Write the whole file atomically: a 0600 temporary file, then ``os.replace``."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(entries, fh, indent=2)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _from_environ(url: str | None, env: Mapping[str, str]) -> Credentials | None:
    token = env.get("MODELHOST_ACCESS_TOKEN") or None
    email = env.get("MODELHOST_EMAIL") or None
    password = env.get("MODELHOST_PASSWORD") or None
    if not token and not (email and password):
        return None
    if url is None:
        raise Unauthorized(
            "credentials are set in the environment but no server is known; set MODELHOST_URL "
            "(e.g. https://host) or pass the model URL"
        )
    return Credentials(url, email, password, token)


def _read_entries(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    _tighten_permissions(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise Unauthorized(
            f"cannot read {path} ({exc}); delete it and run `modelhost login URL` again"
        ) from None
    if not isinstance(data, list):
        return []
    return [e for e in data if isinstance(e, dict) and e.get("url")]


def _tighten_permissions(path: Path) -> None:
    if os.name != "posix":
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        path.chmod(0o600)
        warnings.warn(
            f"{path} was readable by other users (mode {mode:o}); changed it to 600",
            stacklevel=3,
        )


def _entry_to_credentials(entry: dict[str, Any]) -> Credentials:
    try:
        return Credentials(
            url=str(entry["url"]),
            email=entry.get("email"),
            password=entry.get("password"),
            access_token=entry.get("access_token"),
            refresh_token=entry.get("refresh_token"),
        )
    except ValueError:
        raise Unauthorized(
            f"the saved credentials for {entry['url']} are incomplete; run "
            f"`modelhost login {entry['url']}` again"
        ) from None


def _missing_message(url: str | None) -> str:
    target = url or "URL"
    server = url or "any server"
    extra = "" if url else "MODELHOST_URL and "
    return (
        f"no credentials for {server}; run `modelhost login {target}`, or set "
        f"{extra}MODELHOST_EMAIL and MODELHOST_PASSWORD (or MODELHOST_ACCESS_TOKEN)"
    )
