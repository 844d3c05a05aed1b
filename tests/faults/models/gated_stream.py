"""Streams one piece, then waits for the test's `release` file before the rest (so the test
decides when the stream may end); `cleanup` leaves a marker file."""

import asyncio
import os
from pathlib import Path

DIR = Path(os.environ["FAULTS_DIR"])


async def predict(payload_dict: dict, **kwargs):
    yield "piece 0\n"
    for _ in range(1200):  # at most ~60 s
        if (DIR / "release").exists():
            break
        await asyncio.sleep(0.05)
    for i in range(1, int(payload_dict.get("n", 5))):
        await asyncio.sleep(0.01)
        yield f"piece {i}\n"


async def cleanup(*args, **kwargs):
    (DIR / f"cleanup-{os.getpid()}").write_text("cleanup ran\n")
