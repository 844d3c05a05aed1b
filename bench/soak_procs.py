"""What the soak counts from /proc about a server: its open file descriptors, its memory,
and the worker and fetch processes it started (found by the server's run folder on their
command line, so processes of other servers on the machine never count)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CHILD_MODULES = ("modelhost.worker", "modelhost.worker.fetch")


@dataclass(frozen=True)
class ProcCounts:
    fds: int
    rss_mb: float
    hwm_mb: float
    workers: int
    fetches: int
    zombies: int  # the server's children that exited and were never reaped

    def row(self) -> dict[str, float]:
        return {
            "fds": self.fds,
            "rss_mb": self.rss_mb,
            "hwm_mb": self.hwm_mb,
            "workers": self.workers,
            "fetches": self.fetches,
            "zombies": self.zombies,
        }


def count(pid: int, home: Path) -> ProcCounts:
    children = children_of(home)
    modules = list(children.values())
    rss, hwm = memory_mb(pid)
    return ProcCounts(
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        rss_mb=rss,
        hwm_mb=hwm,
        workers=modules.count(CHILD_MODULES[0]),
        fetches=modules.count(CHILD_MODULES[1]),
        zombies=len(zombie_children(pid)),
    )


def fd_kinds(pid: int) -> dict[str, int]:
    """The process's open fds by what they are: "socket", "pipe", an anon inode, or the file
    path (so that a change in the count can be told apart: a pool's database file, a socket)."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":[", 1)[0] if ":[" in target else target
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return round(values.get("VmRSS", 0.0), 1), round(values.get("VmHWM", 0.0), 1)


def _stat(pid: str) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[0], int(fields[1])


def children_of(home: Path) -> dict[int, str]:
    """Live worker and fetch processes of the server whose home is `home` (pid → module)."""
    run = str(home / "run") + "/"
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        stat = _stat(entry)
        if stat is None or stat[0] == "Z":
            continue
        for module in CHILD_MODULES:
            if module in args and any(a.startswith(run) for a in args):
                found[int(entry)] = module
    return found


def zombie_children(pid: int) -> list[int]:
    zombies = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(entry)
            if stat is not None and stat == ("Z", pid):
                zombies.append(int(entry))
    return zombies


def worker_pids(home: Path, model: str) -> list[int]:
    """Worker processes serving `model` (its name is in the spec file on their command line)."""
    import json

    pids = []
    for pid, module in children_of(home).items():
        if module != CHILD_MODULES[0]:
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            spec = next(a.decode() for a in argv if a.endswith(b".json"))
            if json.loads(Path(spec).read_text())["name"] == model:
                pids.append(pid)
        except (OSError, StopIteration, ValueError, KeyError):
            continue
    return pids
