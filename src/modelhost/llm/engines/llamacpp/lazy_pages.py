"""Keep a llama.cpp worker's resident memory to what it uses.

Loading a GGUF reads the whole file through a read-only mapping, and creating a context
then zeroes the whole KV cache on top of it: the process's peak is weights + every KV cell.
`release_file_pages` first hands back the pages of the weights' mapping (they stay in the
page cache; the first decode maps them again without I/O), so the KV zeroing does not stack
on them. Then `create_lazily` hands back the KV pages nobody has written yet.

llama.cpp allocates the whole KV cache when a context is created and zeroes it, so a worker
holds ``max_seqs x seq_ctx`` cells of memory from the start, used or not. Anonymous memory
whose pages are handed back with ``madvise(MADV_DONTNEED)`` reads as zeros again on the
next access, so dropping pages that hold zeros changes nothing a program can observe; the
kernel then commits each page when a sequence first writes KV into it. Only new anonymous
address ranges of at least ``MIN_BYTES`` that were mapped while the context was created are
looked at: the KV and compute buffers, which glibc serves with a mapping of their own (unless
its heap holds a free chunk as big: then nothing is dropped). Where the kernel merged such a
mapping with an older neighbour, only the new range counts (`new_spans`). Only all-zero pages
are dropped, and the first page of each range (malloc's header) is kept. Linux only;
anywhere else, or on any surprise, nothing is dropped.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import sys
from collections.abc import Callable
from typing import TypeVar

import numpy as np

MIN_BYTES = 16 << 20
_MADV_DONTNEED = 4
_SCAN = 8 << 20  # bytes checked per numpy pass
_log = logging.getLogger(__name__)
T = TypeVar("T")
Mapping = tuple[int, int]


def anonymous_mappings() -> set[Mapping]:
    """(start, end) of this process's private read-write mappings without a file."""
    found: set[Mapping] = set()
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) == 5 and parts[1] == "rw-p":
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    found.add((start, end))
    except OSError:
        pass
    return found


def new_spans(before: set[Mapping], after: set[Mapping]) -> list[Mapping]:
    """Address ranges mapped in ``after`` that no mapping of ``before`` covered. The kernel
    merges a new mapping with an anonymous neighbour of the same protection, so a changed
    range can hold older memory of other owners (say a buffer another thread is freeing or
    writing): only its new part is ours to look at."""
    old = sorted(before)
    spans: list[Mapping] = []
    for start, end in sorted(after - before):
        cur = start
        for old_start, old_end in old:
            if old_end <= cur or old_start >= end:
                continue
            if old_start > cur:
                spans.append((cur, old_start))
            cur = max(cur, old_end)
        if cur < end:
            spans.append((cur, end))
    return spans


def release_file_pages(path: str) -> int:
    """Drop this process's resident pages of read-only mappings of the file ``path`` (its
    bytes stay in the page cache); returns the bytes of the mappings handed back."""
    if not sys.platform.startswith("linux"):
        return 0
    released = 0
    try:
        madvise = _madvise()
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].rstrip("\n") == path and "w" not in parts[1]:
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    if madvise(start, end - start, _MADV_DONTNEED) == 0:
                        released += end - start
    except OSError:
        _log.debug("could not hand back the pages of %s", path, exc_info=True)
    return released


def create_lazily(create: Callable[[], T]) -> tuple[T, int]:
    """Run ``create`` (which allocates a llama.cpp context), then drop the all-zero pages
    of the big mappings it made; returns what it returned and the bytes given back."""
    if not sys.platform.startswith("linux"):
        return create(), 0
    before = anonymous_mappings()
    made = create()
    fresh = [m for m in new_spans(before, anonymous_mappings()) if m[1] - m[0] >= MIN_BYTES]
    released = 0
    try:
        for start, end in fresh:
            released += _drop_zero_pages(start + mmap.PAGESIZE, end)
    except (OSError, ValueError):  # leave the rest resident: this is only a saving
        _log.debug("could not give back untouched KV pages", exc_info=True)
    return made, released


def _madvise() -> Callable[[int, int, int], int]:
    # through PyDLL: the call keeps the GIL, so no Python thread runs between the check
    # and the drop
    fn = ctypes.PyDLL(None, use_errno=True).madvise
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


def _drop_zero_pages(start: int, end: int) -> int:
    page = mmap.PAGESIZE
    madvise = _madvise()
    released = 0
    for chunk in range(start, end, _SCAN):
        size = min(_SCAN, end - chunk)
        words = np.ctypeslib.as_array((ctypes.c_uint64 * (size // 8)).from_address(chunk))
        zero = ~words.reshape(-1, page // 8).any(axis=1)
        # runs of zero pages: where the padded flags change, begins and ends alternate
        edges = np.flatnonzero(np.diff(np.concatenate(([False], zero, [False])).astype(np.int8)))
        for begin, stop in edges.reshape(-1, 2).tolist():
            length = (stop - begin) * page
            if madvise(chunk + begin * page, length, _MADV_DONTNEED) != 0:
                raise OSError(ctypes.get_errno(), "madvise failed")
            released += length
    return released
