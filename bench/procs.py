"""Starting a benchmarked server as a child process, and ending all of it afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def server_process(
    cmd: list[str],
    *,
    log: Path | None = None,
    env: dict[str, str] | None = None,
    leftovers: str | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` from the repository root in its own session, output to ``log`` (or
    nowhere). On exit its process group gets SIGTERM, then SIGKILL after 30 s; with
    ``leftovers``, every process whose command line contains it is killed too (LitServe's
    and Ray's servers leave processes outside the group that would keep a core busy
    through the next measurements)."""
    _exit_on_sigterm()
    with open(log if log is not None else os.devnull, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if leftovers:
            subprocess.run(["pkill", "-9", "-f", leftovers], check=False)


def _exit_on_sigterm() -> None:
    """SIGTERM ends the benchmark as Ctrl-C does, through its `finally` blocks: the servers
    it started (each in a session of its own, out of reach of the terminal's signals) are
    stopped with it instead of being left running."""
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
