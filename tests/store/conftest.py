"""Store test fixtures: every store test runs against a LocalStore in a temp folder and
against a real S3-protocol server (moto in server mode, in its own process)."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_testkit import StoreSpec, new_bucket

from modelhost.store import ObjectStore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answered, even if with an error status
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server did not answer at {url} in {timeout}s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server running as a subprocess for the whole session."""
    port = _free_port()
    with tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False) as logf:
        log = Path(logf.name)
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url + "/moto-api/", proc, log, timeout=30)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.unlink(missing_ok=True)


@pytest.fixture(params=["local", "s3", "s3-prefixed"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    if request.param == "local":
        return StoreSpec("local", root=str(tmp_path / "store"))
    endpoint = request.getfixturevalue("s3_endpoint")
    prefix = "tenant/base/" if request.param == "s3-prefixed" else ""
    return StoreSpec("s3", bucket=new_bucket(endpoint), prefix=prefix, endpoint_url=endpoint)


@pytest.fixture
def store(store_spec: StoreSpec) -> ObjectStore:
    return store_spec.open()
