"""Object storage for model files, and the cache sync that brings them to a host.

``open_store(settings.store_url, settings.s3_endpoint_url)`` is the one place a store URL
is parsed; everything else takes an `ObjectStore`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from modelhost.errors import BadRequest
from modelhost.store.base import ObjectInfo, ObjectStore, ProgressCallback, check_key, check_prefix
from modelhost.store.local import LocalStore
from modelhost.store.s3 import S3Store, make_s3_client
from modelhost.store.sync import (
    LogSyncProgress,
    RichSyncProgress,
    SyncProgress,
    SyncReport,
    sync_model_files,
    sync_prefix,
)
from modelhost.store.upload import DEFAULT_EXCLUDES, Excludes, iter_files, upload_dir

__all__ = [
    "DEFAULT_EXCLUDES",
    "Excludes",
    "LocalStore",
    "LogSyncProgress",
    "ObjectInfo",
    "ObjectStore",
    "ProgressCallback",
    "RichSyncProgress",
    "S3Store",
    "SyncProgress",
    "SyncReport",
    "check_key",
    "check_prefix",
    "iter_files",
    "make_s3_client",
    "open_store",
    "sync_model_files",
    "sync_prefix",
    "upload_dir",
]

_ACCEPTED = "file:///absolute/dir or s3://bucket[/prefix]"


def open_store(store_url: str, s3_endpoint_url: str = "") -> ObjectStore:
    """Build the store a URL names: ``file:///abs/dir`` or ``s3://bucket/optional/prefix``.

    `s3_endpoint_url` points S3 URLs at a non-AWS server (MinIO, moto); it is ignored for
    ``file://``.
    """
    parts = urlsplit(store_url.strip())
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise BadRequest(
                f"store URL {store_url!r} has a host ({parts.netloc!r}); use three slashes "
                f"for an absolute path. Accepted: {_ACCEPTED}"
            )
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise BadRequest(
                f"store URL {store_url!r} needs an absolute path. Accepted: {_ACCEPTED}"
            )
        return LocalStore(Path(path))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise BadRequest(f"store URL {store_url!r} names no bucket. Accepted: {_ACCEPTED}")
        if parts.query or parts.fragment:
            raise BadRequest(f"store URL {store_url!r} must not have ?query or #fragment")
        return S3Store(
            parts.netloc, prefix=unquote(parts.path), endpoint_url=s3_endpoint_url or None
        )
    raise BadRequest(f"unsupported store URL {store_url!r}. Accepted: {_ACCEPTED}")
