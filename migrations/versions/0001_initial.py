"""Initial schema: runs, steps, signals, timers, events; procrastinate 3.10.0's schema.

Revision ID: 0001
Revises:
Create Date: 2026-01-01

The iterflow tables go in the configured schema (``iterflow`` by default). procrastinate's
tables, types and functions go in the connection's default search_path (normally ``public``),
once per database: a second iterflow schema in the same database reuses them.

Downgrade drops the iterflow tables (env.py then drops the schema's version table). It drops
procrastinate's objects only when asked, with ``-x drop_procrastinate=true`` on the alembic
command line or ``iterflow.store.migrate.downgrade(..., drop_procrastinate=True)``, because other
iterflow schemas (or the application itself) may still use them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from iterflow.store.migrate import (
    drop_procrastinate_requested,
    install_procrastinate,
    revision_schema,
)

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUN_STATUSES = (
    "status IN ('pending', 'running', 'sleeping', 'awaiting_signal', 'awaiting_child', "
    "'retrying', 'parked', 'done', 'failed', 'canceled')"
)
LIVE_RUN_STATUSES = (
    "status IN ('pending', 'running', 'sleeping', 'awaiting_signal', 'awaiting_child', "
    "'retrying', 'parked')"
)
NOW = sa.text("now()")


def upgrade() -> None:
    """Create the iterflow tables, then install procrastinate's schema if it is missing."""
    schema = revision_schema(op.get_context())
    _create_runs(schema)
    _create_steps(schema)
    _create_signals(schema)
    _create_timers(schema)
    _create_events(schema)
    install_procrastinate(op.get_bind())  # unless another iterflow schema (or the app) did


def downgrade() -> None:
    """Drop the iterflow tables (and procrastinate's objects only if asked)."""
    context = op.get_context()
    schema = revision_schema(context)
    for table in ("events", "timers", "signals", "steps", "runs"):
        op.drop_table(table, schema=schema)
    if drop_procrastinate_requested(context.config):
        _drop_procrastinate()


def _create_runs(schema: str) -> None:
    op.create_table(
        "runs",
        sa.Column("id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("input", pg.JSONB(), nullable=False),
        sa.Column("output", pg.JSONB(), nullable=True),
        sa.Column("error", pg.JSONB(), nullable=True),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("parent_run_id", pg.UUID(as_uuid=True), nullable=True),
        sa.Column("parent_cursor_key", sa.Text(), nullable=True),
        sa.Column("tags", pg.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("meta", pg.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column("lease_token", pg.UUID(as_uuid=True), nullable=True),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("stalled_claims", sa.Integer(), server_default="0", nullable=False),
        sa.Column("waiting_for", sa.Text(), nullable=True),
        sa.Column("wake_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(RUN_STATUSES, name=op.f("ck_runs_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        schema=schema,
    )
    op.create_index(
        "ix_runs_name_idempotency_key",
        "runs",
        ["name", "idempotency_key"],
        unique=True,
        schema=schema,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index(
        "ix_runs_status_wake_at",
        "runs",
        ["status", "wake_at"],
        schema=schema,
        postgresql_where=sa.text(LIVE_RUN_STATUSES),
    )
    op.create_index(
        "ix_runs_parent_run_id",
        "runs",
        ["parent_run_id"],
        schema=schema,
        postgresql_where=sa.text("parent_run_id IS NOT NULL"),
    )
    op.create_index("ix_runs_tags", "runs", ["tags"], schema=schema, postgresql_using="gin")
    op.create_index("ix_runs_seq", "runs", ["seq"], unique=True, schema=schema)
    op.create_index("ix_runs_name_seq", "runs", ["name", "seq"], schema=schema)


def _run_fk(schema: str, table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["run_id"],
        [f"{schema}.runs.id"],
        name=op.f(f"fk_{table}_run_id_runs"),
        ondelete="CASCADE",
    )


def _create_steps(schema: str) -> None:
    op.create_table(
        "steps",
        sa.Column("run_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("cursor_key", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("output", pg.JSONB(), nullable=True),
        sa.Column("error", pg.JSONB(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="1", nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint("status IN ('ok', 'failed', 'retrying')", name=op.f("ck_steps_status")),
        _run_fk(schema, "steps"),
        sa.PrimaryKeyConstraint("run_id", "position", name=op.f("pk_steps")),
        sa.UniqueConstraint("run_id", "cursor_key", name=op.f("uq_steps_run_id_cursor_key")),
        schema=schema,
    )


def _create_signals(schema: str) -> None:
    op.create_table(
        "signals",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("run_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("payload", pg.JSONB(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("consumed_by", sa.Text(), nullable=True),
        sa.Column("consumed_at", sa.DateTime(timezone=True), nullable=True),
        _run_fk(schema, "signals"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signals")),
        sa.UniqueConstraint(
            "run_id", "idempotency_key", name=op.f("uq_signals_run_id_idempotency_key")
        ),
        schema=schema,
    )
    op.create_index(
        "ix_signals_inbox",
        "signals",
        ["run_id", "name", "id"],
        schema=schema,
        postgresql_where=sa.text("consumed_at IS NULL"),
    )


def _create_timers(schema: str) -> None:
    op.create_table(
        "timers",
        sa.Column("run_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("cursor_key", sa.Text(), nullable=False),
        sa.Column("fire_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=True),
        _run_fk(schema, "timers"),
        sa.PrimaryKeyConstraint("run_id", "cursor_key", name=op.f("pk_timers")),
        schema=schema,
    )
    op.create_index(
        "ix_timers_due",
        "timers",
        ["fire_at"],
        schema=schema,
        postgresql_where=sa.text("fired_at IS NULL"),
    )


def _create_events(schema: str) -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("run_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("cursor_key", sa.Text(), nullable=True),
        sa.Column("data", pg.JSONB(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        _run_fk(schema, "events"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        schema=schema,
    )
    op.create_index("ix_events_run_id_id", "events", ["run_id", "id"], schema=schema)


# --------------------------------------------------------------------------------------------
# procrastinate 3.10.0 (pinned in pyproject.toml). A procrastinate upgrade that ships SQL
# migration files gets one new revision per file, read from the installed package by name.


def _drop_procrastinate() -> None:
    """Drop every procrastinate_* table, function and type in procrastinate's schema."""
    bind = op.get_bind()
    namespace = bind.execute(
        sa.text("SELECT relnamespace FROM pg_class WHERE oid = to_regclass('procrastinate_jobs')")
    ).scalar()
    if namespace is None:
        return
    prefix = "starts_with({}, 'procrastinate_')"
    tables = bind.execute(
        sa.text(
            "SELECT oid::regclass::text FROM pg_class WHERE relnamespace = :ns "
            f"AND relkind IN ('r', 'p') AND {prefix.format('relname')}"
        ),
        {"ns": namespace},
    ).scalars()
    for table in list(tables):
        op.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    functions = bind.execute(
        sa.text(
            "SELECT oid::regprocedure::text FROM pg_proc WHERE pronamespace = :ns "
            f"AND {prefix.format('proname')}"
        ),
        {"ns": namespace},
    ).scalars()
    for function in list(functions):
        op.execute(f"DROP FUNCTION IF EXISTS {function} CASCADE")
    types = bind.execute(
        sa.text(
            "SELECT oid::regtype::text FROM pg_type WHERE typnamespace = :ns "
            f"AND typtype IN ('e', 'c') AND {prefix.format('typname')}"
        ),
        {"ns": namespace},
    ).scalars()
    for type_ in list(types):
        op.execute(f"DROP TYPE IF EXISTS {type_} CASCADE")
