"""Per-deployment autoscaling (min/max replicas, target ongoing requests per replica,
scale-down delay) and placement on a Ray cluster (CPUs, GPUs, custom resources such as a
node label, pack or spread). All nullable: existing rows keep their fixed `replicas` and
run as local processes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("min_replicas", sa.Integer()),
    ("max_replicas", sa.Integer()),
    ("target_ongoing_requests", sa.Float()),
    ("scale_down_delay_s", sa.Float()),
    ("num_cpus", sa.Float()),
    ("num_gpus", sa.Float()),
    ("ray_resources", sa.JSON()),
    ("placement", sa.String(16)),
)


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        for name, kind in COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
