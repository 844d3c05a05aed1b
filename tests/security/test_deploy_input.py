"""Deploy input, part 1: the uploaded archive (`gateway.deployer.unpack`).

Every archive here is built in the test with `tarfile`, and unpacked for real into
``<tmp>/box/dest``. A refused archive must raise BadRequest / PayloadTooLarge naming the
member, and leave nothing in ``<tmp>/box`` but ``dest`` (the extraction folder).
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelhost.errors import BadRequest, PayloadTooLarge
from modelhost.gateway import deployer
from modelhost.gateway.deployer import unpack

Member = tuple[tarfile.TarInfo, bytes | None]


def _file(name: str, data: bytes = b"data", mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def _dir(name: str, mode: int = 0o755) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    return info, None


def _special(name: str, kind: bytes, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _archive(members: list[Member], mode: str = "w:gz", fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode, format=fmt) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Path]:
    """``box/dest`` is where archives go; after the test ``box`` holds only ``dest``."""
    (tmp_path / "box" / "dest").mkdir(parents=True)
    yield tmp_path / "box"
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["dest"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box"]


def _refused(archive: bytes, box: Path, error: type[Exception] = BadRequest) -> str:
    with pytest.raises(error) as info:
        unpack(archive, box / "dest")
    assert not any(p.is_symlink() for p in (box / "dest").rglob("*"))
    return str(info.value)


# --- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../evil", "leaves the model folder"),
        ("sub/../../evil", "leaves the model folder"),
        ("sub/..", "leaves the model folder"),
        ("..", "leaves the model folder"),
        ("a/./b", "'.' path segment"),
        ("a//b", "empty or '.' path segment"),
        ("..\\evil", "backslash"),
        ("sub\\..\\..\\evil", "backslash"),
        ("C:evil", "absolute or drive-letter path"),
        ("C:\\evil", "backslash"),
    ],
)
def test_member_names_that_leave_the_folder_are_refused(box: Path, name: str, why: str) -> None:
    message = _refused(_archive([_file("model.py"), _file(name)]), box)
    assert repr(name) in message and why in message
    assert "archives may hold only regular files and folders under the root" in message


def test_an_absolute_member_is_refused(box: Path) -> None:
    target = str(box / "abs")  # if it were written, it would land in box, next to dest
    message = _refused(_archive([_file(target)]), box)
    assert repr(target) in message and "absolute" in message
    message = _refused(_archive([_file("/abs")]), box)
    assert "'/abs' is an absolute" in message


def test_a_name_with_a_nul_is_refused(box: Path) -> None:
    info, data = _file("x")
    info.pax_headers = {"path": "ok\x00/../../evil"}  # a pax path record keeps the NUL
    message = _refused(_archive([(info, data)]), box)
    assert "NUL" in message


def test_a_name_that_is_not_utf8_is_refused(box: Path) -> None:
    info, data = _file("caf\udce9")  # surrogate-escaped latin-1 byte, as tarfile reads it
    archive = _archive([(info, data)], fmt=tarfile.GNU_FORMAT)
    message = _refused(archive, box)
    assert "not UTF-8" in message


def test_a_very_long_pax_header_is_refused_before_it_is_read(box: Path) -> None:
    info, data = _file("x")
    info.pax_headers = {"comment": "c" * (deployer.MAX_HEADER_BYTES + 1)}
    message = _refused(_archive([(info, data)]), box)
    assert "extended header" in message


# --- member types -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "linkname", "what"),
    [
        (tarfile.SYMTYPE, "/etc", "a symbolic link"),
        (tarfile.SYMTYPE, "..", "a symbolic link"),
        (tarfile.SYMTYPE, "model.py", "a symbolic link"),
        (tarfile.LNKTYPE, "model.py", "a hard link"),
        (tarfile.LNKTYPE, "../outside", "a hard link"),
        (tarfile.CHRTYPE, "", "a character device"),
        (tarfile.BLKTYPE, "", "a block device"),
        (tarfile.FIFOTYPE, "", "a fifo"),
    ],
)
def test_links_devices_and_fifos_are_refused(
    box: Path, kind: bytes, linkname: str, what: str
) -> None:
    archive = _archive([_file("model.py"), _special("thing", kind, linkname)])
    message = _refused(archive, box)
    assert f"member 'thing' is {what}" in message


def test_a_file_written_through_a_symlink_is_refused(box: Path) -> None:
    (box.parent / "outside").mkdir()
    try:
        archive = _archive(
            [_special("link", tarfile.SYMTYPE, str(box.parent / "outside")), _file("link/evil")]
        )
        _refused(archive, box)
        assert list((box.parent / "outside").iterdir()) == []
    finally:
        (box.parent / "outside").rmdir()


def _cve_2025_4517_archive(escape_levels: int) -> bytes:
    """The published PoC shape: symlinked folders chained until realpath() gives up
    (PATH_MAX), a link climbing back through them, then a link and a file out of the root.
    Python 3.11.7's tarfile "data" filter lets this write ``<dest>/..`` / pwned."""
    component = "d" * 247
    steps = "abcdefghijklmnop"
    members: list[Member] = []
    path = ""
    for step in steps:
        members.append(_dir(os.path.join(path, component)))
        members.append(_special(os.path.join(path, step), tarfile.SYMTYPE, component))
        path = os.path.join(path, component)
    link = os.path.join(*steps, "l" * 254)
    members.append(_special(link, tarfile.SYMTYPE, os.path.join(*[".."] * len(steps))))
    members.append(_special("escape", tarfile.SYMTYPE, link + "/.." * escape_levels))
    members.append(_file("escape/pwned", b"pwned"))
    return _archive(members)


