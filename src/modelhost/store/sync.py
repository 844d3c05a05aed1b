"""Model cache sync: bring every object under a key prefix into a local folder.

This is what makes Practicus' ``download_files_from`` / ``download_files_to`` work. Hosts
restart often and model weights are large, so the sync must be incremental, crash-safe
and safe to run from several workers at once on one host:

* Incremental: ``<dest>/.modelhost-sync.json`` records ``relpath -> {size, etag}`` of what
  was synced. A file is skipped when it exists with the recorded size and the store still
  reports the recorded etag.
* Crash-safe: each file is downloaded to ``<name>.part-<random>`` beside it, fsynced and
  ``os.replace``d, so the final name only ever holds a complete file. The manifest is
  written after the rename, so a crash in between only costs a re-download. Stale
  ``.part-*`` files are removed by the next sync.
* Concurrent: a per-file lock (``<dest>/.modelhost-locks/``) is held while a file is
  fetched, and the manifest is re-read after taking it, so each file is fetched once even
  when two workers start together. Manifest updates are read-modify-write under their own
  lock. Files another process is busy with are deferred, so two syncs share the work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from filelock import FileLock, Timeout

from modelhost.errors import BadRequest, Conflict, InvalidModelFolder, NotFound
from modelhost.store.base import ObjectInfo, ObjectStore, check_key, check_prefix

logger = logging.getLogger("modelhost.store")

MANIFEST_NAME = ".modelhost-sync.json"
LOCKS_DIR_NAME = ".modelhost-locks"
_PART_RE = re.compile(r"^(?P<target>.+)\.part-[0-9a-f]{16}$")
_MANIFEST_VERSION = 1


# -- progress --------------------------------------------------------------------------------


@runtime_checkable
class SyncProgress(Protocol):
    """Told about each file that is actually downloaded (not about skipped ones).

    `advance` may be called from boto3's transfer threads, so implementations must be
    thread-safe.
    """

    def start(self, file: str, total: int) -> None: ...

    def advance(self, file: str, n: int) -> None: ...

    def done(self, file: str) -> None: ...


class RichSyncProgress:
    """A rich progress bar per file on stderr, for interactive CLI use.

    Use as a context manager (or call `close`) so the live display is stopped.
    """

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TaskID,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console if console is not None else Console(stderr=True),
        )
        self._tasks: dict[str, tuple[TaskID, int]] = {}
        self._lock = threading.Lock()
        self._started = False

    def start(self, file: str, total: int) -> None:
        with self._lock:
            if not self._started:
                self._progress.start()
                self._started = True
            self._tasks[file] = (self._progress.add_task(file, total=total), total)

    def advance(self, file: str, n: int) -> None:
        if (entry := self._tasks.get(file)) is not None:
            self._progress.advance(entry[0], n)

    def done(self, file: str) -> None:
        if (entry := self._tasks.get(file)) is not None:
            self._progress.update(entry[0], completed=entry[1])

    def close(self) -> None:
        with self._lock:
            if self._started:
                self._progress.stop()
                self._started = False

    def __enter__(self) -> RichSyncProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass
class _FileState:
    total: int
    seen: int = 0
    next_mark: float = 0.1
    started: float = field(default_factory=time.monotonic)


class LogSyncProgress:
    """Log lines instead of a bar: workers run headless and their output goes to log files.

    One line per file when it is done; for files over `big_file_bytes` also a line when
    the download starts and about every 10%.
    """

    def __init__(
        self,
        log: logging.Logger | None = None,
        big_file_bytes: int = 20 * 1024 * 1024,
        step: float = 0.10,
    ) -> None:
        self._log = log or logger
        self._big = big_file_bytes
        self._step = step
        self._files: dict[str, _FileState] = {}
        self._lock = threading.Lock()

    def start(self, file: str, total: int) -> None:
        with self._lock:
            self._files[file] = _FileState(total=total, next_mark=self._step)
        if total > self._big:
            self._log.info("downloading %s (%s)", file, human_bytes(total))

    def advance(self, file: str, n: int) -> None:
        with self._lock:
            st = self._files.get(file)
            if st is None:
                return
            st.seen += n
            if st.total <= self._big or st.seen >= st.total:
                return
            pct = st.seen / st.total
            if pct < st.next_mark:
                return
            while st.next_mark <= pct:
                st.next_mark += self._step
        self._log.info(
            "%s: %d%% (%s of %s)", file, int(pct * 100), human_bytes(st.seen), human_bytes(st.total)
        )

    def done(self, file: str) -> None:
        with self._lock:
            st = self._files.pop(file, None)
        if st is None:
            return
        elapsed = time.monotonic() - st.started
        self._log.info("downloaded %s (%s in %.1fs)", file, human_bytes(st.total), elapsed)


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; for log lines and messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# -- sync ------------------------------------------------------------------------------------


@dataclass
class SyncReport:
    """What one sync did; relpaths are relative to the destination folder."""

    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes: int = 0


def sync_prefix(
    store: ObjectStore,
    prefix: str,
    dest_dir: Path,
    progress: SyncProgress | None = None,
) -> SyncReport:
    """Make `dest_dir` hold every object under `prefix` (prefix stripped, sub-folders kept),
    fetching only missing or changed files. See the module docstring for the guarantees."""
    prefix = _folder_prefix(prefix, store)
    objects = store.list(prefix)
    if not objects:
        raise NotFound(
            f"no objects under {prefix!r} in {store}; upload them with "
            f"`modelhost files upload LOCAL_DIR {prefix}`"
        )
    files = _plan(objects, prefix, store)
    syncer = _Syncer(store, Path(dest_dir).absolute(), progress)
    report = syncer.run(files)
    logger.info(
        "synced '%s' from %s to %s: %d downloaded (%s), %d up to date",
        prefix,
        store,
        syncer.dest_dir,
        len(report.downloaded),
        human_bytes(report.bytes),
        len(report.skipped),
    )
    return report


def sync_model_files(
    store: ObjectStore,
    model_config: Mapping[str, Any],
    cache_dir: Path,
    progress: SyncProgress | None = None,
) -> SyncReport | None:
    """Apply a model.json's ``download_files_from`` / ``download_files_to``.

    Returns None when the model asks for no files (key absent or empty). A relative
    ``download_files_to`` is taken relative to `cache_dir`, the host's cache folder.
    """
    source = model_config.get("download_files_from")
    if source is None or source == "":
        return None
    if not isinstance(source, str):
        raise InvalidModelFolder(
            "model.json: download_files_from must be a key prefix string like 'cache/my-model/'"
        )
    target = model_config.get("download_files_to")
    if target is None or target == "":
        dest = Path(cache_dir)
    elif isinstance(target, str):
        path = Path(target).expanduser()
        dest = path if path.is_absolute() else Path(cache_dir) / path
    else:
        raise InvalidModelFolder("model.json: download_files_to must be a folder path string")
    return sync_prefix(store, source, dest, progress)


def _folder_prefix(prefix: str, store: ObjectStore) -> str:
    """'cache/x' and '/cache/x/' -> 'cache/x/': a prefix names a folder, so 'cache/x' must
    not also pull in 'cache/x-large/'."""
    stripped = prefix.strip("/")
    if not stripped:
        raise NotFound(
            f"no key prefix given to download from {store}; set download_files_from to a "
            "folder such as 'cache/my-model/' and upload it with "
            "`modelhost files upload LOCAL_DIR cache/my-model/`"
        )
    return check_prefix(stripped + "/", store)


def _plan(objects: list[ObjectInfo], prefix: str, store: ObjectStore) -> dict[str, ObjectInfo]:
    """relpath -> object, refusing relpaths that are unsafe or collide with sync's files."""
    files = {obj.key[len(prefix) :]: obj for obj in objects}
    folders = {rel.rsplit("/", i)[0] for rel in files for i in range(1, rel.count("/") + 1)}
    for rel, obj in files.items():
        check_key(rel, store)
        name = rel.rsplit("/", 1)[-1]
        if rel == MANIFEST_NAME or rel.split("/")[0] == LOCKS_DIR_NAME or _PART_RE.match(name):
            raise BadRequest(f"object {obj.key!r} in {store} uses a name reserved by the sync")
        if rel in folders:
            raise Conflict(f"{obj.key!r} in {store} is both an object and a folder of objects")
    return files


