"""Deploying a model folder: validate, upload to the store, record a version, start workers.

The upload arrives as a gzip tar. `unpack` extracts it itself rather than trusting
tarfile's extraction filters (bypassable before Python 3.11.13 / 3.12.11, CVE-2025-4517):
only regular files and folders with plain relative names, each written with O_EXCL and
O_NOFOLLOW under folders it created, sizes counted while decompressing. It is then checked with
`wire.model_folder.check_folder` (a syntax error fails the deploy naming the line), then copied
to the object store under its own key. Workers fetch it from there, so a version can start on
any host. The previous version keeps serving until the new one is ready.
"""

from __future__ import annotations

import asyncio
import bz2
import logging
import lzma
import os
import re
import tarfile
import tempfile
import uuid
import zlib
from pathlib import Path
from typing import Any

from modelhost.errors import BadRequest, PayloadTooLarge
from modelhost.gateway.versions import VersionManager
from modelhost.registry import DeploymentRow, ModelRow, Registry, VersionRow
from modelhost.settings import Settings
from modelhost.store import ObjectStore
from modelhost.wire.model_folder import check_folder

log = logging.getLogger("modelhost.deploy")
MAX_FOLDER_BYTES = 512 * 1024 * 1024
MAX_FILES = 10_000
# the decompressed tar stream: the files plus room for their headers
MAX_STREAM_BYTES = MAX_FOLDER_BYTES + 64 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024  # one pax / GNU long-name header
MAX_CHAINED_HEADERS = 8  # pax / GNU headers in a row (a global one, a member's, long names)
MAX_NAME_CHARS = 4096
_CHUNK = 1024 * 1024
_INPUT_CHUNK = 64 * 1024  # compressed bytes fed at a time (zlib copies its unconsumed tail)
_DRIVE = re.compile(r"[A-Za-z]:")
_KINDS = (
    ("issym", "a symbolic link"),
    ("islnk", "a hard link"),
    ("ischr", "a character device"),
    ("isblk", "a block device"),
    ("isfifo", "a fifo"),
)


def unpack(archive: bytes, dest: Path) -> None:
    """Unpack the uploaded model folder (a tar, gzip/bzip2/xz or plain) into `dest`.

    The extraction is ours, not tarfile's: every member is checked before anything is
    written, and only regular files and folders are accepted (see `_member_parts`). Sizes
    are counted while decompressing, so a bomb is refused after at most the cap.
    """
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        reader = _BoundedReader(archive, MAX_STREAM_BYTES)
        with tarfile.open(fileobj=reader, mode="r|", tarinfo=_TarInfo) as tar:  # type: ignore[call-overload]
            _extract(tar, root_fd)
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as exc:
        raise BadRequest(
            f"the upload is not a readable tar archive of the model folder: {exc}"
        ) from None
    finally:
        os.close(root_fd)


_TOO_LARGE = (
    "the model folder is over 512 MiB; put large files in the object store "
    "and name them in model.json's download_files_from"
)
_ONLY_FILES = "archives may hold only regular files and folders under the root"


def _extract(tar: tarfile.TarFile, root_fd: int) -> None:
    kinds: dict[tuple[str, ...], str] = {(): "dir"}  # what each path already is
    count = total = 0
    for member in tar:
        count += 1
        if count > MAX_FILES:
            raise PayloadTooLarge(f"the model folder has over {MAX_FILES} files")
        parts = _member_parts(member)
        if not parts:
            continue  # the root itself ("./")
        for depth in range(1, len(parts)):
            if kinds.get(parts[:depth], "dir") != "dir":
                raise BadRequest(
                    f"member {_shown(member.name)} goes through the file "
                    f"{'/'.join(parts[:depth])!r} packed before it; {_ONLY_FILES}"
                )
        seen = kinds.get(parts)
        if member.isdir():
            if seen == "file":
                raise BadRequest(
                    f"member {_shown(member.name)} is a folder but a file of that name was "
                    f"packed before it; {_ONLY_FILES}, each name once"
                )
            fd = _open_dirs(root_fd, parts, kinds)
            os.close(fd)
            continue
        if seen is not None:
            raise BadRequest(
                f"member {_shown(member.name)} is in the archive twice (or over a folder); "
                f"{_ONLY_FILES}, each name once"
            )
        if member.size < 0 or total + member.size > MAX_FOLDER_BYTES:
            raise PayloadTooLarge(_TOO_LARGE)
        parent = _open_dirs(root_fd, parts[:-1], kinds)
        try:
            kinds[parts] = "file"
            total += _write_file(tar, member, parent, parts[-1], MAX_FOLDER_BYTES - total)
        finally:
            os.close(parent)


