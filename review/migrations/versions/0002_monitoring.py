"""Fleet monitoring: rollups per camera and per device, device states, drift baselines,
alarms (the ``monitor_*`` tables). Frozen here, as migrations must be.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _ids() -> list[sa.Column[str]]:
    return [
        sa.Column(name, sa.String(length=100), nullable=False)
        for name in ("site", "line", "device")
    ]


def _index(table: str, *columns: str) -> None:
    for column in columns:
        op.create_index(op.f(f"ix_{table}_{column}"), table, [column], unique=False)


def upgrade() -> None:
    op.create_table(
        "monitor_rollups",
        sa.Column("id", sa.Integer(), nullable=False),
        *_ids(),
        sa.Column("camera", sa.String(length=100), nullable=False),
        sa.Column("model_version", sa.String(length=100), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        *(
            sa.Column(n, sa.Integer(), nullable=False)
            for n in ("frames", "ok", "defect", "uncertain", "audited")
        ),
        sa.Column("latency", sa.JSON(), nullable=False),
        sa.Column("brightness", sa.JSON(), nullable=False),
        sa.Column("brightness_n", sa.Integer(), nullable=False),
        sa.Column("drift_psi", sa.Float(), nullable=True),
        sa.Column("drift_ref", sa.String(length=32), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device", "camera", "model_version", "bucket"),
    )
    _index("monitor_rollups", "line", "bucket")
    op.create_table(
        "monitor_device_rollups",
        sa.Column("id", sa.Integer(), nullable=False),
        *_ids(),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("reports", sa.Integer(), nullable=False),
        sa.Column("frames", sa.Integer(), nullable=False),
        sa.Column("fps", sa.Float(), nullable=False),
        sa.Column("drops", sa.Integer(), nullable=False),
        sa.Column("outbox_depth_max", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device", "bucket"),
    )
    _index("monitor_device_rollups", "line", "bucket")
    op.create_table(
        "monitor_devices",
        *_ids(),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("model_version", sa.String(length=100), nullable=True),
        sa.Column("ok_class", sa.String(length=100), nullable=True),
        sa.Column("problems", sa.JSON(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("device"),
    )
    _index("monitor_devices", "line")
    op.create_table(
        "monitor_references",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(length=100), nullable=False),
        sa.Column("camera", sa.String(length=100), nullable=False),
        sa.Column("model_version", sa.String(length=100), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("frames", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device", "camera", "model_version"),
    )
    op.create_table(
        "monitor_alarms",
        sa.Column("id", sa.Integer(), nullable=False),
        *_ids(),
        sa.Column("camera", sa.String(length=100), nullable=False),
        sa.Column("alarm", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("since", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device", "camera", "alarm"),
    )
    _index("monitor_alarms", "line")


def downgrade() -> None:
    for table in (
        "monitor_alarms",
        "monitor_references",
        "monitor_devices",
        "monitor_device_rollups",
        "monitor_rollups",
    ):
        op.drop_table(table)