def test_cve_2025_4517_symlink_chain_is_refused(box: Path) -> None:
    message = _refused(_cve_2025_4517_archive(escape_levels=1), box)
    assert "is a symbolic link" in message
    assert not (box / "pwned").exists()


# --- duplicates and overlaps ------------------------------------------------------------


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ([_file("model.py", b"1"), _file("model.py", b"2")], "in the archive twice"),
        ([_file("model.py"), _file("./model.py")], "in the archive twice"),
        ([_dir("sub"), _file("sub")], "in the archive twice (or over a folder)"),
        ([_file("sub/x"), _file("sub")], "in the archive twice (or over a folder)"),
        ([_file("a"), _file("a/b")], "goes through the file 'a'"),
        ([_file("a"), _dir("a")], "a file of that name was packed before it"),
    ],
)
def test_duplicate_and_overlapping_names_are_refused(
    box: Path, members: list[Member], why: str
) -> None:
    assert why in _refused(_archive(members), box)


# --- sizes ------------------------------------------------------------------------------


def test_too_many_files_are_refused(box: Path) -> None:
    members = [_file(f"f{i}", b"") for i in range(deployer.MAX_FILES + 1)]
    message = _refused(_archive(members, mode="w:gz"), box, PayloadTooLarge)
    assert f"over {deployer.MAX_FILES} files" in message


def _gzip(parts: Callable[[], Iterator[bytes]]) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [compressor.compress(part) for part in parts()]
    out.append(compressor.flush())
    return b"".join(out)


def test_a_member_declaring_more_than_the_cap_is_refused_before_reading_it(box: Path) -> None:
    info = tarfile.TarInfo("weights.bin")
    info.size = 8 * 1024**3  # 8 GiB of zeros, claimed; only 1 MiB of them is in the archive

    def parts() -> Iterator[bytes]:
        yield info.tobuf(tarfile.PAX_FORMAT)
        yield bytes(1024 * 1024)

    message = _refused(_gzip(parts), box, PayloadTooLarge)
    assert "over 512 MiB" in message
    assert list((box / "dest").iterdir()) == []


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n"
    length = len(body) + len(str(len(body)))
    length += len(str(length)) - len(str(len(body)))
    return f"{length}{body}".encode()


def _pax_block(kind: bytes, value_chars: int) -> bytes:
    record = _pax_record("comment", "z" * value_chars)
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = kind
    header.size = len(record)
    return header.tobuf(tarfile.USTAR_FORMAT) + record + bytes(-len(record) % 512)


def test_a_gzip_bomb_is_refused_while_inflating(box: Path) -> None:
    """About 640 MB of tar stream in a few MiB of gzip: folder entries named by GNU
    long-name headers padded to 63 KB with NULs. No member declares data, so only the count
    of inflated bytes stops it (before the file count would)."""
    name = b"d\x00" + bytes(63_000)
    longname = tarfile.TarInfo("././@LongLink")
    longname.type = tarfile.GNUTYPE_LONGNAME
    longname.size = len(name)
    block = (
        longname.tobuf(tarfile.GNU_FORMAT)
        + name
        + bytes(-len(name) % 512)
        + _dir("d")[0].tobuf(tarfile.USTAR_FORMAT)
    )
    count = deployer.MAX_FILES

    def parts() -> Iterator[bytes]:
        yield from _file_blocks("model.py", b"x = 1\n")
        for _ in range(count):
            yield block

    archive = _gzip(parts)
    assert len(archive) < 8 * 1024 * 1024 < deployer.MAX_STREAM_BYTES < count * len(block)
    message = _refused(archive, box, PayloadTooLarge)
    assert "over 512 MiB" in message


