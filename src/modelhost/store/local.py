"""`LocalStore`: an object store on a local (or mounted) directory.

Used for single-host installs and tests. Every write is temp file + ``os.replace`` so a
reader (or a cache sync running in another process) never sees a half-written object.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from modelhost.errors import BadRequest, Conflict, NotFound
from modelhost.store.base import ObjectInfo, ProgressCallback, check_key, check_prefix

_CHUNK = 1024 * 1024
_TMP_MARK = ".modelhost-tmp-"


class LocalStore:
    """Keys map to files under `root`; the directory is created on first write."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()

    def __str__(self) -> str:
        return self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -- reads -------------------------------------------------------------------------------

    def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        check_prefix(prefix, self)
        # Only walk the directory the prefix can live in; the rest of the prefix is a
        # plain string match, as in S3 ("cache/ll" matches "cache/llama/x").
        base = self.root / prefix.rpartition("/")[0]
        out = [_info(key, path) for key, path in self._walk(base) if key.startswith(prefix)]
        return sorted(out, key=lambda o: o.key)

    def download(self, key: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        src = self._path(key)
        try:
            fsrc = src.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"no object {key!r} in {self}") from None
        with fsrc, Path(dest).open("wb") as fdst:
            while chunk := fsrc.read(_CHUNK):
                fdst.write(chunk)
                if progress is not None:
                    progress(len(chunk))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"no object {key!r} in {self}") from None

    # -- writes ------------------------------------------------------------------------------

    def upload_file(self, key: str, src: Path) -> None:
        src = Path(src)
        if not src.is_file():
            raise NotFound(f"no local file {str(src)!r} to upload as {key!r} to {self}")
        with src.open("rb") as fsrc:
            self._write_atomic(key, lambda fdst: shutil.copyfileobj(fsrc, fdst, _CHUNK))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write_atomic(key, lambda fdst: fdst.write(data))

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise BadRequest(f"refusing to delete everything in {self}: give a non-empty prefix")
        objects = self.list(prefix)
        for obj in objects:
            self._path(obj.key).unlink(missing_ok=True)
        self._prune_empty_dirs({self._path(o.key).parent for o in objects})
        return len(objects)

    # -- helpers -----------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root / check_key(key, self)

    def _walk(self, base: Path) -> Iterator[tuple[str, Path]]:
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in filenames:
                if _TMP_MARK in name:
                    continue
                path = Path(dirpath, name)
                yield path.relative_to(self.root).as_posix(), path

    def _write_atomic(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise Conflict(f"cannot store {key!r} in {self}: a parent is an object") from None
        if dest.is_dir():
            raise Conflict(f"cannot store {key!r} in {self}: it is a folder of objects")
        tmp = dest.with_name(f".{dest.name}{_TMP_MARK}{secrets.token_hex(8)}")
        try:
            with tmp.open("wb") as fdst:
                write(fdst)
                fdst.flush()
                os.fsync(fdst.fileno())
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def _prune_empty_dirs(self, dirs: set[Path]) -> None:
        """Remove folders left empty by a delete, bottom-up, never `root` itself."""
        for start in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            d = start
            while d != self.root and self.root in d.parents:
                with contextlib.suppress(OSError):
                    d.rmdir()  # fails (and stops climbing) when not empty
                if d.exists():
                    break
                d = d.parent


def _info(key: str, path: Path) -> ObjectInfo:
    st = path.stat()
    # size + mtime is the cheap change detector asked for; the inode is added because
    # kernel timestamps are coarse (a few ms), and every atomic write makes a new inode,
    # so two same-size writes inside one timestamp tick still get different tags.
    return ObjectInfo(key=key, size=st.st_size, etag=f"{st.st_size}-{st.st_mtime_ns}-{st.st_ino}")
