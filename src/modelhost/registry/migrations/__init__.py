"""Alembic environment of the registry, shipped inside the package and run from code
(`modelhost.registry.repo.Registry.migrate`), so no alembic.ini is needed at runtime."""
