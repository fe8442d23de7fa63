"""Indexes for the ``list_runs`` filters and the reconciler's sweep at a million runs.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

Found by the benchmark's section 10 (docs/performance.md): three ``list_runs`` filters had no
index in ``seq`` order and read most of ``runs``, and the reconciler's ``rewake`` sweep had no
index for overdue deadlines, so it tested every live run.

* ``ix_runs_status_seq`` ``(status, seq)``: ``status=`` pages of any status, newest first.
* ``ix_runs_schedule_id_seq`` ``((meta ->> 'schedule_id'), seq)`` over the runs a schedule
  started: the ``schedule`` filter (the statement writes the key literally, so the expression
  matches).
* ``ix_runs_idempotency_key_seq`` ``(idempotency_key, seq)`` over the runs with a key: the
  ``idempotency_key`` filter without the flow (``(name, idempotency_key)`` serves it with one).
* ``ix_runs_deadline_at`` ``(deadline_at)`` over the live runs with a deadline: the sweep's
  overdue deadlines.
* ``procrastinate_jobs_todo_scheduled_idx`` ``(scheduled_at)`` over the queued jobs
  (``iterflow.store.outbox.DUE_INDEX_SQL``): procrastinate's fetch read past every wake-up
  queued ahead of time (sleepers') on each fetch.

No existing index becomes redundant: ``ix_runs_status_finished_at`` (retention's order),
``ix_runs_status_wake_at`` (the live runs by due time) and the unique ``(name,
idempotency_key)`` index serve other orders or constraints. Building them reads the table once
each, and ``CREATE INDEX`` blocks writes to ``runs`` meanwhile (0.1 to 0.8 s per index at
1,000,000 runs in the benchmark, docs/performance.md section 10).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from iterflow.store import outbox
from iterflow.store.migrate import revision_schema

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE = (
    "status IN ('pending', 'running', 'sleeping', 'awaiting_signal', 'awaiting_child', "
    "'retrying', 'parked')"
)


def upgrade() -> None:
    """Create the four indexes."""
    schema = revision_schema(op.get_context())
    op.create_index("ix_runs_status_seq", "runs", ["status", "seq"], schema=schema)
    op.create_index(
        "ix_runs_schedule_id_seq",
        "runs",
        [sa.text("(meta ->> 'schedule_id')"), "seq"],
        schema=schema,
        postgresql_where=sa.text("(meta ->> 'schedule_id') IS NOT NULL"),
    )
    op.create_index(
        "ix_runs_idempotency_key_seq",
        "runs",
        ["idempotency_key", "seq"],
        schema=schema,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index(
        "ix_runs_deadline_at",
        "runs",
        ["deadline_at"],
        schema=schema,
        postgresql_where=sa.text(f"deadline_at IS NOT NULL AND {_LIVE}"),
    )
    if op.get_bind().execute(sa.text(outbox.INSTALLED_SQL)).scalar():
        op.execute(sa.text(outbox.DUE_INDEX_SQL))  # procrastinate's fetch of due wake-ups


def downgrade() -> None:
    """Drop the four (the filters and the sweep read more rows again, with the same results).
    The index on procrastinate's jobs stays: that table is shared with any other iterflow
    schema of the database, as revision 0001 leaves procrastinate's objects unless asked."""
    schema = revision_schema(op.get_context())
    for name in (
        "ix_runs_deadline_at",
        "ix_runs_idempotency_key_seq",
        "ix_runs_schedule_id_seq",
        "ix_runs_status_seq",
    ):
        op.drop_index(name, table_name="runs", schema=schema)
