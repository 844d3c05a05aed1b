"""Allocates (and touches) `mb` MiB when asked, holds it for `hold_s`, then answers."""

import os
import time


def predict(payload_dict: dict, **kwargs):
    mb = int(payload_dict.get("mb", 0))
    held = b"x" * (mb * 1024 * 1024)
    time.sleep(float(payload_dict.get("hold_s", 0)))
    return {"ok": True, "pid": os.getpid(), "held": len(held)}
