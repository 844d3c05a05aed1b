"""A worker's memory bound: its resident memory polled, SIGKILL past the bound. The gateway
polls its local workers (`MemoryGuard`); a Ray replica's actor polls its worker on its node
(`replica_actor.py`, with `over_bound`).

Measured on the hosts modelhost runs on, the other ways fail: ``RLIMIT_AS`` counts address
space, and torch, CUDA and llama.cpp reserve or map far more than they touch (a GGUF is
mmapped whole), so a useful bound breaks them at import; cgroup v2 ``memory.max`` needs a
delegated, writable cgroup, which containers and plain user services usually lack (this
machine: cgroup v1, not writable). Reading ``/proc/<pid>/statm`` from the gateway works
everywhere, costs about 13 µs per worker per poll (measured), cannot be turned off by model
code, and still acts when the worker's own threads are stuck (a C call holding the GIL). The
price: a worker may exceed its bound for up to one poll period before it is killed.

What counts is the resident set (VmRSS, what ``ps`` and ``top`` show), file pages mapped
by the worker included: weights mmapped from a file count once resident.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from modelhost.supervision.channel import WorkerChannel

log = logging.getLogger("modelhost.supervisor")
POLL_S = 0.5
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024
SETTING = "MODELHOST_WORKER_MEMORY_MB / the deployment's memory_mb"


def resident_mb(pid: int) -> int | None:
    """The process's resident memory in MiB; None if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * PAGE // MB
    except (OSError, IndexError, ValueError):
        return None


def over_bound(pid: int, limit_mb: int) -> str:
    """Why process `pid` must be killed: "" while it is within `limit_mb` (or gone)."""
    used = resident_mb(pid)
    if used is None or used <= limit_mb:
        return ""
    return f"exceeded its memory bound of {limit_mb} MB ({SETTING}): {used} MB resident; killed"


class MemoryGuard:
    """Polls one worker process while it runs; past `limit_mb` it is killed (SIGKILL: it
    may be stuck) and `exceeded` says why, for the supervisor's exit reason and for the
    requests in flight on its `channel`."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        limit_mb: int,
        name: str = "",
        channel: WorkerChannel | None = None,
    ) -> None:
        self.proc = proc
        self.limit_mb = limit_mb
        self.name = name
        self.channel = channel
        self.exceeded = ""  # why it was killed ("" = it was not)
        self._timer: asyncio.TimerHandle | None = None
        if limit_mb > 0:
            self._timer = asyncio.get_running_loop().call_later(POLL_S, self._check)

    def _check(self) -> None:
        self._timer = None
        proc = self.proc
        if proc.returncode is not None:
            return
        exceeded = over_bound(proc.pid, self.limit_mb)
        if exceeded:
            self.exceeded = exceeded
            log.error("worker %s %s", self.name or proc.pid, self.exceeded)
            if self.channel is not None:
                self.channel.lost_because = f"it {self.exceeded}"
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            return
        self._timer = asyncio.get_running_loop().call_later(POLL_S, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
