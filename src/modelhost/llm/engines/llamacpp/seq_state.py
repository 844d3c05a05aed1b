"""Copying a shared prefix between KV streams: one sequence's saved state, cut to a prefix.

With a KV stream per slot, llama.cpp copies KV between slots only whole: a stream
(``llama_memory_seq_cp``) or a sequence's every cell (``llama_state_seq_get_data`` then
``..._set_data``). Sharing a 30-token chat-template head out of a 1,100-token cache that way
writes 1,100 cells into the target (25 MB for SmolLM2-135M, first-touch page faults where the
slot is new) only for all but 30 of them to be removed again. `StateCopier` saves the source's
state into a buffer it keeps (no fresh 25 MB allocation per copy either), `cut_to_prefix`
drops the cells at positions past the prefix in place, and only the prefix is loaded.

The bytes are llama.cpp's sequence-state format (``llama_kv_cache::state_write``): a header
(magic, sequence id, stream count), then per stream a cell count, per cell its position and
sequence ids, and per layer a K block (type, row size, one row per cell) and a V block (the
same, or with V transposed: type, element size, rows of the embedding, one element per cell
in each). `cut_to_prefix` recognises exactly that layout for one stream of cells with one
sequence id each, and checks that it accounts for every byte; anything else (another cache
type, a format change in a newer llama.cpp) answers None, and the caller copies the whole
sequence and trims it instead.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import numpy as np

MAGIC = 0xAF143CD8  # llama_context's io_magic
_META = 12  # bytes per cell: position (i32), sequence-id count (u32) = 1, the id (i32)
_Piece = tuple[int, ...]
_U8P = ctypes.POINTER(ctypes.c_uint8)


class _Layout(Exception):
    """The bytes are not laid out as `cut_to_prefix` expects."""


class _Reader:
    def __init__(self, buf: np.ndarray, size: int) -> None:
        self.buf, self.size, self.off = buf, size, 0

    def take(self, n: int) -> int:
        start = self.off
        self.off += n
        if self.off > self.size:
            raise _Layout
        return start

    def u32(self) -> int:
        return int(self.buf[self.take(4) :][:4].view("<u4")[0])

    def u64(self) -> int:
        return int(self.buf[self.take(8) :][:8].view("<u8")[0])


def cut_to_prefix(buf: np.ndarray, size: int, length: int) -> int | None:
    """Rewrite the sequence state in ``buf[:size]`` (uint8, writable) in place to hold only
    its cells at positions below ``length``; the new size, or None (``buf`` unchanged) when
    the bytes are not the layout described in the module's notes. Everything is checked
    before a byte moves."""
    try:
        return _cut(buf, size, length)
    except _Layout:
        return None


def _cut(buf: np.ndarray, size: int, length: int) -> int:
    r = _Reader(buf, size)
    if r.u32() != MAGIC:
        raise _Layout
    seq_id = int(buf[r.take(4) :][:4].view("<i4")[0])
    n_stream = r.u32()
    moves: list[_Piece] = []  # what is kept, in order
    writes: list[tuple[int, int]] = []  # (offset in the kept bytes, new cell count)
    kept = 12
    found = False
    for _ in range(n_stream):
        count_at = r.take(4)
        cells = int(buf[count_at : count_at + 4].view("<u4")[0])
        writes.append((kept, cells))
        moves.append((count_at, 4))
        kept += 4
        if cells == 0:
            continue
        if found:  # one sequence lives in one stream
            raise _Layout
        found = True
        meta_at = r.take(cells * _META)
        meta = buf[meta_at : meta_at + cells * _META].view("<i4").reshape(cells, 3)
        if not ((meta[:, 1] == 1).all() and (meta[:, 2] == seq_id).all()):
            raise _Layout
        keep = int(np.count_nonzero(meta[:, 0] < length))
        if not (meta[:keep, 0] < length).all():
            raise _Layout  # the prefix's cells do not come first (not seen: slots fill in order)
        writes[-1] = (writes[-1][0], keep)
        moves.append((meta_at, keep * _META))
        kept += keep * _META
        head = r.take(8)  # V transposed, layer count
        v_trans, n_layer = (int(x) for x in buf[head : head + 8].view("<u4"))
        moves.append((head, 8))
        kept += 8
        for _layer in range(n_layer):  # K: type, row size, a row per cell
            at = r.take(12)
            row = int(buf[at + 4 : at + 12].view("<u8")[0])
            data = r.take(cells * row)
            moves += [(at, 12), (data, keep * row)]
            kept += 12 + keep * row
        for _layer in range(n_layer):
            if not v_trans:  # as K
                at = r.take(12)
                row = int(buf[at + 4 : at + 12].view("<u8")[0])
                data = r.take(cells * row)
                moves += [(at, 12), (data, keep * row)]
                kept += 12 + keep * row
                continue
            at = r.take(12)  # type, element size, embedding rows; per row an element per cell
            el, rows = (int(x) for x in buf[at + 4 : at + 12].view("<u4"))
            data = r.take(rows * cells * el)
            moves += [(at, 12), (data, keep * el, rows, cells * el)]
            kept += 12 + rows * keep * el
    if r.off != size or not found:
        raise _Layout
    _compact(buf, moves)
    for at, cells in writes:
        buf[at : at + 4].view("<u4")[0] = cells
    return kept


def _compact(buf: np.ndarray, moves: list[_Piece]) -> None:
    """Move the kept pieces down to the front (after the 12-byte header), in order; every
    piece moves down or stays, so moving them in order never overwrites one not yet moved.
    A piece is (offset, bytes), or (offset, bytes per row, rows, row stride) for the first
    bytes of each row of a block (transposed V: each embedding row keeps its first cells)."""
    base = buf.ctypes.data
    to = 12
    for start, n, *strided in moves:
        if strided:
            rows, stride = strided
            block = buf[start : start + rows * stride].reshape(rows, stride)[:, :n]
            # numpy sees that the two views overlap and copies through a temporary
            buf[to : to + rows * n].reshape(rows, n)[...] = block
            to += rows * n
            continue
        if start != to and n:
            ctypes.memmove(base + to, base + start, n)
        to += n


class StateCopier:
    """Copies a sequence's KV to another stream through a buffer kept between copies.

    ``get(src, pointer, size)`` / ``set(dst, pointer, size)`` are
    ``llama_state_seq_get_data`` / ``..._set_data`` bound to a context; ``size_of(src)`` is
    ``llama_state_seq_get_size``. The buffer grows to the largest state copied and stays
    (at most one slot's KV); pages touched once are not faulted in again on the next copy.
    """

    def __init__(
        self,
        size_of: Callable[[int], int],
        get: Callable[[int, Any, int], int],
        set_: Callable[[int, Any, int], int],
    ) -> None:
        self._size_of, self._get, self._set = size_of, get, set_
        self._buf = np.empty(0, dtype=np.uint8)

    def copy_prefix(self, src: int, dst: int, length: int) -> bool:
        """Load the cells of ``src`` at positions below ``length`` into ``dst`` (whose own
        cells are replaced); False if llama.cpp refused, and ``dst`` holds nothing then."""
        size = self._size_of(src)
        if self._buf.size < size:
            self._buf = np.empty(max(size, self._buf.size * 2), dtype=np.uint8)
        pointer = self._buf.ctypes.data_as(_U8P)
        if self._get(src, pointer, size) != size:
            return False
        cut = cut_to_prefix(self._buf, size, length)
        if cut is None:  # an unknown layout: the whole sequence (the caller trims it)
            cut = size
        return self._set(dst, pointer, cut) == cut
