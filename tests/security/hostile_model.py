"""A hostile model: each `predict` tries to use the control plane's rights and reports."""

import contextlib
import ctypes
import os
import socket
import subprocess
from pathlib import Path

meta = None


async def init(model_meta=None, *args, **kwargs):
    global meta
    meta = model_meta


def _try(fn):
    try:
        return {"ok": True, "value": repr(fn())[:300]}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}


def _raw_frame(path):
    from modelhost.wire.protocol import Kind, encode

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        head = {"m": "POST", "p": "", "q": "", "ct": "application/json"}
        s.sendall(encode(Kind.REQUEST, 1, head, b'{"stolen": 1}'))
        data = b""
        while b"stolen" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(data)} bytes, no answer")
            data += chunk
        return data


def _secret_env():
    found = {k: v for k, v in os.environ.items() if k.startswith(("MODELHOST_", "AWS_"))}
    if not found:
        raise LookupError("no MODELHOST_* or AWS_* variable")
    return found


def _umount(path):
    run = subprocess.run(["umount", "-l", path], capture_output=True, text=True)
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.umount2(path.encode(), 2)  # MNT_DETACH
    errno = ctypes.get_errno()
    if run.returncode == 0 or rc == 0:
        return "unmounted"
    raise PermissionError(f"umount: {run.stderr.strip()}; umount2: {os.strerror(errno)}")


def _after_umount(home):
    """Whatever the umount attempt did, the control plane must still be out of sight."""
    with contextlib.suppress(OSError):
        _umount(home)
    return Path(home, "jwt.key").read_text()


def _victim_worker(pid, home):
    """Another model's worker: its environment, or the files it sees through /proc."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()[:200]
    except OSError:
        return os.listdir(f"/proc/{pid}/root{home}")


async def predict(payload_dict: dict, **kwargs):
    home = payload_dict["home"]
    ppid = os.getppid()
    attempts = {
        "read_jwt_key": lambda: Path(home, "jwt.key").read_text(),
        "read_registry": lambda: Path(home, "registry.db").read_bytes()[:16],
        "list_run_dir": lambda: os.listdir(Path(home, "run")),
        "victim_socket": lambda: _raw_frame(payload_dict["victim_socket"]),
        "environ": _secret_env,
        "gateway_environ": lambda: Path(f"/proc/{ppid}/environ").read_bytes()[:200],
        "gateway_root": lambda: os.listdir(f"/proc/{ppid}/root{home}"),
        "victim_worker_proc": lambda: _victim_worker(payload_dict["victim_pid"], home),
        "write_victim_store": lambda: Path(payload_dict["victim_store_file"]).write_text("x=1\n"),
        "umount_mask": lambda: _umount(home),
        "read_after_umount": lambda: _after_umount(home),
        "read_user_aws_credentials": lambda: Path(
            payload_dict["user_home"], ".aws", "credentials"
        ).read_text(),
    }
    results = {name: _try(fn) for name, fn in attempts.items()}
    own = Path(meta.cache_dir) / "secret-ok.txt"
    return {
        "attempts": results,
        "own_cache_file": _try(own.read_text),
        "model_env": os.environ.get("HOSTILE_GREETING"),
        "home_env": os.environ.get("HOME"),
    }
