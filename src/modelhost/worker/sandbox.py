"""The worker's sandbox: model code must not get the control plane's rights.

A worker runs as the gateway's user, so without this its model code could read `jwt.key`
and `registry.db`, talk to other models' worker sockets and rewrite other models' files in
the local object store. Before model.py is imported, `enter` therefore (Linux only):

1. enters a new mount namespace (as root `unshare(CLONE_NEWNS)`; otherwise a new user
   namespace as well, mapping only our own uid/gid), with every mount made private so
   nothing done here leaks back to the host;
2. hides the control plane: a tmpfs over each hidden directory (MODELHOST_HOME, the SQLite
   registry's folder, the local store root) and `/dev/null` over each hidden file, then
   bind-mounts back only what the model needs (its version folder, the cache dir, its own
   HOME) from file descriptors opened before the mask went up;
3. drops every capability (bounding set, ambient, effective/permitted/inheritable), sets
   PR_SET_NO_NEW_PRIVS and makes the process non-dumpable, so model code can neither unmount
   the mask nor gain capabilities by exec, and other workers cannot ptrace it.

It must run while the process has one thread: namespaces, capabilities and the no-new-privs
bit are per thread, and threads started earlier would keep the unrestricted view.
The gateway makes itself non-dumpable at start (`supervision/protect.py`), so that
/proc/<gateway>/environ, /fd and /root stay unreadable for a worker even where its
capabilities could not be dropped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("modelhost.sandbox")

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_KEEP_CAPS, SECBIT_NO_CAP_AMBIENT_RAISE and
# their _LOCKED bits: uid 0 gets no capabilities back by exec, ever.
SECUREBITS_LOCKED = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x80
LINUX_CAPABILITY_VERSION_3 = 0x20080522
MODES = ("auto", "required", "off")


class SandboxUnavailable(Exception):
    """The kernel refused the namespace (seccomp, no user namespaces): nothing was changed."""


class SandboxError(Exception):
    """The sandbox was set up only in part; the worker must not run model code."""


@dataclass
class SandboxPlan:
    """What to hide and what to show again, as absolute paths."""

    hide: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    workdir: str = ""


@dataclass
class SandboxReport:
    namespace: bool = False
    hidden: list[str] = field(default_factory=list)
    not_hidden: list[str] = field(default_factory=list)
    capabilities_dropped: bool = False

    def describe(self) -> str:
        parts = [f"hidden: {', '.join(self.hidden) or 'nothing'}"]
        if self.not_hidden:
            parts.append(f"NOT hidden: {', '.join(self.not_hidden)}")
        parts.append("capabilities dropped" if self.capabilities_dropped else "capabilities kept")
        return "; ".join(parts)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _prctl(option: int, arg: int = 0) -> None:
    libc = _libc()
    _check(
        libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(arg),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        ),
        f"prctl({option})",
    )


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    libc = _libc()
    result = libc.mount(
        source.encode() if source else None,
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    _check(result, f"mount({source!r} -> {target!r})")


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _unshare() -> None:
    """A private mount namespace; without root, inside a user namespace of our own."""
    libc = _libc()
    if os.geteuid() == 0 and libc.unshare(CLONE_NEWNS) == 0:
        return
    first = ctypes.get_errno()
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        errno = ctypes.get_errno() or first
        raise SandboxUnavailable(f"unshare of a mount namespace refused: {os.strerror(errno)}")
    try:
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    except OSError as exc:
        raise SandboxError(f"could not map uid/gid in the user namespace: {exc}") from exc


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _runtime_dirs() -> list[str]:
    """Folders the worker itself runs from; hiding one would break the interpreter."""
    import modelhost

    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.__file__)}
    found.add(os.path.dirname(os.path.dirname(os.path.abspath(modelhost.__file__))))
    return [os.path.realpath(p) for p in found]


def _hide_targets(hide: list[str], report: SandboxReport) -> list[str]:
    """Existing paths to mask, outermost first, without ones already inside a masked dir."""
    runtime = _runtime_dirs()
    chosen: list[str] = []
    for raw in sorted({os.path.realpath(p) for p in hide}, key=len):
        if not os.path.exists(raw) or any(_under(raw, c) for c in chosen if os.path.isdir(c)):
            continue
        if os.path.isdir(raw) and any(_under(r, raw) for r in runtime):
            report.not_hidden.append(f"{raw} (holds the Python installation)")
            continue
        chosen.append(raw)
    return chosen


def _mask(path: str) -> None:
    if os.path.isdir(path):
        _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    else:
        _mount("/dev/null", path, None, MS_BIND)


def _bind_back(fds: dict[str, int], masked: list[str]) -> list[str]:
    """Mount each kept folder that a mask covered back in place, from its fd."""
    bound: list[str] = []
    for path in sorted(fds, key=len):
        inside_mask = any(_under(path, m) and path != m for m in masked if os.path.isdir(m))
        if not inside_mask or any(_under(path, b) for b in bound):
            continue
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{fds[path]}", path, None, MS_BIND | MS_REC)
        bound.append(path)
    return bound


def _hide(plan: SandboxPlan, report: SandboxReport) -> None:
    keep = sorted({os.path.realpath(p) for p in plan.keep if p and os.path.isdir(p)}, key=len)
    targets = _hide_targets(plan.hide, report)
    # A kept folder that itself holds a hidden path (download_files_to = MODELHOST_HOME...)
    # would undo the mask: it is not shown again.
    for path in list(keep):
        if any(_under(t, path) for t in targets):
            report.not_hidden.append(f"{path} (not shown: it holds a hidden path)")
            keep.remove(path)
    fds = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in keep}
    try:
        for target in targets:
            _mask(target)
            report.hidden.append(target)
        _bind_back(fds, targets)
    finally:
        for fd in fds.values():  # an fd below a mask would be a way around it
            os.close(fd)
    for target in targets:  # the tmpfs only holds mount points: read-only from now on
        if os.path.isdir(target):
            try:
                _mount(None, target, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
            except OSError as exc:
                log.debug("could not make the mask over %s read-only: %s", target, exc)


def drop_privileges() -> None:
    """No capabilities left in any set, none to regain by exec (bounding set empty,
    no_new_privs, securebits locked), and non-dumpable so other workers cannot ptrace us."""
    try:
        _prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED)
    except OSError as exc:  # needs CAP_SETPCAP; the empty bounding set covers it anyway
        log.debug("securebits not set: %s", exc)
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        _prctl(PR_CAPBSET_DROP, cap)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc().capset(ctypes.byref(header), ctypes.byref(data)), "capset")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_DUMPABLE, 0)


def enter(plan: SandboxPlan) -> SandboxReport:
    """Set the sandbox up for this process (see the module docstring).

    Raises `SandboxUnavailable` when the kernel refuses the namespace before anything was
    changed, and `SandboxError` when it failed half-way (the worker must then stop).
    """
    if sys.platform != "linux":
        raise SandboxUnavailable("mount namespaces need Linux")
    if _threads() != 1:
        raise SandboxError("the worker sandbox must be entered while the process has one thread")
    report = SandboxReport()
    _unshare()
    try:
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
    except OSError as exc:
        raise SandboxUnavailable(f"could not make mounts private: {exc}") from exc
    report.namespace = True
    try:
        _hide(plan, report)
        if plan.workdir:
            os.chdir(plan.workdir)  # never stay in a folder below a mask
        else:
            os.chdir("/")
        drop_privileges()
    except OSError as exc:
        raise SandboxError(f"worker sandbox failed: {exc}") from exc
    report.capabilities_dropped = True
    return report
