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
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

MAGIC = 0xAF143CD8  # llama_context's io_magic
_META = 12  # bytes per cell: position (i32), sequence-id count (u32) = 1, the id (i32)
_Piece = tuple[int, ...]
_U8P = ctypes.POINTER(ctypes.c_uint8)
_GROW = 1 << 20


class _Layout(Exception):
    """The bytes are not laid out as `cut_to_prefix` expects."""


def cut_to_prefix(buf: np.ndarray, size: int, length: int) -> int | None:
    """Rewrite the sequence state in ``buf[:size]`` (uint8, writable) in place to hold only
    its cells at positions below ``length``; the new size, or None (``buf`` unchanged) when
    the bytes are not the layout described in the module's notes. Everything is checked
    before a byte moves."""
    try:
        plan = _Plan(buf, size)
        moves, counts = plan.read(length)
    except (_Layout, struct.error, ValueError):
        return None
    kept = _compact(buf, moves)
    for at, cells in counts:
        struct.pack_into("<I", buf.data, at, cells)
    return kept


class _Plan:
    """Reads a state's layout and lists the pieces to keep, in order."""

    def __init__(self, buf: np.ndarray, size: int) -> None:
        self.buf, self.size, self.off = buf, size, 0
        self.moves: list[_Piece] = []
        self.kept = 0  # bytes kept before the current offset

    def take(self, n: int, keep: int | None = None) -> int:
        """Step over ``n`` bytes, keeping the first ``keep`` of them (default: all)."""
        start = self.off
        self.off += n
        if self.off > self.size:
            raise _Layout
        keep = n if keep is None else keep
        self.moves.append((start, keep))
        self.kept += keep
        return start

    def number(self, fmt: str, at: int) -> int:
        return int(struct.unpack_from(fmt, self.buf.data, at)[0])

    def read(self, length: int) -> tuple[list[_Piece], list[tuple[int, int]]]:
        """The pieces to keep and, for each stream, where its new cell count goes."""
        if self.number("<I", self.take(4)) != MAGIC:
            raise _Layout
        seq_id = self.number("<i", self.take(4))
        counts: list[tuple[int, int]] = []
        for _ in range(self.number("<I", self.take(4))):  # streams
            count_at = self.kept  # where this stream's cell count lands in the kept bytes
            cells = self.number("<I", self.take(4))
            if cells == 0:
                continue
            if counts:  # one sequence lives in one stream
                raise _Layout
            meta_at = self.off
            meta = self.buf[meta_at : meta_at + cells * _META].view("<i4").reshape(-1, 3)
            keep = int(np.count_nonzero(meta[:, 0] < length))
            if meta.shape[0] != cells or not (
                (meta[:, 1] == 1).all()
                and (meta[:, 2] == seq_id).all()
                and (meta[:keep, 0] < length).all()  # the prefix comes first (slots fill in order)
            ):
                raise _Layout
            counts.append((count_at, keep))
            self.take(cells * _META, keep * _META)
            v_trans, n_layer = self.number("<I", self.take(4)), self.number("<I", self.take(4))
            for _ in range(n_layer if v_trans else 2 * n_layer):  # K (and V): a row per cell
                row = self.number("<Q", self.take(12) + 4)  # type, row size
                self.take(cells * row, keep * row)
            for _ in range(n_layer if v_trans else 0):  # V transposed: per row an element per cell
                head = self.take(12)  # type, element size, embedding rows
                el, rows = self.number("<I", head + 4), self.number("<I", head + 8)
                data = self.take(rows * cells * el, 0)
                self.moves[-1] = (data, keep * el, rows, cells * el)
                self.kept += rows * keep * el
        if self.off != self.size or not counts:
            raise _Layout
        return self.moves, counts


def _compact(buf: np.ndarray, moves: list[_Piece]) -> int:
    """Move the kept pieces down to the front, in order, and return the bytes kept; every
    piece moves down or stays, so moving them in order never overwrites one not yet moved.
    A piece is (offset, bytes), or (offset, bytes per row, rows, row stride) for the first
    bytes of each row of a block (transposed V: each embedding row keeps its first cells)."""
    base = buf.ctypes.data
    to = 0
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
    return to


class StateCopier:
    """Copies a sequence's KV to another stream through a buffer kept between copies.

    ``get(src, pointer, size)`` / ``set(dst, pointer, size)`` are
    ``llama_state_seq_get_data`` / ``..._set_data`` bound to a context; ``size_of(src)`` is
    ``llama_state_seq_get_size``. The buffer grows to the largest state copied (in MiB
    steps) and stays: at most one slot's KV, whose pages are not faulted in again per copy.
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
            self._buf = np.empty(-(-size // _GROW) * _GROW, dtype=np.uint8)
        pointer = self._buf.ctypes.data_as(_U8P)
        if self._get(src, pointer, size) != size:
            return False
        cut = cut_to_prefix(self._buf, size, length)
        if cut is None:  # an unknown layout: the whole sequence (the caller trims it)
            cut = size
        return self._set(dst, pointer, cut) == cut
