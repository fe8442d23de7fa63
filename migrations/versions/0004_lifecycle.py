"""Data lifecycle: run deadlines, idempotency conflicts, retention.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

* ``runs.deadline_at``: a run still live at this time fails with ``RUN_DEADLINE_EXCEEDED``
  (``start(..., deadline=)``, ``@engine.flow(..., deadline=)``). Its wake-up job is due at the
  earlier of its own due time and the deadline, so the deadline fires like any other timer.
* ``runs.input_hash``: sha256 (hex) of the canonical JSON of the run's input, so a repeated
  idempotency key with a different input raises ``IDEMPOTENCY_CONFLICT``. NULL for runs started
  before this revision (no conflict is detected for them).
* ``ix_runs_status_finished_at``: retention's sweep (finished top-level runs of a status, older
  than a cutoff); child runs go with their top-level run, found through ``ix_runs_parent_run_id``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from iterflow.store.migrate import revision_schema

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINISHED_ROOTS = "parent_run_id IS NULL AND finished_at IS NOT NULL"


def upgrade() -> None:
    """Add the two nullable columns (no rewrite) and the retention index."""
    schema = revision_schema(op.get_context())
    op.add_column("runs", sa.Column("deadline_at", sa.DateTime(timezone=True)), schema=schema)
    op.add_column("runs", sa.Column("input_hash", sa.Text()), schema=schema)
    op.create_index(
        "ix_runs_status_finished_at",
        "runs",
        ["status", "finished_at"],
        schema=schema,
        postgresql_where=sa.text(FINISHED_ROOTS),
    )


def downgrade() -> None:
    """Drop the index and the columns (deadlines and input hashes are lost)."""
    schema = revision_schema(op.get_context())
    op.drop_index("ix_runs_status_finished_at", table_name="runs", schema=schema)
    op.drop_column("runs", "input_hash", schema=schema)
    op.drop_column("runs", "deadline_at", schema=schema)
