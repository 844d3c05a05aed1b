"""Echo whose `init` takes a few seconds: a version that loads slower than an older one."""

import asyncio


async def init(model_meta=None, *args, **kwargs):
    await asyncio.sleep(4)


async def predict(payload_dict: dict, **kwargs):
    return payload_dict
