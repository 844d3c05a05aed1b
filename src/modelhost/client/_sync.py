"""Run the SDK's async core from synchronous code.

The SDK is written once, async; each sync function is a one-line call to `run_sync`.
Inside an already running event loop (Jupyter, an async web app) ``asyncio.run`` is not
allowed, so the coroutine then runs on its own loop in a short-lived worker thread. The
caller blocks either way, which is what a sync call promises.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion and return its result, whatever loop the caller is in."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelhost-sync") as pool:
        return pool.submit(asyncio.run, coro).result()
