"""Rename ``runs.attempts`` to ``runs.claims``: it counts claims (attempts on the run), not a
step's attempts, which stay ``steps.attempts``. Drop ``runs.deadline_at``, which nothing ever
set or read (run deadlines will add what they need with their own revision).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from iterflow.store.migrate import revision_schema

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Rename the column in place (no rewrite, no data change); drop the unused one."""
    schema = revision_schema(op.get_context())
    op.alter_column("runs", "attempts", new_column_name="claims", schema=schema)
    op.drop_column("runs", "deadline_at", schema=schema)


def downgrade() -> None:
    """Give the column its old name back, and the unused column back."""
    schema = revision_schema(op.get_context())
    op.add_column("runs", sa.Column("deadline_at", sa.DateTime(timezone=True)), schema=schema)
    op.alter_column("runs", "claims", new_column_name="attempts", schema=schema)
