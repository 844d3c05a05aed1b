"""Pack a model folder into the gzip tar that the deploy endpoint accepts.

Which files go in is decided by `modelhost.store.upload.iter_files` with its default
excludes (caches, VCS folders, virtualenvs), so ``modelhost files upload`` and deploy agree.
Owner names and ids are dropped from the archive: they mean nothing on the server and
leak local account names.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from modelhost.errors import InvalidModelFolder


def pack_model_dir(model_dir: Path) -> bytes:
    """The gzip tar of `model_dir`, paths relative to it; checks there is something to serve."""
    from modelhost.store.upload import DEFAULT_EXCLUDES, iter_files  # owned by `store`

    root = Path(model_dir).expanduser().resolve()
    if not root.is_dir():
        raise InvalidModelFolder(f"{root} is not a folder; pass model_dir= the model folder")
    if not (root / "model.py").is_file() and not (root / "model.json").is_file():
        raise InvalidModelFolder(
            f"{root} has neither model.py nor model.json; run deploy from the model folder "
            "or pass model_dir="
        )
    buffer = io.BytesIO()
    # dereference: a symlinked file goes in as its content (the server accepts no links)
    with tarfile.open(fileobj=buffer, mode="w:gz", dereference=True) as tar:
        for path in iter_files(root, DEFAULT_EXCLUDES):  # yields root / relpath, stable order
            tar.add(path, arcname=path.relative_to(root).as_posix(), filter=_anonymous)
    return buffer.getvalue()


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
