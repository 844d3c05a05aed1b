"""The gateway process's own protection from the workers it starts."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger("modelhost.supervision")

PR_SET_DUMPABLE = 4


def protect_gateway_process() -> None:
    """Make the gateway non-dumpable: processes of the same user without CAP_SYS_PTRACE (the
    workers) can then not read /proc/<gateway>/environ, /mem, /fd or /root."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    zero = ctypes.c_ulong(0)
    if libc.prctl(ctypes.c_int(PR_SET_DUMPABLE), zero, zero, zero, zero) != 0:
        # pragma: no cover - prctl(PR_SET_DUMPABLE, 0) does not fail on Linux
        errno = ctypes.get_errno()
        log.warning("could not make the gateway process non-dumpable: errno %s", errno)
