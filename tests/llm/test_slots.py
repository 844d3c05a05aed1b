"""The slot table alone (fake backend): which slot a new request takes, and what KV it
shares. With separate KV streams (``separate_streams``) llama.cpp computes one pass over
the weights per run of consecutive running slots, so a new request fills gaps first."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from itertools import pairwise

import pytest
from fake_backend import FakeBackend

from modelhost.llm.params import SamplingParams
from modelhost.llm.sequence import Sequence
from modelhost.llm.slots import SlotTable
from modelhost.llm.stream import Channel

_channel: Channel


@pytest.fixture(autouse=True)
def _event_loop() -> Iterator[None]:
    """Sequences need a consumer channel; nothing is sent to it here."""
    global _channel
    loop = asyncio.new_event_loop()
    _channel = Channel(loop)
    yield
    loop.close()


def _seq(prompt: list[int]) -> Sequence:
    return Sequence(prompt, SamplingParams(temperature=0), _channel, max_new=8)


def _table(consecutive: bool, slots: int = 6) -> tuple[SlotTable, FakeBackend]:
    backend = FakeBackend(max_seqs=slots)
    backend.separate_streams = consecutive
    return SlotTable(backend, slots, min_reuse=1, cache_budget=10_000), backend


def _run(table: SlotTable, backend: FakeBackend, seq: Sequence) -> Sequence:
    """Admit ``seq`` and put its whole prompt into the fake KV, as the engine's prefill."""
    assert table.acquire(seq)
    kv = backend.kv[seq.slot]
    del kv[seq.n_past :]
    kv.extend(seq.prompt[len(kv) :])
    seq.n_past = len(seq.prompt)
    return seq


def _runs(slots: list[int]) -> int:
    ordered = sorted(slots)
    return 1 + sum(1 for a, b in pairwise(ordered) if b != a + 1)


def test_a_new_request_fills_the_gap_between_running_ones() -> None:
    table, backend = _table(consecutive=True)
    running = [_run(table, backend, _seq([10 + i, 1, 2])) for i in range(4)]
    assert [s.slot for s in running] == [0, 1, 2, 3]
    table.release(running[1])  # slot 1 keeps a cache; 0, 2, 3 still run
    newcomer = _run(table, backend, _seq([30, 31, 32]))
    assert newcomer.slot == 1
    assert _runs([0, 1, 2, 3]) == 1


def test_a_reused_idle_cache_is_copied_next_to_the_running_ones() -> None:
    table, backend = _table(consecutive=True)
    system = list(range(1, 13))
    a = _run(table, backend, _seq(system + [20]))
    b = _run(table, backend, _seq([5, 6, 7]))
    c = _run(table, backend, _seq([8, 9, 10]))
    table.release(a)  # slot 0 holds the system prompt as an idle cache
    table.release(b)
    # slot 1 lies next to running slot 2: the system prompt is copied from 0 to 1 there,
    # even though slot 0's cache could have been taken in place
    follower = _run(table, backend, _seq(system + [21]))
    assert follower.slot in (1, 3)
    assert follower.reused == len(system)
    assert backend.copies[-1] == (0, follower.slot, len(system))
    assert backend.kv[follower.slot][: len(system)] == system
    assert _runs([c.slot, follower.slot]) == 1


def test_without_consecutive_batching_a_prompt_going_on_from_a_cache_takes_it_in_place() -> None:
    table, backend = _table(consecutive=False)
    system = list(range(1, 13))
    a = _run(table, backend, _seq(system + [20]))
    _run(table, backend, _seq([5, 6, 7]))
    c = _run(table, backend, _seq([8, 9, 10]))
    table.release(a)
    follower = _run(table, backend, _seq(system + [20, 21, 22]))  # the chat's next turn
    assert follower.slot == 0 and follower.reused == len(system) + 1
    assert not backend.copies
    assert c.slot == 2


def test_a_prompt_forking_from_a_cache_copies_the_prefix_and_keeps_the_cache() -> None:
    """Another question after the same short head (the chat template's): the first question
    stays cached whole, so asking it again computes one token, not the question."""
    table, backend = _table(consecutive=False)
    head = [1, 2, 3, 4]
    question = head + [20, 22, 23, 24, 25, 26]
    a = _run(table, backend, _seq(question))
    table.release(a)
    other = _run(table, backend, _seq(head + [21]))
    assert other.slot == 1 and other.reused == len(head)
    assert backend.copies == [(0, 1, len(head))]
    assert backend.kv[0] == question
    table.release(other)
    again = _run(table, backend, _seq(question))
    assert again.slot == 0 and again.reused == len(question) - 1


