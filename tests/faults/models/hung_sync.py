"""A sync predict that never returns (it runs in the worker's thread pool)."""

import os
import time
from pathlib import Path


def predict(payload_dict: dict, **kwargs):
    (Path(os.environ["FAULTS_DIR"]) / "hung-started").write_text("1")
    time.sleep(3600)
    return {"never": True}
