"""Registry fixtures: every test runs once on SQLite and once on PostgreSQL.

PostgreSQL tests each get a fresh schema (selected through ``search_path`` in the URL),
created before and dropped after the test, so reruns and other users of the shared ``test``
database never see each other's tables. Without a reachable server the PostgreSQL half is
skipped; set MODELHOST_TEST_PG_URL to point it elsewhere.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from modelhost.registry import Registry

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
