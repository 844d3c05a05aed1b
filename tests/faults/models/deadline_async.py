"""An async predict that hangs when asked to; when it is cancelled it writes the file the
payload names (under /tmp: the worker's sandbox lets it write there)."""

import asyncio
import os
from pathlib import Path


async def predict(payload_dict: dict, **kwargs):
    marker = payload_dict.get("hang")
    if marker:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            Path(marker).write_text("cancelled")
            raise
    return {"ok": True, "pid": os.getpid()}
