"""An async predict that never returns."""

import asyncio
import os
from pathlib import Path


async def predict(payload_dict: dict, **kwargs):
    (Path(os.environ["FAULTS_DIR"]) / "hung-started").write_text("1")
    await asyncio.sleep(3600)
    return {"never": True}
