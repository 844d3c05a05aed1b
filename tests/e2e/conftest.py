from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Server, free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("mh-home"), free_port()).start()
    yield srv
    srv.stop()


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    return tmp_path
