"""`upload_dir` and `iter_files`, against LocalStore and S3Store (moto server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelhost.errors import BadRequest, NotFound
from modelhost.store import (
    DEFAULT_EXCLUDES,
    Excludes,
    ObjectStore,
    iter_files,
    sync_prefix,
    upload_dir,
)

KEPT = {
    "model.py": b"def predict(df): return df\n",
    "model.json": b'{"download_files_from": "cache/m/"}',
    "sub/data.txt": b"data",
    "sub/deeper/w.bin": b"\x00\x01",
    "venvy/notes.md": b"a folder whose name merely looks like venv",
}
SKIPPED = [
    "__pycache__/model.cpython-311.pyc",
    "stray.pyc",
    "sub/__pycache__/x.pyc",
    ".git/config",
    ".git/objects/ab/cdef",
    ".venv/lib/site.py",
    "venv/bin/python",
    "myenv/pyvenv.cfg",  # any folder with pyvenv.cfg is a virtualenv
    "myenv/lib/pkg.py",
    "sub/.ipynb_checkpoints/nb-checkpoint.ipynb",
    ".DS_Store",
    "sub/.DS_Store",
]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    for rel, data in KEPT.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    for rel in SKIPPED:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"should not be uploaded")
    return root


def test_upload_dir_uploads_kept_files_only(store: ObjectStore, model_dir: Path) -> None:
    keys = upload_dir(store, model_dir, "cache/m")
    assert sorted(keys) == sorted(f"cache/m/{rel}" for rel in KEPT)
    assert [o.key for o in store.list()] == sorted(keys)
    for rel, data in KEPT.items():
        assert store.get_bytes(f"cache/m/{rel}") == data


def test_upload_then_sync_roundtrip(store: ObjectStore, model_dir: Path, tmp_path: Path) -> None:
    upload_dir(store, model_dir, "/cache/m/")
    dest = tmp_path / "synced"
    sync_prefix(store, "cache/m/", dest)
    for rel, data in KEPT.items():
        assert (dest / rel).read_bytes() == data


def test_upload_dir_needs_a_prefix_and_a_folder(store: ObjectStore, model_dir: Path) -> None:
    with pytest.raises(BadRequest):
        upload_dir(store, model_dir, "")
    with pytest.raises(BadRequest):
        upload_dir(store, model_dir, "../up/")
    with pytest.raises(NotFound):
        upload_dir(store, model_dir / "missing", "cache/m/")


def test_iter_files_yields_paths_under_the_folder(model_dir: Path) -> None:
    files = list(iter_files(model_dir))
    assert sorted(p.relative_to(model_dir).as_posix() for p in files) == sorted(KEPT)
    assert files == list(iter_files(model_dir, DEFAULT_EXCLUDES))  # stable order


def test_custom_excludes(model_dir: Path) -> None:
    only_py = DEFAULT_EXCLUDES.with_patterns("*.txt", "sub/deeper/*", "*.md")
    rels = {p.relative_to(model_dir).as_posix() for p in iter_files(model_dir, only_py)}
    assert rels == {"model.py", "model.json"}

    nothing_skipped = Excludes(patterns=(), skip_venvs=False)
    rels = {p.relative_to(model_dir).as_posix() for p in iter_files(model_dir, nothing_skipped)}
    assert rels == set(KEPT) | set(SKIPPED)


def test_symlinked_folders_are_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "model"
    root.mkdir()
    (root / "model.py").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("s")
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "file-link.txt").symlink_to(outside / "secret.txt")
    rels = {p.relative_to(root).as_posix() for p in iter_files(root)}
    assert rels == {"model.py", "file-link.txt"}
