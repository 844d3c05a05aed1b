"""Upload a local folder to the object store (``modelhost files upload``), and the file
walk shared with the deploy packer so both skip the same clutter.

Model folders often sit next to (or contain) virtualenvs, git checkouts and notebook
checkpoints; uploading those wastes time and storage and can leak secrets, so they are
skipped by default.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from modelhost.errors import BadRequest, NotFound
from modelhost.store.base import ObjectStore, check_prefix
from modelhost.store.sync import SyncProgress

logger = logging.getLogger("modelhost.store")


@dataclass(frozen=True)
class Excludes:
    """What a folder walk skips.

    `patterns` are shell globs: without a "/" they match any file or folder *name* at any
    depth ("*.pyc", ".git"); with a "/" they match the path relative to the walked folder
    ("data/raw/*"). `skip_venvs` skips every folder that holds a ``pyvenv.cfg``, whatever
    it is called.
    """

    patterns: tuple[str, ...] = ()
    skip_venvs: bool = True

    def with_patterns(self, *more: str) -> Excludes:
        """A copy that also skips `more`."""
        return Excludes(self.patterns + tuple(more), self.skip_venvs)

    def matches(self, name: str, rel: str) -> bool:
        return any(fnmatchcase(rel if "/" in p else name, p) for p in self.patterns)

    def skips_dir(self, path: Path, rel: str) -> bool:
        return self.matches(path.name, rel) or (self.skip_venvs and (path / "pyvenv.cfg").exists())


DEFAULT_EXCLUDES = Excludes(
    patterns=(
        "__pycache__",
        ".git",
        ".venv",
        "venv",
        ".ipynb_checkpoints",
        "*.pyc",
        ".DS_Store",
    ),
    skip_venvs=True,
)


def iter_files(local_dir: Path, exclude: Excludes = DEFAULT_EXCLUDES) -> Iterator[Path]:
    """Yield ``local_dir / relpath`` for every file under `local_dir` that `exclude` keeps.

    The order is stable (folder by folder, names sorted) for reproducible archives;
    ``path.relative_to(local_dir)`` always works since nothing is resolved. Symlinks to
    files are followed (their content is what a model sees); symlinked folders are not
    descended into, so a link to ``/`` cannot balloon an upload.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise NotFound(f"no folder {str(root)!r}")
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        base = here.relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        dirnames[:] = sorted(d for d in dirnames if not exclude.skips_dir(here / d, prefix + d))
        for name in sorted(filenames):
            rel = prefix + name
            path = here / name
            if not exclude.matches(name, rel) and path.is_file():
                yield path


def upload_dir(
    store: ObjectStore,
    local_dir: Path,
    key_prefix: str,
    exclude: Excludes = DEFAULT_EXCLUDES,
    progress: SyncProgress | None = None,
) -> list[str]:
    """Upload every kept file under `local_dir` to ``key_prefix + relpath``; return the keys.

    `key_prefix` names a folder ("cache/my-model" becomes "cache/my-model/"), matching
    what `sync_prefix` later downloads from.
    """
    stripped = key_prefix.strip("/")
    if not stripped:
        raise BadRequest("give a key prefix to upload to, such as 'cache/my-model/'")
    prefix = check_prefix(stripped + "/", store)
    keys: list[str] = []
    root = Path(local_dir)
    for path in iter_files(root, exclude):
        rel = path.relative_to(root).as_posix()
        key = prefix + rel
        size = path.stat().st_size
        if progress is not None:
            progress.start(rel, size)
        store.upload_file(key, path)
        if progress is not None:
            progress.advance(rel, size)
            progress.done(rel)
        logger.debug("uploaded %s to %s as %s", path, store, key)
        keys.append(key)
    logger.info("uploaded %d files from %s to %s under %s", len(keys), local_dir, store, prefix)
    return keys
