"""Answers at once, or streams ten pieces over ~0.5 s when the payload asks for a stream."""

import asyncio


async def predict(payload_dict: dict, **kwargs):
    if not payload_dict.get("stream"):
        return {"ok": True}
    return _pieces()


async def _pieces():
    for i in range(10):
        await asyncio.sleep(0.05)
        yield f"piece {i}\n"
