"""The signal sender's trace context: ``signals.meta``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

``signals.meta`` (JSONB, nullable) holds what the engine's hooks injected where the signal was
sent (``{"trace": {"traceparent": ...}}``, see ``iterflow.core.hooks``), so the worker that
consumes the signal can link its attempt to the sender's trace. NULL when no hook injected
anything, and for signals sent before this revision. Adding a nullable column rewrites nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from iterflow.store.migrate import revision_schema

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the nullable column (no rewrite)."""
    schema = revision_schema(op.get_context())
    op.add_column("signals", sa.Column("meta", pg.JSONB()), schema=schema)


def downgrade() -> None:
    """Drop the column (the senders' trace contexts are lost)."""
    schema = revision_schema(op.get_context())
    op.drop_column("signals", "meta", schema=schema)
