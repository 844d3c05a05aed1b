"""What a request's consumer sees: `TokenEvent`s through a `TokenStream`.

The engine thread never touches asyncio objects directly: it hands each step's events to
the consumer's event loop in one ``call_soon_threadsafe`` call (`deliver`), which appends
them to each stream's `Channel` and wakes the waiting consumer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

FinishReason = Literal["stop", "length"]


@dataclass(slots=True, frozen=True)
class Logprob:
    """A generated token's bytes and log-probability, and its best alternatives'."""

    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(slots=True, frozen=True)
class TokenEvent:
    """One generated token. ``text`` may be empty (partial character, held-back text).

    ``logprob`` is set when the request asked for logprobs (None on a final event that
    carries no new token, e.g. a grammar that allowed nothing more). ``cached_tokens``: the
    prompt tokens whose KV came from the prefix cache instead of being computed."""

    text: str
    token_id: int
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    logprob: Logprob | None = None
    cached_tokens: int = 0


Item = TokenEvent | BaseException


class Channel:
    """A single-consumer buffer living on one event loop."""

    __slots__ = ("_items", "_waiter", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: deque[Item] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def push(self, item: Item) -> None:
        """Called on ``self.loop`` only."""
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Item:
        while not self._items:
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


def deliver(batch: list[tuple[Channel, Item]]) -> None:
    """Run on a consumer loop: hand over one step's items."""
    for channel, item in batch:
        channel.push(item)


class TokenStream:
    """Async iterator over one request's `TokenEvent`s; the last has ``finish_reason`` set.

    Stopping early (``aclose()``, cancelling the consuming task, or dropping the stream)
    cancels the request: the engine frees its slot before its next step.
    """

    __slots__ = ("__weakref__", "_channel", "_done", "_on_cancel", "_on_done", "meter")

    def __init__(
        self, channel: Channel, on_cancel: Callable[[], None], on_done: Callable[[], None]
    ) -> None:
        self._channel = channel
        self._on_cancel = on_cancel
        self._on_done = on_done
        self._done = False
        # llm/metrics.RequestMeter, set by the service: told of each item and of an abort.
        self.meter: Any = None

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._channel.get()
        except BaseException:
            self._abort()
            raise
        if self.meter is not None:
            self.meter.item(item)
        if isinstance(item, BaseException):
            self._finish()
            raise item
        if item.finish_reason is not None:
            self._finish()
        return item

    async def aclose(self) -> None:
        self._abort()

    async def __aenter__(self) -> TokenStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._abort()

    def __del__(self) -> None:
        self._abort()

    @property
    def finished(self) -> bool:
        return self._done

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._on_done()

    def _abort(self) -> None:
        if not self._done:
            self._done = True
            if self.meter is not None:
                self.meter.aborted()
            self._on_cancel()
            self._on_done()
