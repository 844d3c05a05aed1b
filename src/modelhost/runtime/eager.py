"""Run a coroutine's first step at once, and make a task only if it has to wait.

Most echo-like or CPU-bound `predict`s never wait on anything: run inline, their answer goes
out in the same loop iteration that read the request, with no task to create and schedule.
A coroutine that does wait is handed to `_resume`, which drives it like a task would (this is
what Python 3.12's eager task factory does; modelhost runs on 3.11).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def start_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """None when `coro` finished in its first step; else the task that finishes it."""
    try:
        waiting_on = coro.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_resume(coro, waiting_on))


async def _resume(coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    while True:
        try:
            if waiting_on is None:  # a bare `yield` (asyncio.sleep(0)): give the loop a turn
                await asyncio.sleep(0)
            else:
                await _settled(waiting_on)
        except asyncio.CancelledError as exc:
            try:
                waiting_on = coro.throw(exc)
            except StopIteration:
                return
            continue
        try:
            waiting_on = coro.send(None)  # the coroutine reads the future's result itself
        except StopIteration:
            return


async def _settled(fut: asyncio.Future[Any]) -> None:
    """Wait until `fut` is done, whatever its outcome (the coroutine will see it)."""
    fut._asyncio_future_blocking = False  # as asyncio.Task does once it took the future
    if not fut.done():
        waiter = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda _f: _wake(waiter))
        await waiter


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
