"""Model code must not get the control plane's rights (worker/sandbox.py, worker_env.py).

A real `modelhost serve` with secrets in its environment serves a victim model and a hostile
one; the hostile model's `predict` tries to reach the control plane and every attempt must
fail, while it still reads its own `download_files_from` files and answers.
"""

from __future__ import annotations

import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e.harness import Server, free_port, model_dir
from e2e.harness import bearer as _auth
from modelhost.wire.protocol import Kind, encode

HERE = Path(__file__).parent
FAKE_AWS_SECRET = "fake-aws-secret-for-the-sandbox-test"
ATTEMPTS = {
    "read_jwt_key",
    "read_registry",
    "list_run_dir",
    "victim_socket",
    "environ",
    "gateway_environ",
    "gateway_root",
    "victim_worker_proc",
    "write_victim_store",
    "umount_mask",
    "read_after_umount",
    "read_user_aws_credentials",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("sandbox")
    user_home = root / "user"  # the gateway user's HOME, with the usual credentials file
    (user_home / ".aws").mkdir(parents=True)
    (user_home / ".aws" / "credentials").write_text(f"aws_secret_access_key={FAKE_AWS_SECRET}\n")
    srv = Server(
        root / "home",
        free_port(),
        extra_env={
            "HOME": str(user_home),
            "AWS_ACCESS_KEY_ID": "fake-aws-key-id",
            "AWS_SECRET_ACCESS_KEY": FAKE_AWS_SECRET,
        },
    )
    srv.home.mkdir()
    assets = root / "assets"
    assets.mkdir()
    (assets / "secret-ok.txt").write_text("the model's own file")
    subprocess.run(
        [sys.executable, "-m", "modelhost.cli", "files", "upload", str(assets), "assets/hostile/"],
        env=srv.env(),
        check=True,
        capture_output=True,
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def victim(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    before = set(server.home.glob("run/*.sock"))
    folder = model_dir(tmp_path_factory.mktemp("victim"), "victim", "echo.py")
    result = server.deploy(folder, "models/sec", "victim")
    assert result["state"] == "ready", result
    sockets = set(server.home.glob("run/*.sock")) - before
    assert len(sockets) == 1, sockets
    stored = list(server.home.glob("store/_modelhost/models/models/sec/victim/*/model.py"))
    assert len(stored) == 1, stored
    sock = sockets.pop()
    return {"socket": str(sock), "store_file": str(stored[0]), "pid": str(_worker_pid(sock))}


def _worker_pid(sock: Path) -> int:
    """The pid of the worker serving `sock` (its command line ends with the spec path)."""
    spec = str(sock.with_suffix(".json")).encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:
            continue
        if b"modelhost.worker" in args and args[-1] == spec:
            return int(cmdline.parent.name)
    raise AssertionError(f"no worker process for {sock}")


@pytest.fixture(scope="module")
def hostile(server: Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("hostile") / "hostile"
    folder.mkdir()
    shutil.copy(HERE / "hostile_model.py", folder / "model.py")
    (folder / "model.json").write_text(
        '{"download_files_from": "assets/hostile/", "download_files_to": "hostile",'
        ' "env": {"HOSTILE_GREETING": "hello"}}'
    )
    result = server.deploy(folder, "models/sec", "hostile")
    assert result["state"] == "ready", result
    return result["api_url"], server.session_token(result["api_url"])


def test_model_code_gets_no_control_plane_rights(
    server: Server, victim: dict[str, str], hostile: tuple[str, str]
) -> None:
    url, token = hostile
    victim_source = Path(victim["store_file"]).read_text()
    payload = {
        "home": str(server.home),
        "victim_socket": victim["socket"],
        "victim_store_file": victim["store_file"],
        "victim_pid": int(victim["pid"]),
        "user_home": server.extra_env["HOME"],
    }
    r = httpx.post(url, json=payload, headers=_auth(token), timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    attempts = answer["attempts"]
    assert set(attempts) == ATTEMPTS
    leaked = {name: result for name, result in attempts.items() if result["ok"]}
    assert not leaked, leaked
    assert FAKE_AWS_SECRET not in r.text and "e2e-admin-password" not in r.text
    # ...while the model still has its own files, its model.json env and a HOME of its own
    assert answer["own_cache_file"] == {"ok": True, "value": repr("the model's own file")}
    assert answer["model_env"] == "hello"
    assert answer["home_env"] and not answer["home_env"].startswith("/root")
    # the victim is untouched and still answers
    assert Path(victim["store_file"]).read_text() == victim_source


def test_a_worker_socket_talks_only_to_the_gateway(server: Server, victim: dict[str, str]) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(victim["socket"])
        head = {"m": "POST", "p": "", "q": "", "ct": "application/json"}
        try:
            s.sendall(encode(Kind.REQUEST, 1, head, b'{"stolen": 1}'))
            data = s.recv(65536)
        except (BrokenPipeError, ConnectionResetError):
            data = b""
    assert data == b"", "a worker answered a process that is not the gateway"
    deadline = time.time() + 5
    while "refused a connection from pid" not in server.log() and time.time() < deadline:
        time.sleep(0.1)
    assert "refused a connection from pid" in server.log()


def test_control_plane_files_are_private(server: Server, victim: dict[str, str]) -> None:
    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    home = server.home
    assert mode(home) == 0o700
    assert mode(home / "run") == 0o700
    assert mode(Path(victim["socket"])) == 0o600
    assert mode(home / "registry.db") == 0o600
    assert mode(home / "jwt.key") == 0o600


def test_model_json_env_may_not_set_reserved_names(server: Server, tmp_path: Path) -> None:
    folder = model_dir(tmp_path, "greedy", "echo.py", '{"env": {"AWS_SECRET_ACCESS_KEY": "x"}}')
    result = server.deploy(folder, "models/sec", "greedy")
    # refused at deploy (400 naming the name); the worker checks again when it starts
    assert result["status"] == 400, result
    assert "AWS_SECRET_ACCESS_KEY" in result["error"]["message"]


def test_worker_environment_is_an_allow_list(tmp_path: Path) -> None:
    from modelhost.supervision.worker_env import worker_environ

    gateway = {
        "PATH": "/usr/bin",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "2",
        "MODELHOST_ADMIN_PASSWORD": "secret",
        "MODELHOST_DATABASE_URL": "postgresql://u:p@db/x",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "PYTHONSTARTUP": "/root/.pythonrc",
        "HOME": "/root",
        "MY_LICENSE_SERVER": "lic:1234",
    }
    home = tmp_path / "home"
    (home / "prometheus").mkdir(parents=True)
    (home / "prometheus" / "counter_123.db").write_bytes(b"a dead worker's values")
    env = worker_environ(gateway, "MY_LICENSE_SERVER", {"env": {"MODE": "fast"}}, str(home))
    assert env == {
        "PATH": "/usr/bin",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "2",
        "MY_LICENSE_SERVER": "lic:1234",
        "MODE": "fast",
        "HOME": str(home),
        # its prometheus_client files, inside its HOME (writable in the sandbox), emptied
        "PROMETHEUS_MULTIPROC_DIR": str(home / "prometheus"),
    }
    assert list((home / "prometheus").iterdir()) == []


@pytest.mark.parametrize(
    "env",
    [
        ["A"],
        {"MODELHOST_URL": "x"},
        {"aws_region": "x"},
        {"PROMETHEUS_MULTIPROC_DIR": "/tmp"},
        {"A": 1},
        {"1A": "x"},
        {"A=B": "x"},
    ],
)
def test_model_json_env_is_checked(env: object) -> None:
    from modelhost.errors import InvalidModelFolder
    from modelhost.wire.model_folder import model_env

    with pytest.raises(InvalidModelFolder):
        model_env({"env": env})


@pytest.mark.parametrize(("mode", "fails"), [("auto", False), ("required", True), ("bogus", True)])
def test_when_the_kernel_refuses_the_sandbox(
    mode: str, fails: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """auto: a warning naming what is NOT isolated, and the model still loads; required (or
    a misspelt mode): the worker refuses to load model code."""
    from modelhost.wire.spec import WorkerSpec
    from modelhost.worker import server as worker
    from modelhost.worker.sandbox import SandboxUnavailable

    def refuse(plan: object) -> None:
        raise SandboxUnavailable("unshare of a mount namespace refused: Operation not permitted")

    monkeypatch.setattr(worker, "enter", refuse)
    spec = WorkerSpec(
        socket_path="/nonexistent/w1-0.sock",
        version_dir="/nonexistent/versions/p/m/v1",
        store_url="file:///nonexistent/store",
        store_key="k",
        model_id=1,
        name="m",
        prefix="p",
        version=1,
        deployment="d",
        cache_dir="/nonexistent/cache",
        pod_name="pod",
        sandbox=mode,
        hide_paths=["/nonexistent/home"],
    )
    failure = worker.sandbox(spec)
    assert bool(failure) is fails
    if mode == "auto":
        assert "WITHOUT filesystem isolation" in caplog.text and "/nonexistent/home" in caplog.text
