"""`NumpyBatch.fill`: what llama.cpp reads from the batch, for a decode step of a few
tokens (stored item by item) and for a bigger step (slice copies)."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")

from modelhost.llm.engines.llamacpp.batch import NumpyBatch


def _read(batch: NumpyBatch) -> list[tuple[int, int, int, int]]:
    """The batch as llama.cpp sees it, through the struct's pointers."""
    s = batch.struct
    return [
        (s.token[i], s.pos[i], s.seq_id[i][0], s.logits[i])
        for i in range(s.n_tokens)
        if s.n_seq_id[i] == 1
    ]


@pytest.mark.parametrize("n", [1, 3, 8, 9, 40])
def test_fill_loads_every_field_and_counts_the_outputs(n: int) -> None:
    batch = NumpyBatch(64)
    tokens = [100 + i for i in range(n)]
    positions = [7 + i for i in range(n)]
    seq_ids = [i % 4 for i in range(n)]
    outputs = [i % 3 == 0 for i in range(n)]
    assert batch.fill(tokens, positions, seq_ids, outputs) == sum(outputs)
    expected = [
        (t, p, q, int(o)) for t, p, q, o in zip(tokens, positions, seq_ids, outputs, strict=True)
    ]
    assert _read(batch) == expected


def test_a_short_step_after_a_long_one_is_only_its_own_tokens() -> None:
    batch = NumpyBatch(64)
    batch.fill(list(range(30)), list(range(30)), [1] * 30, [True] * 30)
    assert batch.fill([5], [30], [2], [True]) == 1
    assert _read(batch) == [(5, 30, 2, 1)]


def test_a_step_bigger_than_the_batch_is_refused() -> None:
    batch = NumpyBatch(4)
    with pytest.raises(ValueError, match="capacity 4"):
        batch.fill([1] * 5, [0] * 5, [0] * 5, [False] * 5)
