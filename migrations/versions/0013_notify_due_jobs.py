"""procrastinate's NOTIFY of an inserted job, for jobs due now only.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03

procrastinate's insert trigger NOTIFYs the workers of a new ``todo`` job's queue whether the job
is due now or later. Each worker then runs a fetch that finds nothing due: every sleep's
wake-up (and every delayed start, retry backoff or signal timeout) cost PostgreSQL about 70 µs
of CPU per listening worker. The trigger's function is replaced by the same one that skips a job
due later (``iterflow.store.outbox.NOTIFY_DUE_ONLY_SQL``); the workers' polls fetch such a job
once it is due, as before. The downgrade restores procrastinate 3.10.0's body.

The function is procrastinate's, shared by every procrastinate app of the database: theirs lose
only the NOTIFYs of jobs not yet due, which no fetch could take.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from iterflow.store import outbox

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """NOTIFY the workers of jobs due now only."""
    if op.get_bind().execute(sa.text(outbox.INSTALLED_SQL)).scalar():
        op.execute(sa.text(outbox.NOTIFY_DUE_ONLY_SQL))


def downgrade() -> None:
    """procrastinate's own NOTIFY of every inserted job again."""
    if op.get_bind().execute(sa.text(outbox.INSTALLED_SQL)).scalar():
        op.execute(sa.text(outbox.NOTIFY_ALWAYS_SQL))
