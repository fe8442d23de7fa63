"""Schedules: cron definitions with their tick watermark, and the decisions taken on them.

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-05

``schedules`` holds one row per schedule (declared in code or created through the API) with
its state: ``last_tick`` (every tick at or before it was started or skipped), ``next_tick``
(what the sweep looks for, through a partial index on unpaused rows, so a sweep's cost grows
with the due schedules only), ``buffered_tick`` and ``last_run_id``. ``schedule_events`` records
every decision (started, skipped, buffered, canceled_previous, paused, resumed, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from iterflow.store.migrate import revision_schema

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")
# Spelled out (a revision never changes with the code): iterflow.core.schedule.OVERLAP_POLICIES
OVERLAP = "overlap IN ('skip', 'buffer_one', 'allow', 'cancel_previous')"
SOURCE = "source IN ('code', 'api')"


def upgrade() -> None:
    """Create ``schedules`` and ``schedule_events``."""
    schema = revision_schema(op.get_context())
    op.create_table(
        "schedules",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("flow", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("cron", sa.Text(), nullable=False),
        sa.Column("tz", sa.Text(), nullable=False),
        sa.Column("input", pg.JSONB(), nullable=True),
        sa.Column("overlap", sa.Text(), server_default="skip", nullable=False),
        sa.Column("catchup_seconds", sa.Integer(), nullable=True),
        sa.Column("jitter_seconds", sa.Integer(), server_default="0", nullable=False),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("paused", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("next_tick", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_tick", sa.DateTime(timezone=True), nullable=True),
        sa.Column("buffered_tick", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_run_id", pg.UUID(as_uuid=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint(OVERLAP, name=op.f("ck_schedules_overlap")),
        sa.CheckConstraint(SOURCE, name=op.f("ck_schedules_source")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
        schema=schema,
    )
    op.create_index(
        "ix_schedules_next_tick",
        "schedules",
        ["next_tick"],
        schema=schema,
        postgresql_where=sa.text("NOT paused"),
    )
    op.create_index(
        "ix_schedules_buffered_tick",
        "schedules",
        ["buffered_tick"],
        schema=schema,
        postgresql_where=sa.text("buffered_tick IS NOT NULL AND NOT paused"),
    )
    op.create_table(
        "schedule_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("schedule_id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("tick", sa.DateTime(timezone=True), nullable=True),
        sa.Column("run_id", pg.UUID(as_uuid=True), nullable=True),
        sa.Column("data", pg.JSONB(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            [f"{schema}.schedules.id"],
            name=op.f("fk_schedule_events_schedule_id_schedules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_events")),
        schema=schema,
    )
    op.create_index(
        "ix_schedule_events_schedule_id_id",
        "schedule_events",
        ["schedule_id", "id"],
        schema=schema,
    )


def downgrade() -> None:
    """Drop both tables (their rows are lost)."""
    schema = revision_schema(op.get_context())
    op.drop_table("schedule_events", schema=schema)
    op.drop_table("schedules", schema=schema)