def _member_parts(member: tarfile.TarInfo) -> tuple[str, ...]:
    """The member's path segments, or BadRequest saying why it cannot be unpacked."""
    name = member.name
    if not (member.isreg() or member.isdir()):
        kind = next((k for test, k in _KINDS if getattr(member, test)()), "of an unknown type")
        raise BadRequest(f"member {_shown(name)} is {kind}; {_ONLY_FILES}")
    if len(name) > MAX_NAME_CHARS:
        raise BadRequest(f"member {_shown(name)} has a name over {MAX_NAME_CHARS} characters")
    bad = next((c for c in ("\x00", "\\") if c in name), None)
    if bad is not None or any("\udc80" <= c <= "\udcff" for c in name):
        what = {"\x00": "a NUL", "\\": "a backslash"}.get(bad or "", "bytes that are not UTF-8")
        raise BadRequest(f"member {_shown(name)} has {what} in its name; {_ONLY_FILES}")
    if name.startswith("/") or _DRIVE.match(name):
        raise BadRequest(
            f"member {_shown(name)} is an absolute or drive-letter path; {_ONLY_FILES}, "
            "named relative to it"
        )
    while name.startswith("./"):  # `tar -C folder .` writes ./model.py
        name = name[2:]
    if name in ("", ".") and member.isdir():
        return ()
    parts = tuple(name.split("/"))
    if ".." in parts:
        raise BadRequest(f"member {_shown(member.name)} leaves the model folder; {_ONLY_FILES}")
    if any(p in ("", ".") for p in parts):
        raise BadRequest(
            f"member {_shown(member.name)} has an empty or '.' path segment; {_ONLY_FILES}, "
            "with plain relative names"
        )
    return parts


def _open_dirs(root_fd: int, parts: tuple[str, ...], kinds: dict[tuple[str, ...], str]) -> int:
    """An fd of folder `parts` under the root, creating missing ones (0o755, no symlinks)."""
    fd = os.dup(root_fd)
    try:
        for depth, part in enumerate(parts, 1):
            if parts[:depth] not in kinds:
                os.mkdir(part, 0o755, dir_fd=fd)
            child = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            os.close(fd)
            fd = child
            if parts[:depth] not in kinds:
                os.fchmod(fd, 0o755)  # explicitly, not by umask
                kinds[parts[:depth]] = "dir"
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_file(
    tar: tarfile.TarFile, member: tarfile.TarInfo, parent_fd: int, name: str, room: int
) -> int:
    source = tar.extractfile(member)
    if source is None:  # pragma: no cover - only regular members get here
        raise BadRequest(f"member {_shown(member.name)} has no data")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, 0o644, dir_fd=parent_fd)
    written = 0
    with os.fdopen(fd, "wb") as out:
        os.fchmod(fd, 0o644)  # explicitly, not by umask
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > room:
                raise PayloadTooLarge(_TOO_LARGE)
            out.write(chunk)
    return written


def _shown(name: str) -> str:
    return repr(name if len(name) <= 200 else name[:200] + "...")


