"""Traffic (a model's pinned version, explicit weights on or off) and per-deployment limits
(predict timeout, queue bound, worker memory); all nullable or defaulted, so existing rows
keep their behaviour: no pin, newest ready version serves, settings' defaults apply.

Hand-written like 0001: plain SQLAlchemy types.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("pinned_version", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("weighted", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("predict_timeout_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("max_queue", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("memory_mb", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        for column in ("memory_mb", "max_queue", "predict_timeout_s"):
            batch.drop_column(column)
    with op.batch_alter_table("models") as batch:
        batch.drop_column("weighted")
        batch.drop_column("pinned_version")
