"""A stream whose first chunk never comes when asked to."""

import asyncio


async def predict(payload_dict: dict, **kwargs):
    if payload_dict.get("hang"):
        await asyncio.sleep(3600)
    yield "first\n"
    yield "second\n"
