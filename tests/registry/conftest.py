"""Registry fixtures: every test runs once on SQLite and once on PostgreSQL.

PostgreSQL tests each get a fresh schema (selected through ``search_path`` in the URL),
created before and dropped after the test, so reruns and other users of the shared ``test``
database never see each other's tables. Without a reachable server the PostgreSQL half is
skipped; set MODELHOST_TEST_PG_URL to point it elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from modelhost.registry import Registry


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    # A nested, not yet existing directory: the registry must create it.
    return f"sqlite:///{os.path.join(tmp_path, 'nested', 'registry.db')}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """An empty database on each backend."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture
def registry(database_url: str) -> Iterator[Registry]:
    """A migrated registry, closed after the test."""
    reg = Registry(database_url)
    reg.migrate()
    yield reg
    reg.close()
