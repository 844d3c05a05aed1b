"""Fixtures for the SDK unit tests: the console double served by uvicorn on a free port
in a thread, and isolation from the developer's real credentials."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from console_double import EMAIL, PASSWORD, ConsoleState, build_app

from modelhost.client import _console


class _Holder:
    """Lets the session-scoped server swap in a fresh state per test."""

    def __init__(self) -> None:
        self.state = ConsoleState()


@pytest.fixture(scope="session")
def _server() -> Iterator[tuple[str, _Holder]]:
    holder = _Holder()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await build_app(holder.state)(scope, receive, send)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "test console server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}", holder
    server.should_exit = True
    thread.join(timeout=5)
    sock.close()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test sees the developer's real credentials or another test's cached tokens."""
    for name in (
        "MODELHOST_URL",
        "MODELHOST_EMAIL",
        "MODELHOST_PASSWORD",
        "MODELHOST_ACCESS_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODELHOST_CONFIG_DIR", str(tmp_path / "config"))
    _console.token_cache.clear()
    yield
    _console.token_cache.clear()


@pytest.fixture
def console(_server: tuple[str, _Holder]) -> Iterator[tuple[str, ConsoleState]]:
    """(base URL, fresh recorded state) of the running fake console."""
    url, holder = _server
    holder.state = ConsoleState()
    yield url, holder.state


@pytest.fixture
def logged_in_env(console: tuple[str, ConsoleState], monkeypatch: pytest.MonkeyPatch) -> str:
    """Credentials in the environment, as in a CI job; returns the server URL."""
    url, _ = console
    monkeypatch.setenv("MODELHOST_EMAIL", EMAIL)
    monkeypatch.setenv("MODELHOST_PASSWORD", PASSWORD)
    return url
