"""Sagas: the ``compensation_failed`` run status.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

A run whose compensation (``ctx.step(..., compensate=)``) failed for good ends
``compensation_failed``, a terminal status ``engine.retry`` resumes. Only the CHECK constraint on
``runs.status`` changes (the live-run index lists live statuses, which are unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from iterflow.store.migrate import revision_schema

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = (
    "status IN ('pending', 'running', 'sleeping', 'awaiting_signal', 'awaiting_child', "
    "'retrying', 'parked', 'done', 'failed', 'canceled')"
)
_AFTER = (
    "status IN ('pending', 'running', 'sleeping', 'awaiting_signal', 'awaiting_child', "
    "'retrying', 'parked', 'done', 'failed', 'canceled', 'compensation_failed')"
)


def _replace(check: str) -> None:
    schema = revision_schema(op.get_context())
    op.drop_constraint(op.f("ck_runs_status"), "runs", schema=schema, type_="check")
    op.create_check_constraint(op.f("ck_runs_status"), "runs", check, schema=schema)


def upgrade() -> None:
    """Allow ``compensation_failed`` in ``runs.status``."""
    _replace(_AFTER)


def downgrade() -> None:
    """Disallow it again (fails if a run is ``compensation_failed``: retry or purge it first)."""
    _replace(_BEFORE)