@pytest.mark.parametrize("consecutive", [False, True])
def test_a_prompt_forking_after_a_long_system_prompt_takes_the_cache_in_place(
    consecutive: bool,
) -> None:
    """Another question after a long shared system prompt: the cache is reused where it
    lies (losing the short question after it) rather than copying the whole prompt's KV."""
    table, backend = _table(consecutive=consecutive)
    system = list(range(1, 13))
    a = _run(table, backend, _seq(system + [20, 22, 23]))
    table.release(a)
    other = _run(table, backend, _seq(system + [21]))
    assert other.slot == 0 and other.reused == len(system)
    assert not backend.copies
    assert backend.kv[0] == system + [21]


@pytest.mark.parametrize("consecutive", [False, True])
def test_copy_forks_keeps_a_copy_of_the_cache_taken_in_place(consecutive: bool) -> None:
    """The first request admitted in a step (``copy_forks``) takes the cache in place as
    before, after copying it whole to an empty slot: the cached question is answered from
    cache when it comes again."""
    table, backend = _table(consecutive=consecutive)
    system = list(range(1, 13))
    question = system + [20, 22, 23]
    a = _run(table, backend, _seq(question))
    table.release(a)
    other = _seq(system + [21])
    assert table.acquire(other, copy_forks=True)
    assert other.slot == 0 and other.reused == len(system)
    assert backend.copies == [(0, 1, len(question))]
    assert backend.kv[1] == question
    table.release(other)
    again = _run(table, backend, _seq(question))
    assert again.slot == 1 and again.reused == len(question) - 1
    assert len(backend.copies) == 1


def test_copy_forks_copies_nothing_when_the_prompt_goes_on_from_the_cache() -> None:
    table, backend = _table(consecutive=False)
    turn = list(range(1, 13))
    table.release(_run(table, backend, _seq(turn)))
    follower = _seq(turn + [20, 21])  # the chat's next turn: nothing of the cache is lost
    assert table.acquire(follower, copy_forks=True)
    assert follower.slot == 0 and not backend.copies


def test_copy_forks_with_no_empty_slot_takes_the_cache_in_place() -> None:
    table, backend = _table(consecutive=False, slots=2)
    system = list(range(1, 13))
    a = _run(table, backend, _seq(system + [20]))
    b = _run(table, backend, _seq([5, 6, 7]))
    table.release(a)
    table.release(b)  # both slots hold caches: nowhere to copy to
    other = _seq(system + [21])
    assert table.acquire(other, copy_forks=True)
    assert other.slot == 0 and other.reused == len(system)
    assert not backend.copies


def test_the_cache_taken_in_place_is_any_idle_one_holding_the_prefix() -> None:
    """Idle caches of the same system prompt next to the running slots and away from them:
    the newcomer takes the one next to them in place, not a copy of either."""
    table, backend = _table(consecutive=True)
    system = list(range(1, 13))
    seqs = [_run(table, backend, _seq(system + [20 + i])) for i in range(5)]
    table.release(seqs[0])  # slot 0: a cache next to the running 1 and 2
    table.release(seqs[3], keep_cache=False)  # slot 3: empty
    table.release(seqs[4])  # slot 4: a cache apart from them
    copies = len(backend.copies)  # the first one's system prompt was copied to the others
    newcomer = _run(table, backend, _seq(system + [30]))
    assert newcomer.slot == 0 and newcomer.reused == len(system)
    assert len(backend.copies) == copies


def test_with_no_empty_slot_a_forking_prompt_takes_the_cache_in_place() -> None:
    table, backend = _table(consecutive=False, slots=3)
    system = list(range(1, 13))
    a = _run(table, backend, _seq(system + [20]))
    _run(table, backend, _seq([5, 6, 7]))
    _run(table, backend, _seq([8, 9, 10]))
    table.release(a)
    follower = _run(table, backend, _seq(system + [21]))
    assert follower.slot == 0 and follower.reused == len(system)
    assert not backend.copies


def test_the_first_request_takes_the_lowest_empty_slot() -> None:
    table, backend = _table(consecutive=True)
    first = _run(table, backend, _seq([1, 2, 3]))
    second = _run(table, backend, _seq([4, 5, 6]))
    assert (first.slot, second.slot) == (0, 1)
