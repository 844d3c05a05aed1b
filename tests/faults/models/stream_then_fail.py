"""A stream that fails after its first piece: its generator raises (`fail`), or it waits
(`wait`) so the test can kill its worker; its first piece names the worker's pid."""

import asyncio
import os


async def predict(payload_dict: dict, **kwargs):
    yield f"pid {os.getpid()}\n"
    if payload_dict.get("fail"):
        raise RuntimeError("the model broke mid-stream")
    if payload_dict.get("wait"):
        await asyncio.sleep(120)
    yield "done\n"
