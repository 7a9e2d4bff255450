"""The review store as it was when migrations began (review_history included).

Databases made before then by ``create_all`` hold some or all of these tables already (the
oldest lack review_history): this revision creates only the missing ones, so upgrading such
a database adopts it without touching its rows. Its tables are frozen here, as migrations
must be: a later change to the models is a new revision.

Revision ID: 0001
Revises:
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import SchemaItem

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _table(name: str, *items: SchemaItem, indexes: dict[str, bool] | None = None) -> None:
    """Create table ``name`` with ``items`` and an index per column in ``indexes`` (column ->
    unique), unless the database has it already."""
    if sa.inspect(op.get_bind()).has_table(name):
        return
    op.create_table(name, *items)
    for column, unique in (indexes or {}).items():
        op.create_index(op.f(f"ix_{name}_{column}"), name, [column], unique=unique)


def _user_fk() -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["user_id"], ["users.id"])


def _answer(*times: str) -> list[SchemaItem]:
    """One inspector's label on one frame (adjudications, review_history, reviews), with the
    times it carries."""
    return [
        sa.Column("frame_pk", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        *(sa.Column(name, sa.Float(), nullable=False) for name in times),
        sa.ForeignKeyConstraint(["frame_pk"], ["frames.id"]),
        _user_fk(),
    ]


def upgrade() -> None:
    _table(
        "frames",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("frame_id", sa.String(length=200), nullable=False),
        sa.Column("why", sa.String(length=16), nullable=False),
        sa.Column("device", sa.String(length=100), nullable=False),
        sa.Column("site", sa.String(length=100), nullable=False),
        sa.Column("line", sa.String(length=100), nullable=False),
        sa.Column("camera", sa.String(length=100), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("model_version", sa.String(length=100), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("predicted", sa.String(length=100), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("reason", sa.String(length=100), nullable=True),
        sa.Column("image_sha256", sa.String(length=64), nullable=True),
        sa.Column("image_width", sa.Integer(), nullable=True),
        sa.Column("image_height", sa.Integer(), nullable=True),
        sa.Column("image_scale", sa.Float(), nullable=True),
        sa.Column("image_error", sa.Text(), nullable=True),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("required_reviews", sa.Integer(), nullable=False),
        sa.Column("gold_label", sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        indexes={"device": False, "frame_id": True, "line": False, "predicted": False, "ts": False},
    )
    _table(
        "rejects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("topic", sa.String(length=300), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    _table(
        "settings",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    _table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("password_hash", sa.String(length=300), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    _table("adjudications", *_answer("created_at"), sa.PrimaryKeyConstraint("frame_pk"))
    _table(
        "review_history",
        sa.Column("id", sa.Integer(), nullable=False),
        *_answer("answered_at", "replaced_at"),
        sa.PrimaryKeyConstraint("id"),
        indexes={"frame_pk": False, "user_id": False},
    )
    _table(
        "reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        *_answer("created_at"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("frame_pk", "user_id"),
        indexes={"frame_pk": False, "user_id": False},
    )
    _table(
        "sessions",
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("csrf", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        _user_fk(),
        sa.PrimaryKeyConstraint("token_sha256"),
        indexes={"user_id": False},
    )


def downgrade() -> None:
    for name in (
        "sessions",
        "reviews",
        "review_history",
        "adjudications",
        "users",
        "settings",
        "rejects",
        "frames",
    ):
        op.drop_table(name)
