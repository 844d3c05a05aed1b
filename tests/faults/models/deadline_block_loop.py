"""An async predict that blocks its event loop: the worker cannot even see its deadline."""

import os
import time


async def predict(payload_dict: dict, **kwargs):
    time.sleep(float(payload_dict.get("block", 0)))
    return {"ok": True, "pid": os.getpid()}
