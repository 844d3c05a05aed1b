"""Sequence slots of the backend, and reuse of cached prompt prefixes between them.

A slot whose request finished keeps its KV as a cache. A new request takes a free slot;
if some slot (idle or running) already holds KV for a prefix of its prompt (typically the
same system prompt), that prefix is shared (``seq_copy``, or kept in place when the new
request lands in a slot holding it) instead of being computed again. An idle cache is taken in
place when that loses nothing a later request could want (the prompt repeats it or goes on
from it: the next turn of a chat), or less than copying would move: where the two part ways
after a short common head (the chat template's) and an empty slot is free, the head is
copied there, so the cached question stays answerable if it comes again; after a long
common system prompt the cache is reused where it lies, and the first request admitted in
a step (``copy_forks``) first copies the cache it takes to an empty slot: a lone request
keeps every cached question answerable (the copies fill slots nobody used), a burst of
arrivals copies once, not once each. With a KV stream per
slot (``Backend.separate_streams``) running sequences are kept on neighbouring slots and
a shared prefix is copied to a slot next to them rather than used where it lies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from modelhost.llm.backend import Backend
from modelhost.llm.loop import PrefixStats
from modelhost.llm.sequence import Sequence

_CHUNK = 64
Tokens = TypeVar("Tokens", list[int], str)


def common_prefix(a: Tokens, b: Tokens) -> int:
    """Length of the common prefix of two token lists or strings (compares in C, by
    slices)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    i = 0
    while i + _CHUNK <= n and a[i : i + _CHUNK] == b[i : i + _CHUNK]:
        i += _CHUNK
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(slots=True)
class Slot:
    index: int
    owner: Sequence | None = None
    cached: list[int] = field(default_factory=list)
    """Idle slots: tokens whose KV is still held (positions 0..len-1)."""
    last_used: int = 0

    def tokens(self) -> list[int]:
        return self.owner.cached_tokens() if self.owner is not None else self.cached

    def forked_by(self, shared: int, prompt: int) -> bool:
        """Whether a ``prompt``-token prompt sharing ``shared`` leading tokens with this idle
        cache parts from it before either ends (another question after the same system
        prompt), so that taking the cache in place loses some of it."""
        return shared < min(prompt, len(self.cached))


def _emptiest(slot: Slot) -> tuple[bool, int]:
    """Empty slots first, lowest index first; then the least recently used cache."""
    return (bool(slot.cached), slot.last_used if slot.cached else slot.index)


