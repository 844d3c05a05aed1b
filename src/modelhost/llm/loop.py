"""What the engines' decode loops share: the thread-safe way in (``submit``, ``cancel``,
``stop``), their counters, and handing a step's events to the consumers' event loops.

A loop runs in one thread of its own (`DecodeLoop.run`); the engine front
(`modelhost.llm.front`) starts that thread, and every other thread only calls ``submit``,
``cancel``, ``stop`` and reads ``load`` and ``counters``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from modelhost.llm.stream import Channel, Item, deliver

Seq = TypeVar("Seq")
Outbox = list[tuple[Channel, Item]]


@dataclass(slots=True)
class PrefixStats:
    """Prompts that reused a cached prefix, the prompt tokens that saved, and the idle
    caches copied aside before a fork took them in place (`SlotTable._keep_copy`)."""

    hits: int = 0
    reused_tokens: int = 0
    copies: int = 0


@dataclass(slots=True)
class LoopCounters:
    steps: int = 0
    generated_tokens: int = 0
    prefill_tokens: int = 0
    preemptions: int = 0
    # waits for requests following finished ones (`modelhost.llm.followers`), and those
    # of them that saw one arrive
    follower_waits: int = 0
    follower_catches: int = 0
    prefix: PrefixStats = field(default_factory=PrefixStats)


class DecodeLoop(Generic[Seq]):
    """Runs in its own thread (`run`); `submit`, `cancel` and `stop` are thread-safe."""

    def __init__(self) -> None:
        self._incoming: deque[Seq] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self.counters = LoopCounters()

    # --- any thread -----------------------------------------------------------------------

    def submit(self, seq: Seq) -> None:
        self._incoming.append(seq)
        self._wake.set()

    def cancel(self, seq: Seq) -> None:
        self._cancelled(seq)
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    @property
    def load(self) -> tuple[int, int]:
        """(running, waiting) as last seen by the loop."""
        raise NotImplementedError

    def _cancelled(self, seq: Seq) -> None:
        """Note (thread-safely) that ``seq``'s consumer is gone; the loop drops it."""
        raise NotImplementedError

    # --- loop thread ----------------------------------------------------------------------

    def run(self) -> None:
        raise NotImplementedError

    def _unreachable(self, loop: asyncio.AbstractEventLoop) -> None:
        """``loop`` is closed: drop the requests whose consumers lived on it."""
        raise NotImplementedError

    def _send(self, outbox: Outbox) -> None:
        """Hand one step's events over: one ``call_soon_threadsafe`` per consumer loop."""
        if not outbox:
            return
        first = outbox[0][0].loop
        if all(entry[0].loop is first for entry in outbox):  # the usual case: one consumer loop
            self._hand_over(first, outbox)
            return
        by_loop: dict[asyncio.AbstractEventLoop, Outbox] = {}
        for entry in outbox:
            by_loop.setdefault(entry[0].loop, []).append(entry)
        for loop, items in by_loop.items():
            self._hand_over(loop, items)

    def _hand_over(self, loop: asyncio.AbstractEventLoop, items: Outbox) -> None:
        try:
            loop.call_soon_threadsafe(deliver, items)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening
            self._unreachable(loop)
