"""Flow control: per-flow queues, concurrency and rate limits.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

``runs.queue`` is the procrastinate queue of the run's wake-ups (one per flow version, so a
worker fetches only the runs it serves; NULL for runs started before: the engine's base queue,
which every worker listens to and re-routes from). ``runs.limit_key`` is the key the flow's
limits count the run under, ``runs.held`` why a limit holds it back (``iterflow.core.limits``).
``rate_windows`` keeps the attempt starts of each flow and key in its rate window. Nullable
columns and partial indexes over them: nothing is rewritten.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from iterflow.store.migrate import revision_schema

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the columns, their partial indexes and ``rate_windows``."""
    schema = revision_schema(op.get_context())
    op.add_column("runs", sa.Column("queue", sa.Text()), schema=schema)
    op.add_column("runs", sa.Column("limit_key", sa.Text()), schema=schema)
    op.add_column("runs", sa.Column("held", pg.JSONB()), schema=schema)
    op.create_index(
        "ix_runs_limit_running",
        "runs",
        ["name", "limit_key"],
        schema=schema,
        postgresql_where=sa.text("limit_key IS NOT NULL AND status IN ('running')"),
    )
    op.create_index(
        "ix_runs_limit_held",
        "runs",
        ["name", "limit_key", sa.text("priority DESC"), "seq"],
        schema=schema,
        postgresql_where=sa.text("held IS NOT NULL"),
    )
    op.create_table(
        "rate_windows",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("limit_key", sa.Text(), nullable=False),
        sa.Column("starts", pg.ARRAY(sa.DateTime(timezone=True)), nullable=False),
        sa.PrimaryKeyConstraint("name", "limit_key", name=op.f("pk_rate_windows")),
        schema=schema,
    )


def downgrade() -> None:
    """Drop them (held runs become plain queued runs; the reconciler wakes them)."""
    schema = revision_schema(op.get_context())
    op.drop_table("rate_windows", schema=schema)
    op.drop_index("ix_runs_limit_held", table_name="runs", schema=schema)
    op.drop_index("ix_runs_limit_running", table_name="runs", schema=schema)
    op.drop_column("runs", "held", schema=schema)
    op.drop_column("runs", "limit_key", schema=schema)
    op.drop_column("runs", "queue", schema=schema)
