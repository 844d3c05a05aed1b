"""Revision scripts; a package only so setuptools ships them (alembic skips this file)."""
