"""A real `modelhost serve` process on a free port, for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ADMIN_EMAIL = "admin@modelhost.local"
ADMIN_PASSWORD = "e2e-admin-password"
MODELS = Path(__file__).parent / "models"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def poll(
    check: Callable[[], Any], what: str = "condition", deadline_s: float = 60, every_s: float = 0.05
) -> Any:
    """`check()` until it returns something truthy, which is returned. A generous deadline,
    not a fixed sleep: a loaded machine makes a test slower, not red."""
    deadline = time.monotonic() + deadline_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {deadline_s} s: {what}")
        time.sleep(every_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    home: Path
    port: int
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            MODELHOST_HOME=str(self.home),
            MODELHOST_PORT=str(self.port),
            MODELHOST_ADMIN_PASSWORD=ADMIN_PASSWORD,
            MODELHOST_REVOCATION_POLL_S="0.5",
            MODELHOST_LOG_LEVEL="info",
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60) -> Server:
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path = self.home / "serve.log"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelhost.cli", "serve"],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    @contextmanager
    def sdk_credentials(self) -> Iterator[None]:
        """The SDK's `MODELHOST_*` credentials for this server, inside the block only."""
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MODELHOST_URL", self.url)
            patch.setenv("MODELHOST_EMAIL", ADMIN_EMAIL)
            patch.setenv("MODELHOST_PASSWORD", ADMIN_PASSWORD)
            yield

    # --- console helpers -------------------------------------------------------------

    def admin_token(self) -> str:
        r = httpx.post(
            self.url + "/console/api/auth/", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        )
        r.raise_for_status()
        return str(r.json()["access"])

    def deploy(
        self, folder: Path, prefix: str, name: str, deployment: str = "test-depl"
    ) -> dict[str, Any]:
        from modelhost.client._packing import pack_model_dir

        r = httpx.post(
            self.url + "/console/api/modelhost/deploy/",
            params={"deployment": deployment, "prefix": prefix, "name": name},
            content=pack_model_dir(folder),
            headers={
                "authorization": f"Bearer {self.admin_token()}",
                "content-type": "application/gzip",
            },
            timeout=600,
        )
        return {"status": r.status_code, **r.json()}

    def session_token(self, api_url: str) -> str:
        r = httpx.request(
            "GET",
            self.url + "/console/api/modelhost/model-auth/",
            json={"model_url": api_url},
            headers={"authorization": f"Bearer {self.admin_token()}"},
        )
        r.raise_for_status()
        return str(r.json()["token"])


def model_dir(tmp: Path, name: str, source: str | Path, model_json: str | None = None) -> Path:
    """A model folder from a file (a path, or a name in tests/e2e/models) or from literal
    source (text with a line break)."""
    folder = tmp / name
    folder.mkdir(parents=True, exist_ok=True)
    if "\n" not in str(source) and (MODELS / source).is_file():
        shutil.copy(MODELS / source, folder / "model.py")
    else:
        (folder / "model.py").write_text(str(source))
    if model_json is not None:
        (folder / "model.json").write_text(model_json)
    return folder
