"""The wake-up fetch's indexes on procrastinate's jobs, in the fetch's order per queue.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03

The worker's fetch (``iterflow.store.outbox.FETCH_JOB_SQL``) reads its first due jobs from two
indexes in its order, so it never reads past the wake-ups queued ahead of time (sleeping
runs') or another queue's jobs due at once: procrastinate's own fetch did once a share of the
queued jobs was due, 17 ms of PostgreSQL CPU per fetch with 100,000 sleepers and 1,000 due jobs
(docs/performance.md section 10, fix 11). Another queue's jobs with a due time were still read
past in the second index; revision 0012 replaces it with one per queue.

* ``procrastinate_jobs_todo_now_idx`` ``(queue_name, -(priority::bigint), id)`` over the
  queued jobs due at once (``scheduled_at`` NULL): each served queue's first in fetch order,
  without reading other queues' backlog.
* ``procrastinate_jobs_todo_due_idx`` ``(priority DESC, scheduled_at, id)`` over the queued
  jobs with a due time.
* ``procrastinate_jobs_todo_scheduled_idx`` (revision 0010's, by due time alone) is dropped:
  the second index serves what it served.

``CREATE INDEX`` blocks writes to ``procrastinate_jobs`` while it reads that table (a queue:
small unless many runs sleep).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from iterflow.store import outbox

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the fetch's two indexes and drop the one they supersede."""
    if op.get_bind().execute(sa.text(outbox.INSTALLED_SQL)).scalar():
        op.execute(sa.text(outbox.NOW_INDEX_SQL))
        op.execute(sa.text(outbox.DUE_ORDER_INDEX_SQL))
        op.execute(sa.text(outbox.DROP_DUE_INDEX_SQL))


def downgrade() -> None:
    """Bring revision 0010's index back for the fetch of that version; the two new ones stay,
    as revision 0010's did (procrastinate's jobs table is shared with any other iterflow schema
    of the database)."""
    if op.get_bind().execute(sa.text(outbox.INSTALLED_SQL)).scalar():
        op.execute(sa.text(outbox.DUE_INDEX_SQL))
