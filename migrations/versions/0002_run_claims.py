"""Rename ``runs.attempts`` to ``runs.claims``: it counts claims (attempts on the run), not a
step's attempts, which stay ``steps.attempts``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from iterflow.store.migrate import revision_schema

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Rename the column in place (no rewrite, no data change)."""
    schema = revision_schema(op.get_context())
    op.alter_column("runs", "attempts", new_column_name="claims", schema=schema)


def downgrade() -> None:
    """Give the column its old name back."""
    schema = revision_schema(op.get_context())
    op.alter_column("runs", "claims", new_column_name="attempts", schema=schema)
