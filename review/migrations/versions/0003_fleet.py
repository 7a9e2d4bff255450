"""Fleet rollout: each device's rollout and every step of it (``fleet_devices``,
``fleet_events``). Frozen here, as migrations must be.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fleet_devices",
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=True),
        sa.Column("active", sa.String(length=64), nullable=True),
        sa.Column("active_slot", sa.String(length=16), nullable=True),
        sa.Column("candidate", sa.String(length=64), nullable=True),
        sa.Column("rollout", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("desired", sa.String(length=64), nullable=True),
        sa.Column("stage", sa.String(length=16), nullable=True),
        sa.Column("deploy_id", sa.String(length=64), nullable=True),
        sa.Column("reply", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("target"),
    )
    op.create_table(
        "fleet_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=True),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_fleet_events_target"), "fleet_events", ["target"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_fleet_events_target"), table_name="fleet_events")
    op.drop_table("fleet_events")
    op.drop_table("fleet_devices")
