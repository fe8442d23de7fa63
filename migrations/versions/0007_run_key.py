"""The key of a debounced or singleton start: ``runs.run_key``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

``runs.run_key`` (text, nullable) is the ``key=`` of a start with ``debounce=`` or
``singleton=True`` ("" for the flow itself; see ``iterflow.core.debounce``), NULL for every
other run. ``ix_runs_name_run_key`` indexes the live runs that have one (``finished_at IS
NULL``), which is what both lookups read: a start serializes on an advisory lock per (flow, key)
and then looks there, so the index needs no uniqueness. Adding a nullable column rewrites
nothing; the partial index covers no existing row.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from iterflow.store.migrate import revision_schema

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the nullable column and its partial index."""
    schema = revision_schema(op.get_context())
    op.add_column("runs", sa.Column("run_key", sa.Text()), schema=schema)
    op.create_index(
        "ix_runs_name_run_key",
        "runs",
        ["name", "run_key"],
        schema=schema,
        postgresql_where=sa.text("run_key IS NOT NULL AND finished_at IS NULL"),
    )


def downgrade() -> None:
    """Drop the index and the column (debounced and singleton runs become plain runs)."""
    schema = revision_schema(op.get_context())
    op.drop_index("ix_runs_name_run_key", table_name="runs", schema=schema)
    op.drop_column("runs", "run_key", schema=schema)
