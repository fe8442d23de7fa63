"""The worker registry: one row per running worker.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

``workers`` is written by each worker when it starts and at each heartbeat (``heartbeat_at``),
and its row is deleted when it stops cleanly; a killed worker's row goes stale, and is deleted
a day later by the next worker to register. ``flows`` lists the ``name@version`` the worker can
run, so ``flowctl explain`` can say whether any live worker knows a run's flow version.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from iterflow.store.migrate import revision_schema

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")


def upgrade() -> None:
    """Create ``workers``."""
    schema = revision_schema(op.get_context())
    op.create_table(
        "workers",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("flows", pg.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("queues", pg.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
        schema=schema,
    )


def downgrade() -> None:
    """Drop ``workers`` (the registry is rebuilt as workers start)."""
    schema = revision_schema(op.get_context())
    op.drop_table("workers", schema=schema)