class _Syncer:
    """One sync run into one destination folder."""

    def __init__(self, store: ObjectStore, dest_dir: Path, progress: SyncProgress | None) -> None:
        self.store = store
        self.dest_dir = dest_dir
        self.progress = progress
        self.locks_dir = dest_dir / LOCKS_DIR_NAME
        self.manifest_path = dest_dir / MANIFEST_NAME

    def run(self, files: dict[str, ObjectInfo]) -> SyncReport:
        self.locks_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_parts(files)
        report = SyncReport()
        manifest = self._read_manifest()
        deferred: list[str] = []
        for rel, obj in files.items():
            if self._is_current(rel, obj, manifest):
                report.skipped.append(rel)
                continue
            lock = self._file_lock(rel)
            try:
                lock.acquire(blocking=False)
            except Timeout:
                deferred.append(rel)  # another process is on it; come back at the end
                continue
            try:
                self._sync_locked(rel, obj, report)
            finally:
                lock.release()
        for rel in deferred:
            with self._file_lock(rel):
                self._sync_locked(rel, files[rel], report)
        return report

    # -- one file ----------------------------------------------------------------------------

    def _sync_locked(self, rel: str, obj: ObjectInfo, report: SyncReport) -> None:
        """Fetch `rel` unless someone did while we waited; the file lock is held."""
        if self._is_current(rel, obj, self._read_manifest()):
            report.skipped.append(rel)
            return
        target = self.dest_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_parts_of(target)
        size = self._fetch(rel, obj, target)
        self._record(rel, {"size": size, "etag": obj.etag})
        report.downloaded.append(rel)
        report.bytes += size

    def _fetch(self, rel: str, obj: ObjectInfo, target: Path) -> int:
        part = target.with_name(f"{target.name}.part-{secrets.token_hex(8)}")
        progress = self.progress
        if progress is not None:
            progress.start(rel, obj.size)
        try:
            self.store.download(
                obj.key, part, None if progress is None else (lambda n: progress.advance(rel, n))
            )
            size = _fsync_file(part)
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
        _fsync_dir(target.parent)
        if progress is not None:
            progress.done(rel)
        if size != obj.size:
            logger.warning(
                "%s changed while syncing (listed %d bytes, got %d); the next sync refetches it",
                obj.key,
                obj.size,
                size,
            )
        return size

    def _is_current(self, rel: str, obj: ObjectInfo, manifest: dict[str, dict[str, Any]]) -> bool:
        entry = manifest.get(rel)
        if not entry or entry.get("etag") != obj.etag:
            return False
        try:
            st = (self.dest_dir / rel).stat()
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == entry.get("size")

    # -- locks and stale parts ---------------------------------------------------------------

    def _file_lock(self, rel: str) -> FileLock:
        # Hashed: relpaths can be deep and long, lock files must be flat and short.
        digest = hashlib.sha256(rel.encode()).hexdigest()[:32]
        return FileLock(self.locks_dir / f"{digest}.lock")

    def _remove_stale_parts(self, files: dict[str, ObjectInfo]) -> None:
        """Delete `.part-*` leftovers of crashed syncs in the folders this sync writes.

        A part file is only stale if nobody holds its target's lock; a live download in
        another process keeps its lock, so its part file is left alone.
        """
        folders = {(self.dest_dir / rel).parent for rel in files}
        for folder in sorted(folders):
            for target in _part_targets(folder):
                rel = target.relative_to(self.dest_dir).as_posix()
                lock = self._file_lock(rel)
                try:
                    lock.acquire(blocking=False)
                except Timeout:
                    continue
                try:
                    _remove_parts_of(target)
                finally:
                    lock.release()

    # -- manifest ----------------------------------------------------------------------------

    def _read_manifest(self) -> dict[str, dict[str, Any]]:
        """Lock-free read: the manifest is only ever replaced whole, never edited in place."""
        try:
            data = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning(
                "ignoring unreadable %s (%s); files will be re-checked", self.manifest_path, exc
            )
            return {}
        files = data.get("files") if isinstance(data, dict) else None
        return files if isinstance(files, dict) else {}

    def _record(self, rel: str, entry: dict[str, Any]) -> None:
        """Read-modify-write the manifest under the folder-wide manifest lock."""
        with FileLock(self.locks_dir / "manifest.lock"):
            for stale in self.dest_dir.glob(f"{MANIFEST_NAME}.tmp-*"):
                stale.unlink(missing_ok=True)  # left by a crash; we hold the lock
            files = self._read_manifest()
            files[rel] = entry
            body = json.dumps(
                {"version": _MANIFEST_VERSION, "files": files}, indent=1, sort_keys=True
            )
            tmp = self.dest_dir / f"{MANIFEST_NAME}.tmp-{secrets.token_hex(8)}"
            try:
                with tmp.open("w") as f:
                    f.write(body)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.manifest_path)
            finally:
                tmp.unlink(missing_ok=True)


def _part_files(folder: Path) -> list[Path]:
    """The `.part-*` files directly in `folder`."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [
        folder / e.name
        for e in entries
        if _PART_RE.match(e.name) and e.is_file(follow_symlinks=False)
    ]


def _part_targets(folder: Path) -> set[Path]:
    """Final paths that have `.part-*` files next to them in `folder`."""
    return {
        folder / m.group("target")
        for part in _part_files(folder)
        if (m := _PART_RE.match(part.name))
    }


def _remove_parts_of(target: Path) -> None:
    """Delete every `.part-*` file of `target`; the caller holds the target's lock."""
    for part in _part_files(target.parent):
        m = _PART_RE.match(part.name)
        if m is not None and m.group("target") == target.name:
            part.unlink(missing_ok=True)


def _fsync_file(path: Path) -> int:
    """Flush `path` to disk; return its size. fsync is per inode, any descriptor will do."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