class SlotTable:
    def __init__(self, backend: Backend, n_slots: int, min_reuse: int, cache_budget: int) -> None:
        self._backend = backend
        self._slots = [Slot(i) for i in range(n_slots)]
        self._streams = backend.separate_streams
        self._min_reuse = max(1, min_reuse)
        self._cache_budget = max(0, cache_budget)
        self._clock = 0
        self.stats = PrefixStats()
        for slot in self._slots:  # the backend may hold KV of an earlier engine
            backend.seq_remove(slot.index)

    def has_free(self) -> bool:
        return any(s.owner is None for s in self._slots)

    def acquire(self, seq: Sequence, copy_forks: bool = False) -> bool:
        """Give ``seq`` a free slot, sharing the longest cached prefix; False if none.

        ``copy_forks``: when ``seq`` takes in place an idle cache it forks from (another
        question after the same system prompt), that cache is first copied whole to an
        empty slot, if one is free, so its own prompt stays answerable from cache."""
        free = [s for s in self._slots if s.owner is None]
        if not free:
            return False
        # choices 2..n of one request share the first one's prompt however short it is
        min_reuse = 1 if seq.after is not None else self._min_reuse
        shared = [common_prefix(seq.prompt, slot.tokens()) for slot in self._slots]
        source, reuse = self._best_prefix(shared, len(seq.prompt), min_reuse)
        target = self._target(free, shared, reuse, len(seq.prompt))
        length = shared[target.index]
        in_place = length >= reuse
        if copy_forks and reuse and in_place and target.forked_by(length, len(seq.prompt)):
            self._keep_copy(target, free)
        reuse = self._prepare(target, source, reuse, in_place)
        if reuse:
            self.stats.hits += 1
            self.stats.reused_tokens += reuse
        self._clock += 1
        target.owner, target.cached, target.last_used = seq, [], self._clock
        seq.slot, seq.n_past, seq.reused = target.index, reuse, reuse
        return True

    def _target(self, free: list[Slot], shared: list[int], reuse: int, prompt: int) -> Slot:
        """The free slot a new sequence takes: an idle cache holding the prefix it reuses
        (taken in place), else the emptiest, the prefix copied there. A cache the prompt
        forks from (the two part ways before either ends: another question after the same
        system prompt) is taken in place only when that loses no more cached tokens than the
        copy would move, or no empty slot is free: a short shared head (the chat template's)
        is copied out and the cached question stays answerable if it comes again, a long
        system prompt is reused where it lies (as llama-server does) instead of copying
        ~25 kB of KV per token for every request. Where the backend batches only
        consecutive slots together, the first choice is a slot that adds no gap between
        running sequences (each gap is one more pass over the weights per step)."""
        can_copy_out = any(not s.cached for s in free)

        def in_place(slot: Slot) -> bool:
            length = shared[slot.index]
            if not reuse or length < reuse:
                return False
            forks = slot.forked_by(length, prompt)
            return not forks or not can_copy_out or len(slot.cached) - length <= reuse

        def cost(slot: Slot) -> tuple[int, bool, bool, int]:
            runs = self._new_runs(slot.index) if self._streams else 0
            return (runs, not in_place(slot), *_emptiest(slot))

        return min(free, key=cost)

    def _keep_copy(self, cache: Slot, free: list[Slot]) -> None:
        """Copy an idle cache about to be taken in place (and cut) to the emptiest empty
        slot, if there is one: one copy of its KV, where recomputing its prompt when it
        comes again would cost a prefill."""
        empty = [s for s in free if not s.cached and s is not cache]
        if not empty:
            return
        spare = min(empty, key=_emptiest)
        self._backend.seq_remove(spare.index)
        self._backend.seq_copy(cache.index, spare.index, len(cache.cached))
        spare.cached, spare.last_used = list(cache.cached), cache.last_used
        self.stats.copies += 1

    def _new_runs(self, index: int) -> int:
        """How the number of runs of consecutive running slots changes if ``index`` runs
        too: -1 when it joins two runs, 0 when it extends one, +1 when it stands alone."""
        slots = self._slots
        below = index > 0 and slots[index - 1].owner is not None
        above = index + 1 < len(slots) and slots[index + 1].owner is not None
        return 1 - below - above

    def release(self, seq: Sequence, keep_cache: bool = True) -> None:
        """Free ``seq``'s slot; its KV stays as a cache unless ``keep_cache`` is False.

        Idle caches are bounded by ``cache_budget`` tokens (oldest dropped first): they take
        room (memory, with separate streams), and in one shared KV buffer cached cells far
        up make every step attend over a longer (masked) window.
        """
        slot = self._slots[seq.slot]
        self._clock += 1
        slot.owner, slot.last_used = None, self._clock
        slot.cached = seq.cached_tokens() if keep_cache else []
        if not keep_cache:
            self._backend.seq_remove(slot.index)
        self.evict_idle(keep=self._cache_budget)

    def evict_idle(self, keep: int = 0) -> int:
        """Drop idle caches, oldest first, until at most ``keep`` cached tokens remain
        in idle slots; returns how many tokens were dropped."""
        idle = sorted(
            (s for s in self._slots if s.owner is None and s.cached), key=lambda s: s.last_used
        )
        held = sum(len(s.cached) for s in idle)
        dropped = 0
        for slot in idle:
            if held - dropped <= keep:
                break
            dropped += len(slot.cached)
            self._backend.seq_remove(slot.index)
            slot.cached = []
        return dropped

    def kv_tokens(self) -> int:
        """Cells in use, counting shared prefixes once per slot (an upper bound)."""
        return sum(s.owner.n_past if s.owner is not None else len(s.cached) for s in self._slots)

    def _best_prefix(
        self, shared: list[int], prompt: int, min_reuse: int
    ) -> tuple[Slot | None, int]:
        """The slot holding the longest prefix of the prompt (``shared``: each slot's common
        prefix with it; an idle one among equals) and the tokens to reuse from it."""
        best: Slot | None = None
        best_len = 0
        for slot, length in zip(self._slots, shared, strict=True):
            if length > best_len or (length == best_len and best and slot.owner is None):
                best, best_len = slot, length
        # at least the prompt's last token is computed, to get its logits
        reuse = min(best_len, prompt - 1)
        if best is None or reuse < min_reuse:
            return None, 0
        return best, reuse

    def _prepare(self, target: Slot, source: Slot | None, reuse: int, in_place: bool) -> int:
        backend = self._backend
        if in_place and reuse:
            if backend.seq_remove(target.index, reuse):
                return reuse
            reuse = 0
        backend.seq_remove(target.index)
        if source is not None and reuse:
            backend.seq_copy(source.index, target.index, reuse)
        return reuse
