"""Alembic environment for the registry.

Run from code, never from an alembic.ini: the caller builds an ``alembic.config.Config``
and puts either an open ``connection`` or a ``url`` into ``config.attributes``. Passing the
connection lets `Registry.migrate` reuse its engine (SQLite pragmas, PostgreSQL
search_path) and hold a migration lock in the same transaction.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from modelhost.registry.schema import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    attributes = context.config.attributes
    connection: Connection | None = attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = attributes.get("url") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("pass a connection or url in alembic Config.attributes")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported for the registry")
run_migrations_online()
