"""Failed logins counted in the registry, so every gateway sharing it sees the same counts
and lockouts (they were per gateway process: N gateways allowed N times the failures).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "login_failures",
        sa.Column("key", sa.String(400), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("last_at", sa.Float(), nullable=False),
        sa.Column("locked_until", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_login_failures")),
    )
    op.create_index(op.f("ix_login_failures_last_at"), "login_failures", ["last_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_login_failures_last_at"), table_name="login_failures")
    op.drop_table("login_failures")
