"""`S3Store`: an object store on any S3-protocol server (AWS, MinIO, Ceph, moto).

boto3's transfer manager does the heavy lifting (multipart, parallel ranges, retries);
this module only maps keys under an optional base prefix and turns botocore errors into
modelhost's error tree so callers never import botocore.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelhost.errors import BadRequest, ModelhostError, NotFound
from modelhost.store.base import ObjectInfo, ProgressCallback, check_key, check_prefix

_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_DENIED_CODES = frozenset(
    {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
)
_DELETE_BATCH = 1000  # the S3 DeleteObjects limit


def make_s3_client(endpoint_url: str | None = None, **client_kwargs: Any) -> Any:
    """A boto3 S3 client with settings that work against S3-compatible servers too.

    Credentials and region come from boto3's usual chain (env, ~/.aws, instance role).
    With a custom endpoint we force path-style addressing (bucket names need no DNS) and
    only send checksums when the API requires them (older MinIO/Ceph reject the newer
    default trailing checksums). `client_kwargs` go to ``boto3.client`` (explicit
    credentials, region).
    """
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 5, "mode": "standard"})
    if endpoint_url:
        config = config.merge(
            Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
        )
    return boto3.client("s3", endpoint_url=endpoint_url or None, config=config, **client_kwargs)


class S3Store:
    """Objects live at ``s3://bucket/<prefix><key>``; keys given and returned exclude the
    base prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        client: Any = None,
        transfer_config: Any = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise BadRequest(f"invalid S3 bucket name {bucket!r}")
        self.bucket = bucket
        stripped = prefix.strip("/")
        self.prefix = f"{stripped}/" if stripped else ""
        if self.prefix:
            check_prefix(self.prefix, f"s3://{bucket}/")
        self.endpoint_url = endpoint_url or None
        self._client = client if client is not None else make_s3_client(self.endpoint_url)
        self._transfer = transfer_config

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def __repr__(self) -> str:
        return (
            f"S3Store({self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"
        )

    # -- reads -------------------------------------------------------------------------------

    def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        check_prefix(prefix, self)
        out = [
            ObjectInfo(key=key, size=int(item["Size"]), etag=str(item.get("ETag", "")).strip('"'))
            for key, item in self._iter_raw(prefix)
            if key and not key.endswith("/")  # "folder" marker objects are not files
        ]
        return sorted(out, key=lambda o: o.key)

    def download(self, key: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        full = self._full(key)
        dest = Path(dest)
        try:
            with self._mapped(key), dest.open("wb") as f:
                extra = {"Config": self._transfer} if self._transfer is not None else {}
                self._client.download_fileobj(self.bucket, full, f, Callback=progress, **extra)
        except BaseException:
            # Do not leave an empty or partial file that looks like the object.
            dest.unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        full = self._full(key)
        with self._mapped(key):
            body = self._client.get_object(Bucket=self.bucket, Key=full)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

    # -- writes ------------------------------------------------------------------------------

    def upload_file(self, key: str, src: Path) -> None:
        full = self._full(key)
        src = Path(src)
        if not src.is_file():
            raise NotFound(f"no local file {str(src)!r} to upload as {key!r} to {self}")
        extra = {"Config": self._transfer} if self._transfer is not None else {}
        with self._mapped(key):
            self._client.upload_file(str(src), self.bucket, full, **extra)

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._full(key)
        with self._mapped(key):
            self._client.put_object(Bucket=self.bucket, Key=full, Body=data)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`, folder markers included; return the count."""
        if not prefix:
            raise BadRequest(f"refusing to delete everything in {self}: give a non-empty prefix")
        keys = [self.prefix + key for key, _ in self._iter_raw(prefix)]
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            with self._mapped(prefix):
                resp = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            if errors := resp.get("Errors"):
                first = errors[0]
                raise ModelhostError(
                    f"{len(errors)} objects under {prefix!r} in {self} were not deleted; "
                    f"first: {first.get('Key')!r}: {first.get('Code')} {first.get('Message')}"
                )
        return len(keys)

    # -- helpers -----------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return self.prefix + check_key(key, self)

    def _iter_raw(self, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(key without base prefix, ListObjectsV2 item) for every object under `prefix`."""
        check_prefix(prefix, self)
        with self._mapped(prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"][len(self.prefix) :], item

    @contextmanager
    def _mapped(self, key: str) -> Iterator[None]:
        """Translate botocore failures into modelhost errors that name the key and store."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            if code == "NoSuchBucket":
                raise NotFound(f"bucket {self.bucket!r} does not exist ({self})") from None
            if code in _NOT_FOUND_CODES:
                raise NotFound(f"no object {key!r} in {self}") from None
            if code in _DENIED_CODES:
                raise ModelhostError(
                    f"{self} denied access to {key!r} ({code}); check the S3 credentials "
                    "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and the bucket policy"
                ) from exc
            raise ModelhostError(
                f"S3 error on {key!r} in {self}: {code} {err.get('Message', '')}"
            ) from exc
        except NoCredentialsError as exc:
            raise ModelhostError(
                f"no S3 credentials for {self}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from exc
        except BotoCoreError as exc:
            raise ModelhostError(f"S3 request for {key!r} in {self} failed: {exc}") from exc
