"""ObjectStore contract, run against LocalStore and S3Store (moto server)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from store_testkit import S3_CREDENTIALS, StoreSpec, new_bucket

from modelhost.errors import BadRequest, NotFound
from modelhost.store import LocalStore, ObjectInfo, ObjectStore, S3Store, open_store


def test_store_satisfies_protocol(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)


def test_put_get_roundtrip(store: ObjectStore) -> None:
    store.put_bytes("a/b/c.txt", b"hello")
    assert store.get_bytes("a/b/c.txt") == b"hello"
    store.put_bytes("a/b/c.txt", b"replaced")
    assert store.get_bytes("a/b/c.txt") == b"replaced"


def test_list_is_recursive_sorted_and_a_string_prefix(store: ObjectStore) -> None:
    for key in ["b", "a/y/z.bin", "ab", "a/x", "a/y/a"]:
        store.put_bytes(key, key.encode() * 3)
    assert [o.key for o in store.list("a/")] == ["a/x", "a/y/a", "a/y/z.bin"]
    assert [o.key for o in store.list("a")] == ["a/x", "a/y/a", "a/y/z.bin", "ab"]
    assert [o.key for o in store.list()] == ["a/x", "a/y/a", "a/y/z.bin", "ab", "b"]
    assert store.list("nothing/") == []
    info = store.list("a/y/z")[0]
    assert info == ObjectInfo("a/y/z.bin", size=len(b"a/y/z.bin") * 3, etag=info.etag)
    assert info.etag and '"' not in info.etag


def test_etag_changes_when_content_changes(store: ObjectStore) -> None:
    store.put_bytes("k", b"one")
    first = store.list("k")[0].etag
    store.put_bytes("k", b"two")  # same size, written right away
    assert store.list("k")[0].etag != first
    assert store.list("k")[0].etag == store.list("k")[0].etag  # stable while unchanged


def test_upload_file_and_download_with_progress(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    store.upload_file("models/big.bin", src)
    assert store.list("models/")[0].size == len(data)

    seen: list[int] = []
    dest = tmp_path / "dest.bin"
    store.download("models/big.bin", dest, seen.append)
    assert dest.read_bytes() == data
    assert sum(seen) == len(data)
    store.download("models/big.bin", tmp_path / "again.bin")  # progress is optional
    assert (tmp_path / "again.bin").read_bytes() == data


def test_missing_key_is_not_found(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound) as exc:
        store.get_bytes("no/such.key")
    assert "no/such.key" in exc.value.message and str(store) in exc.value.message

    dest = tmp_path / "out.bin"
    with pytest.raises(NotFound, match=r"no/such\.key"):
        store.download("no/such.key", dest)
    assert not dest.exists()

    with pytest.raises(NotFound, match=r"missing\.bin"):
        store.upload_file("x", tmp_path / "missing.bin")


def test_delete_prefix(store: ObjectStore) -> None:
    for key in ["m/1", "m/sub/2", "m/sub/deep/3", "mx/keep", "other/keep"]:
        store.put_bytes(key, b"x")
    assert store.delete_prefix("m/") == 3
    assert [o.key for o in store.list()] == ["mx/keep", "other/keep"]
    assert store.delete_prefix("m/") == 0
    with pytest.raises(BadRequest):
        store.delete_prefix("")


BAD_KEYS = ["../escape", "a/../../escape", "/etc/passwd", "a//b", "", "a/./b", "a/..", "a\\b"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_key_traversal_is_rejected(store: ObjectStore, tmp_path: Path, key: str) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x")
    with pytest.raises(BadRequest):
        store.put_bytes(key, b"x")
    with pytest.raises(BadRequest):
        store.get_bytes(key)
    with pytest.raises(BadRequest):
        store.download(key, tmp_path / "out")
    with pytest.raises(BadRequest):
        store.upload_file(key, src)
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("prefix", ["../", "a/../../", "/abs/"])
def test_prefix_traversal_is_rejected(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(BadRequest):
        store.list(prefix)
    with pytest.raises(BadRequest):
        store.delete_prefix(prefix)


def test_local_store_never_writes_outside_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    for key in ["../outside", "x/../../outside"]:
        with pytest.raises(BadRequest):
            store.put_bytes(key, b"x")
    assert not (tmp_path / "outside").exists()


def test_local_store_hides_its_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("k", b"v")
    (tmp_path / ".k.modelhost-tmp-0123456789abcdef").write_bytes(b"crash leftover")
    assert [o.key for o in store.list()] == ["k"]


# -- open_store ------------------------------------------------------------------------------


def test_open_store_file_url(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/my%20store")
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "my store"
    store.put_bytes("a", b"1")
    assert (tmp_path / "my store" / "a").read_bytes() == b"1"
    assert str(store).startswith("file:///")


def test_open_store_s3_url() -> None:
    store = open_store("s3://bucket/some/prefix/", "http://127.0.0.1:9")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.endpoint_url) == (
        "bucket",
        "some/prefix/",
        "http://127.0.0.1:9",
    )
    bare = open_store("s3://bucket")
    assert isinstance(bare, S3Store)
    assert (bare.prefix, bare.endpoint_url) == ("", None)
    assert str(bare) == "s3://bucket/"


@pytest.mark.parametrize(
    "url",
    ["", "/abs/dir", "http://host/x", "file://relative/dir", "file:relative", "s3://", "gs://b/"],
)
def test_open_store_rejects_other_urls(url: str) -> None:
    with pytest.raises(BadRequest) as exc:
        open_store(url)
    assert "file:///" in exc.value.message and "s3://" in exc.value.message


def test_open_store_s3_uses_default_credential_chain(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_CREDENTIALS["aws_secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", S3_CREDENTIALS["region_name"])
    bucket = new_bucket(s3_endpoint)
    store = open_store(f"s3://{bucket}/base", s3_endpoint)
    store.put_bytes("k", b"v")
    direct = StoreSpec("s3", bucket=bucket, endpoint_url=s3_endpoint).open()
    assert direct.get_bytes("base/k") == b"v"
    assert [o.key for o in store.list()] == ["k"]


def test_s3_missing_bucket_is_not_found(s3_endpoint: str) -> None:
    store = StoreSpec("s3", bucket="no-such-bucket-here", endpoint_url=s3_endpoint).open()
    with pytest.raises(NotFound, match="no-such-bucket-here"):
        store.list()
