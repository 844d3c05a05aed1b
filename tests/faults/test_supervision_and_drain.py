"""Against real `modelhost serve` processes: supervision that never gives up, draining on
retire and on SIGTERM, no orphan after SIGKILL, no rollback at restart (issue 10, items 2,
4, 5 and 7). Nothing here asserts a duration: every wait polls up to a generous deadline."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.harness import MODELS, Server, free_port
from e2e.harness import bearer as _auth
from e2e.harness import poll as _poll

FAULT_MODELS = Path(__file__).parent / "models"


def _folder(tmp: Path, name: str, source: Path, faults_dir: Path | None = None) -> Path:
    folder = tmp / name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, folder / "model.py")
    if faults_dir is not None:
        (folder / "model.json").write_text(json.dumps({"env": {"FAULTS_DIR": str(faults_dir)}}))
    return folder


def _children(home: Path) -> dict[int, str]:
    """Live worker and fetch processes of the server whose home is `home` (pid → module),
    found in /proc by the spec file on their command line (zombies do not count)."""
    run = str(home / "run") + "/"
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            continue
        for module in ("modelhost.worker", "modelhost.worker.fetch"):
            if module in args and any(a.startswith(run) for a in args):
                found[int(entry)] = module
    return found


def _worker_pids(home: Path, name: str) -> list[int]:
    """The worker processes serving model `name` (matched by the name in their spec)."""
    pids = []
    for pid, module in _children(home).items():
        if module != "modelhost.worker":
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            spec = next(a.decode() for a in argv if a.endswith(b".json"))
            if json.loads(Path(spec).read_text())["name"] == name:
                pids.append(pid)
        except (OSError, StopIteration, ValueError, KeyError):
            continue
    return pids


def _kill_all(pids: Iterator[int] | list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def faults_dir(tmp_path: Path) -> Path:
    """Where models under test read and write their marker files (outside the server's
    home, which the worker sandbox hides)."""
    path = tmp_path / "faults"
    path.mkdir()
    return path


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()
        _kill_all(list(_children(server.home)))


def _start(servers: list[Server], home: Path, **env: str) -> Server:
    server = Server(home, free_port(), extra_env=env).start()
    servers.append(server)
    return server


def _deploy(server: Server, folder: Path, name: str) -> tuple[str, str]:
    result = server.deploy(folder, "faults", name)
    assert result["status"] == 200 and result["state"] == "ready", result
    return result["api_url"], server.session_token(result["api_url"])


class _Streamer(threading.Thread):
    """Reads one streamed predict; `first` is set once its first piece arrived."""

    def __init__(self, url: str, token: str, n: int) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.n = url, token, n
        self.first = threading.Event()
        self.text = ""
        self.status = 0
        self.version = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream(
                "POST", self.url, json={"n": self.n}, headers=_auth(self.token), timeout=120
            ) as r:
                self.status = r.status_code
                self.version = r.headers.get("x-prt-model-version", "")
                for piece in r.iter_text():
                    self.text += piece
                    self.first.set()
        except BaseException as exc:  # the assertion says what went wrong
            self.error = exc
        finally:
            self.first.set()


def _pieces(n: int) -> str:
    return "".join(f"piece {i}\n" for i in range(n))


# --- item 2: supervision ----------------------------------------------------------------


def test_ten_crashes_in_a_row_each_restarted(tmp_path: Path, servers: list[Server]) -> None:
    server = _start(servers, tmp_path / "home", MODELHOST_WORKER_RESTART_BACKOFF_MAX_S="1")
    url, token = _deploy(server, _folder(tmp_path, "echo", MODELS / "echo.py"), "echo")
    not_ready: list[str] = []

    def serves() -> bool:
        r = httpx.post(url, json={"i": 1}, headers=_auth(token), timeout=30)
        if r.status_code == 503:
            not_ready.append(r.json()["error"]["message"])
        return r.status_code == 200 and r.json() == {"i": 1}

    previous: set[int] = set()
    for crash in range(10):
        pids = _poll(lambda: _worker_pids(server.home, "echo"), "a running echo worker")
        assert not previous & set(pids), f"crash {crash}: the killed worker still runs"
        _poll(serves, f"echo serving before crash {crash + 1}")
        pids = _worker_pids(server.home, "echo")
        _kill_all(pids)
        previous = set(pids)
        _poll(serves, f"echo serving again after crash {crash + 1}")
        assert not previous & set(_worker_pids(server.home, "echo"))

    meta = httpx.get(url + "?get_meta=true", headers=_auth(token)).json()
    assert meta["state"] == "ready" and meta["restarts"] == 10, meta
    assert meta["last_exit"] == "killed by SIGKILL", meta
    # While it restarted, the 503s said so (not "failed to start")
    assert not [m for m in not_ready if "failed to start" in m], not_ready
    assert any("crashed" in m and "restarting" in m for m in not_ready), not_ready


# --- items 4 and 7: draining and signals --------------------------------------------------


def test_group_sigterm_during_a_stream_drains_it(
    tmp_path: Path, servers: list[Server], faults_dir: Path
) -> None:
    """systemd's stop (SIGTERM to the whole group) or Ctrl-C: the stream completes,
    cleanup runs, the server exits 0."""
    server = _start(servers, tmp_path / "home")
    folder = _folder(tmp_path, "stream", FAULT_MODELS / "gated_stream.py", faults_dir)
    url, token = _deploy(server, folder, "stream")
    stream = _Streamer(url, token, n=6)
    stream.start()
    assert stream.first.wait(60) and stream.text == "piece 0\n", (stream.text, stream.error)
    proc = server.proc
    assert proc is not None
    os.killpg(proc.pid, signal.SIGTERM)  # the group, as systemd and a terminal do

    def refuses_connections() -> bool:
        try:
            httpx.get(server.url + "/healthz", timeout=1)
        except httpx.TransportError:
            return True
        return False

    _poll(refuses_connections, "the server stopped accepting connections")
    (faults_dir / "release").write_text("go")
    stream.join(60)
    assert stream.error is None and stream.text == _pieces(6), (stream.text, stream.error)
    _poll(lambda: proc.poll() is not None, "the server exits")
    assert proc.returncode == 0, server.log()[-3000:]
    assert list(faults_dir.glob("cleanup-*")), "cleanup did not run"
    assert not _children(server.home)


def test_sigkill_of_the_server_leaves_no_worker(
    tmp_path: Path, servers: list[Server], faults_dir: Path
) -> None:
    """Even a worker stuck in a predict thread that never returns goes with the server."""
    server = _start(servers, tmp_path / "home")
    folder = _folder(tmp_path, "hung", FAULT_MODELS / "hung_sync.py", faults_dir)
    url, token = _deploy(server, folder, "hung")
    caller = threading.Thread(
        target=lambda: _ignore(lambda: httpx.post(url, json={}, headers=_auth(token), timeout=60)),
        daemon=True,
    )
    caller.start()
    _poll(lambda: (faults_dir / "hung-started").exists(), "the predict started")
    assert _worker_pids(server.home, "hung")
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGKILL)  # the server only: its children must follow
    server.proc.wait(30)
    _poll(lambda: not _children(server.home), "no worker process left", deadline_s=5)


def test_retiring_a_version_lets_its_stream_finish(
    tmp_path: Path, servers: list[Server], faults_dir: Path
) -> None:
    """KEEP_VERSIONS=1: v2 becoming ready retires v1 while a stream runs on it."""
    server = _start(servers, tmp_path / "home", MODELHOST_KEEP_VERSIONS="1")
    folder = _folder(tmp_path, "stream", FAULT_MODELS / "gated_stream.py", faults_dir)
    url, token = _deploy(server, folder, "stream")
    stream = _Streamer(url, token, n=8)
    stream.start()
    assert stream.first.wait(60) and stream.text == "piece 0\n", (stream.text, stream.error)
    assert stream.version == "1"
    result = server.deploy(folder, "faults", "stream")
    assert result["status"] == 200 and result["version"] == 2, result

    def v1_retired() -> bool:
        meta = httpx.get(url + "?get_meta=true", headers=_auth(token)).json()
        return bool(meta["version"] == 2 and meta["versions"].get("v1") == "stopped")

    _poll(v1_retired, "v1 retired")
    # No new request reaches the retiring version; the versionless URL is v2's.
    r = httpx.post(url + "v1/", json={"n": 1}, headers=_auth(token))
    assert r.status_code == 404, r.text
    (faults_dir / "release").write_text("go")
    stream.join(60)
    assert stream.error is None and stream.text == _pieces(8), (stream.text, stream.error)
    _poll(lambda: len(list(faults_dir.glob("cleanup-*"))) == 1, "v1's cleanup ran")


def test_sigterm_with_a_hung_predict_still_exits(
    tmp_path: Path, servers: list[Server], faults_dir: Path
) -> None:
    server = _start(servers, tmp_path / "home", MODELHOST_DRAIN_TIMEOUT_S="2")
    folder = _folder(tmp_path, "hung", FAULT_MODELS / "hung_async.py", faults_dir)
    url, token = _deploy(server, folder, "hung")
    caller = threading.Thread(
        target=lambda: _ignore(lambda: httpx.post(url, json={}, headers=_auth(token), timeout=90)),
        daemon=True,
    )
    caller.start()
    _poll(lambda: (faults_dir / "hung-started").exists(), "the predict started")
    proc = server.proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)  # the server only: a hung predict must not hold it
    # the drain period, then the workers' stop deadline: generous, still far below forever
    _poll(lambda: proc.poll() is not None, "the server exits", deadline_s=45)
    assert proc.returncode == 0, server.log()[-3000:]
    _poll(lambda: not _children(server.home), "no worker process left", deadline_s=15)


# --- item 5: restart order ----------------------------------------------------------------


def test_restart_never_rolls_back_to_an_older_version(
    tmp_path: Path, servers: list[Server]
) -> None:
    """v2 loads slower than v1: after a restart v1 must not answer the versionless URL."""
    server = _start(servers, tmp_path / "home")
    url, _ = _deploy(server, _folder(tmp_path, "v1", MODELS / "echo.py"), "m")
    url, token = _deploy(server, _folder(tmp_path, "v2", FAULT_MODELS / "slow_init.py"), "m")
    r = httpx.post(url, json={}, headers=_auth(token))
    assert r.status_code == 200 and r.headers["x-prt-model-version"] == "2"
    server.stop()

    server.start()
    answered: list[str] = []

    def v2_serves_steadily() -> bool:
        r = httpx.post(url, json={}, headers=_auth(token), timeout=30)
        if r.status_code == 200:
            answered.append(r.headers["x-prt-model-version"])
        else:
            assert r.status_code == 503, r.text
        return answered[-5:] == ["2"] * 5

    _poll(v2_serves_steadily, "v2 serving after the restart")
    assert "1" not in answered, answered
    # v1 did load (it is the fallback), it just did not serve
    meta = httpx.get(url + "?get_meta=true", headers=_auth(token)).json()
    assert meta["versions"] == {"v1": "ready", "v2": "ready"}, meta


def _ignore(call: Callable[[], Any]) -> None:
    with contextlib.suppress(Exception):
        call()
