"""The wake-up fetch's index of due jobs leads with the queue.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03

Revision 0011's index of the queued jobs with a due time, ``procrastinate_jobs_todo_due_idx``
``(priority DESC, scheduled_at, id)``, held every queue's: the fetch read its due range across
queues and filtered by the worker's, so the due wake-ups of a queue no worker serves (a flow
version no worker runs any more, its sleepers' timers long due) were read past on each fetch and
each idle poll (702 pages with 20,000 of them). Its replacement,
``procrastinate_jobs_todo_queue_due_idx`` ``(queue_name, priority DESC, scheduled_at, id)``,
gives each served queue's due jobs alone (``iterflow.store.outbox.FETCH_JOB_SQL``).

``CREATE INDEX`` blocks writes to ``procrastinate_jobs`` while it reads that table (a queue:
small unless many runs sleep).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from iterflow.store import outbox

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the per-queue index of due jobs and drop the one it supersedes."""
    if op.get_bind().execute(sa.text(outbox.INSTALLED_SQL)).scalar():
        op.execute(sa.text(outbox.QUEUE_DUE_INDEX_SQL))
        op.execute(sa.text(outbox.DROP_DUE_ORDER_INDEX_SQL))


def downgrade() -> None:
    """Bring revision 0011's index back for the fetch of that version; the new one stays, as
    revision 0011's did (procrastinate's jobs table is shared with any other iterflow schema of
    the database)."""
    if op.get_bind().execute(sa.text(outbox.INSTALLED_SQL)).scalar():
        op.execute(sa.text(outbox.DUE_ORDER_INDEX_SQL))
