"""The object-store contract every backend implements, and the key rules they share.

Keys are POSIX-style relative paths ("cache/llama/model.gguf"). The same rules apply to
every backend, even S3 where ``..`` would be a legal key, because keys end up as local
paths (LocalStore, cache sync): a key that is valid in one store must be safe everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from modelhost.errors import BadRequest

ProgressCallback = Callable[[int], None]
"""Called with the number of bytes moved since the previous call (an increment)."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object. ``etag`` changes whenever the content changes; compare it, never
    interpret it (S3 MD5s, multipart hashes and LocalStore's size-mtime tags all differ)."""

    key: str
    size: int
    etag: str


@runtime_checkable
class ObjectStore(Protocol):
    """A flat key -> bytes store. Missing keys raise `modelhost.errors.NotFound`."""

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with `prefix` (plain string match, recursive),
        sorted by key."""
        ...

    def download(self, key: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        """Write the object to exactly `dest`; atomicity is the caller's job."""
        ...

    def upload_file(self, key: str, src: Path) -> None: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix` (non-empty); return how many were deleted."""
        ...


def check_key(key: str, store: object) -> str:
    """Return `key` if it is a safe object key, else raise BadRequest naming it.

    Rejected: empty keys, absolute paths, ``.``/``..``/empty segments, backslashes and NULs.
    """
    _check_segments(key, store, what="key", allow_trailing_slash=False)
    return key


def check_prefix(prefix: str, store: object) -> str:
    """Like `check_key`, but "" (everything) and a trailing "/" are allowed."""
    if prefix:
        _check_segments(prefix, store, what="prefix", allow_trailing_slash=True)
    return prefix


def _check_segments(value: str, store: object, *, what: str, allow_trailing_slash: bool) -> None:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"empty object {what} for {store}")
    if "\x00" in value or "\\" in value:
        raise BadRequest(f"object {what} {value!r} for {store} contains a NUL or backslash")
    if value.startswith("/"):
        raise BadRequest(f"object {what} {value!r} for {store} must be relative, not absolute")
    parts = value.split("/")
    if allow_trailing_slash and parts[-1] == "":
        parts = parts[:-1]
    for part in parts:
        if part in ("", ".", ".."):
            raise BadRequest(
                f"object {what} {value!r} for {store} has an empty, '.' or '..' segment"
            )
