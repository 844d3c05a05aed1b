"""Cache sync (`sync_prefix`) against LocalStore and S3Store (moto server)."""

from __future__ import annotations

import io
import json
import logging
import multiprocessing as mp
import os
import queue
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from store_testkit import StoreSpec, crash_in_child, sync_in_child

from modelhost.errors import NotFound
from modelhost.store import (
    LogSyncProgress,
    ObjectStore,
    RichSyncProgress,
    SyncProgress,
    sync_model_files,
    sync_prefix,
)
from modelhost.store.sync import LOCKS_DIR_NAME, MANIFEST_NAME

FILES = {
    "config.json": b'{"a": 1}',
    "weights.bin": os.urandom(300_000),
    "tokenizer/vocab.txt": b"a\nb\nc\n",
    "tokenizer/deep/merges.txt": b"x y\n",
}


def _seed(store: ObjectStore, prefix: str = "cache/m/") -> None:
    for rel, data in FILES.items():
        store.put_bytes(prefix + rel, data)
    store.put_bytes("cache/m-large/not-mine.bin", b"sibling with a longer name")
    store.put_bytes("cache/other/x", b"other model")


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """Sync target, apart from the LocalStore root (which also lives in tmp_path)."""
    return tmp_path / "dest"


def _tree(root: Path) -> dict[str, bytes]:
    """Files under `root`, without the sync's own bookkeeping."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME and LOCKS_DIR_NAME not in p.parts
    }


def _parts(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".part-" in p.name]


def test_first_sync_downloads_all_second_none(store: ObjectStore, tmp_path: Path) -> None:
    _seed(store)
    dest = tmp_path / "cache"
    first = sync_prefix(store, "cache/m/", dest)
    assert sorted(first.downloaded) == sorted(FILES)
    assert first.skipped == []
    assert first.bytes == sum(len(v) for v in FILES.values())
    assert _tree(dest) == FILES  # sub-folders kept, prefix stripped, siblings not pulled

    second = sync_prefix(store, "cache/m/", dest)
    assert second.downloaded == []
    assert sorted(second.skipped) == sorted(FILES)
    assert second.bytes == 0


def test_prefix_is_a_folder(store: ObjectStore, dest: Path) -> None:
    _seed(store)
    report = sync_prefix(store, "/cache/m", dest)  # no trailing slash, leading slash
    assert sorted(report.downloaded) == sorted(FILES)
    assert "not-mine.bin" not in _tree(dest)


def test_changed_object_is_the_only_one_refetched(store: ObjectStore, dest: Path) -> None:
    _seed(store)
    sync_prefix(store, "cache/m/", dest)
    store.put_bytes("cache/m/tokenizer/vocab.txt", b"A\nB\nC\n")  # same size, new content
    report = sync_prefix(store, "cache/m/", dest)
    assert report.downloaded == ["tokenizer/vocab.txt"]
    assert len(report.skipped) == len(FILES) - 1
    assert (dest / "tokenizer/vocab.txt").read_bytes() == b"A\nB\nC\n"


def test_new_object_is_fetched(store: ObjectStore, dest: Path) -> None:
    _seed(store)
    sync_prefix(store, "cache/m/", dest)
    store.put_bytes("cache/m/extra/new.txt", b"new")
    assert sync_prefix(store, "cache/m/", dest).downloaded == ["extra/new.txt"]


def test_local_damage_is_repaired(store: ObjectStore, dest: Path) -> None:
    _seed(store)
    sync_prefix(store, "cache/m/", dest)
    (dest / "config.json").unlink()
    (dest / "weights.bin").write_bytes(b"truncated")
    report = sync_prefix(store, "cache/m/", dest)
    assert sorted(report.downloaded) == ["config.json", "weights.bin"]
    assert _tree(dest) == FILES


def test_unreadable_manifest_means_refetch(store: ObjectStore, dest: Path) -> None:
    _seed(store)
    sync_prefix(store, "cache/m/", dest)
    (dest / MANIFEST_NAME).write_text("{not json")
    assert sorted(sync_prefix(store, "cache/m/", dest).downloaded) == sorted(FILES)
    manifest = json.loads((dest / MANIFEST_NAME).read_text())
    assert set(manifest["files"]) == set(FILES)


def test_stale_part_files_are_never_used_and_get_cleaned(store: ObjectStore, dest: Path) -> None:
    _seed(store)
    dest.joinpath("tokenizer").mkdir(parents=True)
    planted = [
        dest / "weights.bin.part-0123456789abcdef",
        dest / "tokenizer/vocab.txt.part-fedcba9876543210",
        dest / "tokenizer/gone.txt.part-00000000aaaaaaaa",  # target not in the store
    ]
    for part in planted:
        part.write_bytes(b"garbage from a crashed sync")
    report = sync_prefix(store, "cache/m/", dest)
    assert sorted(report.downloaded) == sorted(FILES)
    assert _tree(dest) == FILES
    assert _parts(dest) == []


def test_crash_mid_download_leaves_no_final_file(store_spec: StoreSpec, tmp_path: Path) -> None:
    store = store_spec.open()
    big = os.urandom(3 * 1024 * 1024)
    store.put_bytes("cache/big/model.bin", big)
    dest = tmp_path / "cache"

    child = mp.get_context("spawn").Process(
        target=crash_in_child, args=(store_spec, "cache/big/", str(dest))
    )
    child.start()
    child.join(60)
    assert child.exitcode == 3  # died inside the download, no cleanup ran
    assert not (dest / "model.bin").exists()
    assert len(_parts(dest)) == 1

    report = sync_prefix(store, "cache/big/", dest)
    assert report.downloaded == ["model.bin"]
    assert (dest / "model.bin").read_bytes() == big
    assert _parts(dest) == []


def _collect(procs: list[Any], out: Any, timeout: float) -> list[Any]:
    """One result per child; fails fast (not after `timeout`) when a child dies."""
    results: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(results) < len(procs):
        assert time.monotonic() < deadline, "sync children did not finish in time"
        try:
            results.append(out.get(timeout=0.5))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not dead, f"a sync child failed with exit code {dead}"
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return results


def test_two_processes_fetch_each_file_once(store_spec: StoreSpec, tmp_path: Path) -> None:
    store = store_spec.open()
    names = [f"shard-{i}.bin" for i in range(6)]
    blobs = {name: os.urandom(200_000) for name in names}
    for name, data in blobs.items():
        store.put_bytes(f"cache/shared/{name}", data)
    dest = tmp_path / "cache"

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=sync_in_child, args=(store_spec, "cache/shared/", str(dest), barrier, out)
        )
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = _collect(procs, out, timeout=120)

    downloads = Counter(rel for _, downloaded, _ in results for rel in downloaded)
    assert downloads == Counter(names)  # every file, each exactly once in total
    for _, downloaded, skipped in results:
        assert sorted(downloaded + skipped) == names
    assert _tree(dest) == blobs
    manifest = json.loads((dest / MANIFEST_NAME).read_text())
    assert sorted(manifest["files"]) == names  # no update lost to a concurrent write


def test_prefix_without_objects_is_not_found(store: ObjectStore, dest: Path) -> None:
    _seed(store)
    with pytest.raises(NotFound) as exc:
        sync_prefix(store, "cache/x/", dest)
    msg = exc.value.message
    assert "'cache/x/'" in msg and str(store) in msg
    assert "modelhost files upload LOCAL_DIR cache/x/" in msg


@pytest.mark.parametrize("prefix", ["", "/"])
def test_empty_prefix_is_not_found(store: ObjectStore, dest: Path, prefix: str) -> None:
    _seed(store)
    with pytest.raises(NotFound, match="modelhost files upload"):
        sync_prefix(store, prefix, dest)


# -- progress --------------------------------------------------------------------------------


class RecordingProgress:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, int]] = []

    def start(self, file: str, total: int) -> None:
        self.events.append(("start", file, total))

    def advance(self, file: str, n: int) -> None:
        self.events.append(("advance", file, n))

    def done(self, file: str) -> None:
        self.events.append(("done", file, 0))


def test_progress_is_told_about_downloads_only(store: ObjectStore, dest: Path) -> None:
    _seed(store)
    progress = RecordingProgress()
    assert isinstance(progress, SyncProgress)
    sync_prefix(store, "cache/m/", dest, progress)
    for rel, data in FILES.items():
        mine = [e for e in progress.events if e[1] == rel]
        assert mine[0] == ("start", rel, len(data))
        assert mine[-1] == ("done", rel, 0)
        assert sum(n for kind, _, n in mine if kind == "advance") == len(data)
    again = RecordingProgress()
    sync_prefix(store, "cache/m/", dest, again)
    assert again.events == []


def test_log_progress(store: ObjectStore, dest: Path, caplog: pytest.LogCaptureFixture) -> None:
    store.put_bytes("cache/l/big.bin", os.urandom(2 * 1024 * 1024))
    store.put_bytes("cache/l/small.txt", b"tiny")
    caplog.set_level(logging.INFO, logger="modelhost.store")
    sync_prefix(store, "cache/l/", dest, LogSyncProgress(big_file_bytes=1024 * 1024))
    lines = [r.getMessage() for r in caplog.records if r.name == "modelhost.store"]
    assert any(line.startswith("downloading big.bin") for line in lines)
    assert any(line.startswith("downloaded big.bin") for line in lines)
    assert any(line.startswith("downloaded small.txt") for line in lines)
    assert not any(line.startswith("downloading small.txt") for line in lines)
    percent_lines = [line for line in lines if line.startswith("big.bin: ")]
    assert 1 <= len(percent_lines) <= 10


def test_rich_progress(store: ObjectStore, dest: Path) -> None:
    from rich.console import Console

    _seed(store)
    out = io.StringIO()
    with RichSyncProgress(Console(file=out, force_terminal=False, width=120)) as progress:
        sync_prefix(store, "cache/m/", dest, progress)
    assert "weights.bin" in out.getvalue()


# -- model.json ------------------------------------------------------------------------------


def test_sync_model_files(store: ObjectStore, tmp_path: Path) -> None:
    _seed(store)
    cache = tmp_path / "cache"
    assert sync_model_files(store, {}, cache) is None
    assert sync_model_files(store, {"download_files_from": ""}, cache) is None

    report = sync_model_files(store, {"download_files_from": "cache/m/"}, cache)
    assert report is not None and sorted(report.downloaded) == sorted(FILES)
    assert _tree(cache) == FILES

    elsewhere = tmp_path / "elsewhere"
    config = {"download_files_from": "cache/m/", "download_files_to": str(elsewhere)}
    sync_model_files(store, config, cache)
    assert _tree(elsewhere) == FILES

    sync_model_files(store, {**config, "download_files_to": "rel/dir"}, cache)
    assert _tree(cache / "rel/dir") == FILES
