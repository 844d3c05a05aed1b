"""Giving back the all-zero pages of big buffers made while a llama.cpp context is created
(`lazy_pages`), on a buffer of our own: zero pages leave the resident set and read as zero,
pages holding data stay as they were."""

from __future__ import annotations

import ctypes
import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

from modelhost.llm.engines.llamacpp.lazy_pages import (
    MIN_BYTES,
    create_lazily,
    new_spans,
    release_file_pages,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
SIZE = MIN_BYTES * 2
_PRIVATE_ANON = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))


def test_zero_pages_are_given_back_and_data_pages_kept() -> None:
    libc = ctypes.CDLL(None)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long
    )  # fmt: skip
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    page = mmap.PAGESIZE
    holder: dict[str, int] = {}

    def allocate() -> str:
        # like llama.cpp's KV buffer: one big private anonymous mapping of its own (what
        # glibc's malloc makes for it; mapped here directly, since after a long test session
        # malloc may serve 32 MiB from a free chunk of its heap), zeroed by a memset that makes
        # every page resident, a few pages then written
        address = libc.mmap(None, SIZE, mmap.PROT_READ | mmap.PROT_WRITE, _PRIVATE_ANON, -1, 0)
        assert address and address != ctypes.c_void_p(-1).value
        ctypes.memset(address, 0, SIZE)
        data = np.ctypeslib.as_array((ctypes.c_uint8 * SIZE).from_address(address))
        data[page * 10 : page * 10 + 5] = 7
        data[SIZE - 1] = 9
        holder["address"] = address
        return "context"

    before = _rss_kib()
    made, released = create_lazily(allocate)
    try:
        address = holder["address"]
        data = np.ctypeslib.as_array((ctypes.c_uint8 * SIZE).from_address(address))
        assert made == "context"
        assert released >= SIZE - 4 * page  # all but the written pages and the first
        assert _rss_kib() - before < SIZE // 1024 // 4  # not resident any more
        assert data[page * 10 : page * 10 + 5].tolist() == [7] * 5
        assert data[SIZE - 1] == 9
        assert not data[page * 11 : page * 200].any()  # dropped pages read as zeros
        data[page * 100] = 3  # and can be written again
        assert data[page * 100] == 3
    finally:
        libc.munmap(holder["address"], SIZE)


def test_only_the_new_part_of_a_merged_mapping_is_looked_at() -> None:
    """A new mapping the kernel merged with an older neighbour (which another thread may
    be writing or unmapping right now): only the new address range counts."""
    mb = 1 << 20
    before = {(100 * mb, 110 * mb), (200 * mb, 201 * mb), (300 * mb, 310 * mb)}
    after = {
        (60 * mb, 110 * mb),  # 50 MiB new below the first: merged with it
        (200 * mb, 201 * mb),  # unchanged
        (290 * mb, 320 * mb),  # grown on both sides of the third
        (400 * mb, 432 * mb),  # on its own
    }
    assert new_spans(before, after) == [
        (60 * mb, 100 * mb),
        (290 * mb, 300 * mb),
        (310 * mb, 320 * mb),
        (400 * mb, 432 * mb),
    ]
    assert new_spans(after, after) == []


def test_small_buffers_are_left_alone() -> None:
    made, released = create_lazily(lambda: bytearray(1 << 20))
    assert len(made) == 1 << 20 and released == 0


def test_a_read_only_file_mapping_leaves_the_resident_set_and_reads_the_same(
    tmp_path: Path,
) -> None:
    weights = tmp_path / "weights.bin"
    content = np.arange(SIZE // 4, dtype=np.uint32)
    weights.write_bytes(content.tobytes())
    with open(weights, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = np.frombuffer(mapped, dtype=np.uint32)
        assert int(view.sum(dtype=np.uint64)) == int(content.sum(dtype=np.uint64))  # resident
        before = _rss_kib()
        assert release_file_pages(str(weights.resolve())) >= SIZE
        assert before - _rss_kib() > SIZE // 1024 // 2
        assert np.array_equal(view, content)  # mapped again from the page cache
        del view
