"""Real services the tests talk to, shared by every test package.

- ``s3_endpoint``: a moto S3 server in its own process (server mode), for the whole session.
- ``pg_admin`` / ``pg_url``: the machine's PostgreSQL (db ``test``, trust auth); each
  ``pg_url`` is a fresh schema selected through ``search_path``, dropped afterwards, so reruns
  and other users of the database never see each other's tables. Set MODELHOST_TEST_PG_URL to
  point elsewhere.
"""

from __future__ import annotations

import itertools
import os
import secrets
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
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError


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


_PG_CANDIDATES = (
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "postgresql+psycopg://root@127.0.0.1:5432/test",
)
_SESSION_TAG = secrets.token_hex(4)
_counter = itertools.count()


def _connectable(url: str) -> Engine | None:
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError:
        engine.dispose()
        return None
    return engine


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[tuple[Engine, str]]:
    """An engine on the shared test database and the URL it was built from."""
    override = os.environ.get("MODELHOST_TEST_PG_URL")
    for url in (override,) if override else _PG_CANDIDATES:
        engine = _connectable(url)
        if engine is not None:
            yield engine, url
            with engine.begin() as connection:  # leftovers of tests that crashed mid-way
                rows = connection.execute(
                    text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :pattern"),
                    {"pattern": f"mh_test_{_SESSION_TAG}_%"},
                )
                for (schema,) in rows.all():
                    connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            engine.dispose()
            return
    pytest.skip("no PostgreSQL reachable for the registry tests")


@pytest.fixture
def pg_url(pg_admin: tuple[Engine, str]) -> Iterator[str]:
    """URL of an empty, private schema in the shared test database."""
    engine, base_url = pg_admin
    schema = f"mh_test_{_SESSION_TAG}_{next(_counter)}"
    with engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with engine.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
