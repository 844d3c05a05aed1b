"""Answers at once, or, when the payload names a `gate` file, first writes `<gate>.started`
and then waits (up to ~60 s) until the gate file exists."""

import asyncio
import os
from pathlib import Path


async def predict(payload_dict: dict, **kwargs):
    gate = payload_dict.get("gate")
    if gate:
        Path(f"{gate}.started.{payload_dict.get('n', 0)}").write_text("1")
        for _ in range(1200):
            if os.path.exists(gate):
                break
            await asyncio.sleep(0.05)
    return {"ok": True, "pid": os.getpid()}
