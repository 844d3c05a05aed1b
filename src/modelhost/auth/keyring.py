"""The JWT signing keys: one current key that signs, older ones still accepted for a while.

The key file (``<home>/jwt.key``, mode 0600) is JSON::

    {"current": "3f9a0c1e", "keys": {"3f9a0c1e": "<secret>", "b71d44a2": "<secret>"},
     "retired": {"b71d44a2": 1767225600}}

- ``current`` is the ``kid`` new tokens carry; key ids are random (`new_kid`), not a
  counter, so a kid says nothing about how many rotations happened.
- a key in ``retired`` is accepted until that epoch and refused after it, even before the
  next rotation prunes it from the file. `rotate` sets the deadline to now + the longest
  token lifetime, so every token signed before the rotation has expired by then.
- a file from before keyrings (one plain-text secret) is read as kid ``k1``, the kid the
  server used then, and becomes JSON on the next rotation.

Writes go to a temporary file created 0600 next to the key file, then ``os.replace``: a
reader (a running server reloading the file) sees the old or the new keyring, never half.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

log = logging.getLogger("modelhost.auth")

LEGACY_KID = "k1"
ENV_KID = "env"


def new_kid() -> str:
    """A short random key id (8 hex digits)."""
    return secrets.token_hex(4)


def new_secret() -> str:
    """A fresh HS256 secret (48 random bytes, URL-safe text)."""
    return secrets.token_urlsafe(48)


@dataclass(frozen=True)
class Keyring:
    """Signing key ids and secrets; `retired` maps a kid to the epoch it stops working."""

    current: str
    keys: Mapping[str, str]
    retired: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise ValueError(f"the current key id {self.current!r} has no secret in the keyring")
        if self.current in self.retired:
            raise ValueError(f"the current key id {self.current!r} is marked retired")

    @property
    def secret(self) -> str:
        """The secret new tokens are signed with."""
        return self.keys[self.current]

    def accepted(self, now: float | None = None) -> dict[str, str]:
        """The keys a token may be signed with at `now`: all but retired-past-deadline ones."""
        at = time.time() if now is None else now
        return {
            kid: key
            for kid, key in self.keys.items()
            if kid not in self.retired or self.retired[kid] > at
        }

    def with_previous(self, previous: Mapping[str, str]) -> Keyring:
        """This keyring plus extra accepted keys (``MODELHOST_JWT_PREVIOUS_KEYS``)."""
        for kid, key in previous.items():
            if kid in self.keys and self.keys[kid] != key:
                raise ValueError(
                    f"MODELHOST_JWT_PREVIOUS_KEYS names key id {kid!r}, which the keyring "
                    "already has with another secret; give the old key another id"
                )
        return replace(self, keys={**previous, **self.keys})

    def to_json(self) -> str:
        data = {
            "current": self.current,
            "keys": dict(self.keys),
            "retired": {kid: int(deadline) for kid, deadline in self.retired.items()},
        }
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def parse(cls, text: str, source: str = "the key file") -> Keyring:
        """A keyring from the file's text: JSON, or one plain-text secret (kid ``k1``)."""
        stripped = text.strip()
        if not stripped:
            raise ValueError(f"{source} is empty; delete it to get a new key (logs everybody out)")
        if not stripped.startswith("{"):
            return cls(LEGACY_KID, {LEGACY_KID: stripped})
        try:
            data: Any = json.loads(stripped)
            keys = {str(k): str(v) for k, v in data["keys"].items()}
            retired = {str(k): float(v) for k, v in (data.get("retired") or {}).items()}
            return cls(str(data["current"]), keys, retired)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"{source} is not a valid keyring ({exc!r}); expected "
                '{"current": kid, "keys": {kid: secret}, "retired": {kid: epoch}}'
            ) from None


def parse_previous_keys(raw: str) -> dict[str, str]:
    """``"kid:secret,kid:secret"`` (``MODELHOST_JWT_PREVIOUS_KEYS``) as a dict."""
    keys: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        kid, sep, secret = item.strip().partition(":")
        if not sep or not kid or not secret:
            raise ValueError(
                "MODELHOST_JWT_PREVIOUS_KEYS must look like 'kid:secret,kid:secret' "
                f"(an entry has {'no secret' if kid else 'no key id'})"
            )
        keys[kid] = secret
    return keys


def read_keyring(path: Path) -> Keyring | None:
    """The keyring in `path`, or None if there is no file; loose permissions are fixed."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    _tighten(path)
    return Keyring.parse(text, str(path))


def write_keyring(path: Path, ring: Keyring) -> None:
    """Replace `path` with `ring` atomically; the file is only ever 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(ring.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_or_create(path: Path) -> Keyring:
    """The keyring in `path`; the first call makes one with a random key id."""
    ring = read_keyring(path)
    if ring is not None:
        return ring
    kid = new_kid()
    ring = Keyring(kid, {kid: new_secret()})
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        existing = read_keyring(path)
        if existing is None:  # pragma: no cover - deleted again in between
            raise
        return existing
    with os.fdopen(fd, "w") as fh:
        fh.write(ring.to_json())
    return ring


@dataclass(frozen=True)
class Rotation:
    """What `rotate` did: the new keyring, its new kid, the keys dropped for good."""

    ring: Keyring
    new_kid: str
    previous_kid: str
    pruned: tuple[str, ...]


def rotate(
    path: Path, grace_s: float, now: float | None = None, *, drop_old: bool = False
) -> Rotation:
    """Make a new current key; the old current one stays accepted for `grace_s` seconds.

    Keys whose deadline has passed are removed from the file; `drop_old` removes every old
    key at once (a leaked key: everybody logs in again).
    """
    at = time.time() if now is None else now
    ring = load_or_create(path)
    kid = new_kid()
    while kid in ring.keys:  # pragma: no cover - 1 in 4 billion
        kid = new_kid()
    deadline = float(int(at + grace_s))  # whole seconds, as the file stores them
    retired = {**ring.retired, ring.current: deadline}
    if drop_old:
        retired = {k: at for k in ring.keys}
    pruned = tuple(sorted(k for k, deadline in retired.items() if deadline <= at))
    keys = {k: v for k, v in ring.keys.items() if k not in pruned}
    keys[kid] = new_secret()
    retired = {k: v for k, v in retired.items() if k not in pruned}
    new_ring = Keyring(kid, keys, retired)
    write_keyring(path, new_ring)
    return Rotation(new_ring, kid, ring.current, pruned)


def _tighten(path: Path) -> None:
    if os.name != "posix":
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            path.chmod(0o600)
        except OSError as exc:  # not ours, or a read-only mount (a Kubernetes secret volume)
            raise PermissionError(
                f"the signing keyring {path} is readable by other users (mode {mode:o}) and "
                f"could not be changed to 600 ({exc.strerror or exc}): anyone who reads it can "
                "sign tokens. Make it readable by its owner only (chmod 600; on a Kubernetes "
                "secret volume, defaultMode: 0400)"
            ) from exc
        log.warning("%s was readable by other users (mode %o); changed it to 600", path, mode)