def test_a_long_chain_of_extended_headers_is_refused(box: Path) -> None:
    """tarfile recurses once per chained header; 10,000 of them must be a 400, not a crash."""

    def parts() -> Iterator[bytes]:
        for _ in range(10_000):
            yield _pax_block(tarfile.XGLTYPE, 100)
        yield from _file_blocks("model.py", b"x = 1\n")

    message = _refused(_gzip(parts), box)
    assert "extended headers" in message


def _file_blocks(name: str, data: bytes) -> Iterator[bytes]:
    info, _ = _file(name, data)
    yield info.tobuf(tarfile.USTAR_FORMAT)
    yield data + bytes(-len(data) % 512)


# --- what is accepted -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz", "w"])
def test_a_nested_folder_extracts_with_fixed_modes(box: Path, mode: str) -> None:
    members = [
        _file(
            "model.py",
            b"async def predict(payload_dict, **kw):\n    return payload_dict\n",
            mode=0o4777,
        ),
        _dir("pkg", mode=0o700),
        _file("pkg/__init__.py", b""),
        _file("pkg/deep/er/data.bin", bytes(range(256)) * 4096, mode=0o600),
        _dir("empty", mode=0o777),
        _dir("pkg"),  # a folder named twice is harmless
    ]
    old_umask = os.umask(0o077)  # the modes are set explicitly, not left to the umask
    try:
        unpack(_archive(members, mode=mode), box / "dest")
    finally:
        os.umask(old_umask)
    dest = box / "dest"
    found = {str(p.relative_to(dest)): p for p in dest.rglob("*")}
    assert sorted(found) == [
        "empty",
        "model.py",
        "pkg",
        "pkg/__init__.py",
        "pkg/deep",
        "pkg/deep/er",
        "pkg/deep/er/data.bin",
    ]
    assert (dest / "model.py").read_bytes().startswith(b"async def predict")
    assert (dest / "pkg/deep/er/data.bin").read_bytes() == bytes(range(256)) * 4096
    for rel, path in found.items():
        mode_bits = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir():
            assert mode_bits == 0o755, rel
        else:
            assert stat.S_ISREG(path.lstat().st_mode) and mode_bits == 0o644, rel


def test_a_tar_of_dot_extracts(box: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """`tar -C folder .` writes "./" and "./model.py"; that is the folder itself."""
    src = tmp_path_factory.mktemp("src")
    (src / "sub").mkdir()
    (src / "model.py").write_text("x = 1\n")
    (src / "sub" / "a.txt").write_text("a")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(src, arcname=".")
    unpack(buffer.getvalue(), box / "dest")
    assert (box / "dest" / "model.py").read_text() == "x = 1\n"
    assert (box / "dest" / "sub" / "a.txt").read_text() == "a"


def test_the_client_archive_extracts(box: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from modelhost.client._packing import pack_model_dir

    src = tmp_path_factory.mktemp("model")
    (src / "model.py").write_text("async def predict(payload_dict, **kw):\n    return {}\n")
    (src / "model.json").write_text('{"download_files_from": "cache/x/"}')
    (src / "lib").mkdir()
    (src / "lib" / "util.py").write_text("X = 1\n")
    unpack(pack_model_dir(src), box / "dest")
    for rel in ("model.py", "model.json", "lib/util.py"):
        assert (box / "dest" / rel).read_bytes() == (src / rel).read_bytes()


@pytest.mark.parametrize(
    "archive",
    [b"", b"not a tar at all", b"\x1f\x8b\x08\x00garbage", b"BZh9garbage"],
    ids=["empty", "text", "bad-gzip", "bad-bzip2"],
)
def test_unreadable_uploads_are_bad_requests(box: Path, archive: bytes) -> None:
    with pytest.raises(BadRequest):
        unpack(archive, box / "dest")


def test_a_truncated_archive_is_a_bad_request(box: Path) -> None:
    archive = _archive([_file("model.py", bytes(100_000))], mode="w")
    message = _refused(archive[:20_000], box)
    assert "not a readable tar archive" in message