class Deployer:
    def __init__(
        self, settings: Settings, registry: Registry, store: ObjectStore, versions: VersionManager
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.versions = versions

    async def deploy(
        self, actor: str, deployment: str, prefix: str, name: str, archive: bytes, wait: bool = True
    ) -> dict[str, Any]:
        _check_names(prefix, name, deployment)
        registry, store = self.registry, self.store
        with tempfile.TemporaryDirectory(prefix="modelhost-deploy-") as tmp:
            folder = Path(tmp)
            await asyncio.to_thread(unpack, archive, folder)
            check = check_folder(folder)
            store_key = f"_modelhost/models/{prefix}/{name}/{uuid.uuid4().hex}/"
            from modelhost.store import upload_dir

            await asyncio.to_thread(upload_dir, store, folder, store_key)

        def record() -> tuple[ModelRow, VersionRow, DeploymentRow]:
            registry.ensure_prefix(prefix)
            dep = registry.ensure_deployment(deployment)
            model = registry.get_or_create_model(prefix, name, deployment)
            version = registry.create_version(model.id, store_key, check.model_json, check.hooks)
            registry.audit(
                actor, "model.deploy", {"model": f"{prefix}/{name}", "version": version.version}
            )
            return model, version, dep

        model, version, dep = await asyncio.to_thread(record)
        log.info("deploying %s/%s v%d on %s", prefix, name, version.version, deployment)
        workers = await self.versions.start(model, version, dep)
        state, reason = workers.state, workers.reason
        if wait:
            state = await workers.wait_settled(self.settings.worker_start_timeout_s)
            reason = workers.reason
        base = f"{self.settings.public_url}/{prefix}/{name}/"
        return {
            "api_url": base,
            "api_version_url": f"{base}v{version.version}/",
            "api_meta_url": f"{base}?get_meta=true",
            "model_id": model.id,
            "version": version.version,
            "state": state,
            "reason": reason,
        }


def _check_names(prefix: str, name: str, deployment: str) -> None:
    for label, value in (("prefix", prefix), ("model name", name), ("deployment", deployment)):
        parts = value.split("/")
        if not value or any(not p or p in (".", "..") for p in parts):
            raise BadRequest(f"invalid {label} {value!r}")
        if any(not all(c.isalnum() or c in "-_." for c in p) for p in parts):
            raise BadRequest(f"invalid {label} {value!r}: use letters, digits, '-', '_' and '.'")
    if "/" in name or "/" in deployment:
        raise BadRequest("the model name and the deployment key are one path segment each")
    if (name[:1] in ("v", "V") and name[1:].isdigit()) or name.isdigit():
        raise BadRequest(f"model name {name!r} looks like a version; pick another name")


class _TarInfo(tarfile.TarInfo):
    """Refuses huge GNU long-name and pax headers before tarfile reads them into memory, and
    long chains of them (tarfile recurses once per header: a RecursionError otherwise)."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type not in _META_TYPES:
            return super()._proc_member(tar)  # type: ignore[misc]
        if self.size > MAX_HEADER_BYTES:
            raise BadRequest(
                f"the archive has a {self.size}-byte extended header; headers of more than "
                f"{MAX_HEADER_BYTES} bytes are refused"
            )
        depth = getattr(tar, "_modelhost_header_depth", 0)
        if depth >= MAX_CHAINED_HEADERS:
            raise BadRequest(
                f"the archive chains over {MAX_CHAINED_HEADERS} extended headers before a member"
            )
        tar._modelhost_header_depth = depth + 1  # type: ignore[attr-defined]
        try:
            return super()._proc_member(tar)  # type: ignore[misc]
        finally:
            tar._modelhost_header_depth = depth  # type: ignore[attr-defined]


_META_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class _BoundedReader:
    """The archive's tar stream, decompressed on demand and refused past `limit` bytes."""

    def __init__(self, archive: bytes, limit: int) -> None:
        self._src = memoryview(archive)
        self._pos = 0
        self._limit = limit
        self.produced = 0
        self._buf = bytearray()
        self._magic = bytes(archive[:6])
        self._gzip = self._magic.startswith(b"\x1f\x8b")
        self._dec: Any = self._decompressor()

    def _decompressor(self) -> Any:
        if self._gzip:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        if self._magic.startswith(b"BZh"):
            return bz2.BZ2Decompressor()
        if self._magic.startswith(b"\xfd7zXZ\x00"):
            return lzma.LZMADecompressor(lzma.FORMAT_XZ)
        return None  # a plain tar

    def read(self, size: int = -1) -> bytes:
        size = _CHUNK if size is None or size < 0 else size
        while len(self._buf) < size:
            piece = self._next(_CHUNK)
            if not piece:
                break
            self.produced += len(piece)
            if self.produced > self._limit:
                raise PayloadTooLarge(_TOO_LARGE)
            self._buf += piece
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out

    def _take(self, size: int) -> bytes:
        chunk = bytes(self._src[self._pos : self._pos + size])
        self._pos += len(chunk)
        return chunk

    def _next(self, want: int) -> bytes:
        dec = self._dec
        if dec is None:
            return self._take(want)
        while True:
            if dec.eof:
                rest = bytes(dec.unused_data) + self._take(len(self._src))
                if not rest.strip(b"\x00"):
                    return b""  # the end (some gzip writers pad with NULs)
                self._src, self._pos = memoryview(rest), 0  # another concatenated member
                self._dec = dec = self._decompressor()
            if self._gzip:
                data = dec.unconsumed_tail or self._take(_INPUT_CHUNK)
            else:
                data = self._take(_INPUT_CHUNK) if dec.needs_input else b""
            piece = dec.decompress(data, want)
            if piece:
                return bytes(piece)
            if not data and not dec.eof:
                raise EOFError("the compressed archive ends early")
