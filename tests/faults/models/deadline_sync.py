"""A sync predict (runs in the worker's thread pool) that hangs when asked to."""

import os
import threading

_never = threading.Event()


def predict(payload_dict: dict, **kwargs):
    if payload_dict.get("hang"):
        _never.wait(3600)  # a thread cannot be cancelled: the worker abandons it
    return {"ok": True, "pid": os.getpid()}
