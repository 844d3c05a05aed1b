"""Yields `n` chunks of 64 KiB as fast as it can (never awaiting anything), each filled
with its index, and writes how many it has produced to FAULTS_DIR/progress: a slow client
must make it wait."""

import os
from pathlib import Path

DIR = Path(os.environ["FAULTS_DIR"])
CHUNK = 64 * 1024


async def predict(payload_dict: dict, **kwargs):
    n = int(payload_dict["n"])
    progress = DIR / "progress"
    for i in range(n):
        if i % 8 == 0:
            progress.write_text(str(i))
        yield b"%08d" % i * (CHUNK // 8)
    progress.write_text(f"{n} done")
