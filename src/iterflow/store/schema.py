"""The iterflow tables as SQLAlchemy Core objects.

This module is the single source of truth for the schema: alembic revisions are checked against
it (``tests/integration/test_migrations.py``) and ``flowctl generate-schema`` renders it. Tables
are declared in the placeholder schema ``iterflow``; the engine maps it to the configured schema
with ``schema_translate_map``. Status lists (CHECK constraints, the live-run index) are generated
from :mod:`iterflow.core.states`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from iterflow.core.errors import ConfigInvalid
from iterflow.core.schedule import OVERLAP_POLICIES
from iterflow.core.scheduling import SCHEDULE_SOURCES
from iterflow.core.states import LIVE_STATUSES, RunStatus, StepStatus, ordered

__all__ = [
    "DEFAULT_SCHEMA",
    "LIVE_STATUS_SQL",
    "VERSION_TABLE",
    "events",
    "metadata",
    "quote_identifier",
    "runs",
    "schedule_events",
    "schedules",
    "signals",
    "status_in",
    "steps",
    "timers",
    "translate_map",
    "validate_schema_name",
    "workers",
]

DEFAULT_SCHEMA = "iterflow"

VERSION_TABLE = "iterflow_alembic_version"
"""Name of alembic's version table; it lives in the iterflow schema itself."""

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

metadata = sa.MetaData(
    schema=DEFAULT_SCHEMA,
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    },
)


def status_in(members: Iterable[StrEnum], column: str = "status") -> str:
    """``status IN ('a', 'b')`` for these statuses, in their declaration order.

    Every status list in the store's SQL (CHECK constraints, partial indexes, statements) is
    generated here from :mod:`iterflow.core.states`, so no status is spelled twice.
    """
    values = ", ".join(f"'{m.value}'" for m in ordered(members))
    return f"{column} IN ({values})"


#: The predicate of the live-run index: every status that is not terminal.
LIVE_STATUS_SQL = status_in(LIVE_STATUSES)

_now = sa.text("now()")

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("seq", sa.BigInteger, sa.Identity(always=True), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("input", pg.JSONB, nullable=False),
    sa.Column("output", pg.JSONB),
    sa.Column("error", pg.JSONB),
    sa.Column("idempotency_key", sa.Text),
    sa.Column("parent_run_id", pg.UUID(as_uuid=True)),
    sa.Column("parent_cursor_key", sa.Text),
    sa.Column("tags", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("meta", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lease_token", pg.UUID(as_uuid=True)),
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
    sa.Column("claims", sa.Integer, nullable=False, server_default="0"),
    sa.Column("stalled_claims", sa.Integer, nullable=False, server_default="0"),
    sa.Column("waiting_for", sa.Text),
    sa.Column("wake_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    # A live run past its deadline fails with RUN_DEADLINE_EXCEEDED (migration 0004).
    sa.Column("deadline_at", sa.DateTime(timezone=True)),
    # sha256 of the input's canonical JSON: a reused idempotency key with another input conflicts.
    sa.Column("input_hash", sa.Text),
    # The key of a debounced or singleton start (iterflow.core.debounce; migration 0007).
    sa.Column("run_key", sa.Text),
    # Flow control (iterflow.core.limits; migration 0008): the procrastinate queue of the run's
    # wake-ups (NULL: the engine's base queue), the key its flow's limits count it under, and
    # why it is held back by a limit (NULL: it is not).
    sa.Column("queue", sa.Text),
    sa.Column("limit_key", sa.Text),
    sa.Column("held", pg.JSONB),
    sa.CheckConstraint(status_in(RunStatus), name="status"),
    sa.Index(
        "ix_runs_name_idempotency_key",
        "name",
        "idempotency_key",
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    ),
    sa.Index(
        "ix_runs_status_wake_at", "status", "wake_at", postgresql_where=sa.text(LIVE_STATUS_SQL)
    ),
    sa.Index(
        "ix_runs_parent_run_id",
        "parent_run_id",
        postgresql_where=sa.text("parent_run_id IS NOT NULL"),
    ),
    # Debounce and singleton lookups: the live runs of a flow with a run key.
    sa.Index(
        "ix_runs_name_run_key",
        "name",
        "run_key",
        postgresql_where=sa.text("run_key IS NOT NULL AND finished_at IS NULL"),
    ),
    # Limits: the live attempts of a flow and key, and its line of held runs.
    sa.Index(
        "ix_runs_limit_running",
        "name",
        "limit_key",
        postgresql_where=sa.text(f"limit_key IS NOT NULL AND {status_in([RunStatus.RUNNING])}"),
    ),
    sa.Index(
        "ix_runs_limit_held",
        "name",
        "limit_key",
        sa.text("priority DESC"),
        "seq",
        postgresql_where=sa.text("held IS NOT NULL"),
    ),
    sa.Index("ix_runs_tags", "tags", postgresql_using="gin"),
    sa.Index("ix_runs_seq", "seq", unique=True),
    sa.Index("ix_runs_name_seq", "name", "seq"),
    # list_runs' status, schedule and idempotency key filters in seq order (migration 0010).
    sa.Index("ix_runs_status_seq", "status", "seq"),
    sa.Index(
        "ix_runs_schedule_id_seq",
        sa.text("(meta ->> 'schedule_id')"),
        "seq",
        postgresql_where=sa.text("(meta ->> 'schedule_id') IS NOT NULL"),
    ),
    sa.Index(
        "ix_runs_idempotency_key_seq",
        "idempotency_key",
        "seq",
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    ),
    # The reconciler's overdue deadlines (migration 0010).
    sa.Index(
        "ix_runs_deadline_at",
        "deadline_at",
        postgresql_where=sa.text(f"deadline_at IS NOT NULL AND {LIVE_STATUS_SQL}"),
    ),
    # Retention's sweep: finished top-level runs by status and age (children go with them).
    sa.Index(
        "ix_runs_status_finished_at",
        "status",
        "finished_at",
        postgresql_where=sa.text("parent_run_id IS NULL AND finished_at IS NOT NULL"),
    ),
)

steps = sa.Table(
    "steps",
    metadata,
    sa.Column(
        "run_id",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("cursor_key", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("output", pg.JSONB),
    sa.Column("error", pg.JSONB),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.CheckConstraint(status_in(StepStatus), name="status"),
    sa.UniqueConstraint("run_id", "cursor_key", name="uq_steps_run_id_cursor_key"),
)

signals = sa.Table(
    "signals",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column(
        "run_id",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("runs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("payload", pg.JSONB, nullable=False),
    sa.Column("idempotency_key", sa.Text),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("consumed_by", sa.Text),
    sa.Column("consumed_at", sa.DateTime(timezone=True)),
    # What the hooks injected where the signal was sent (the sender's trace; migration 0006).
    sa.Column("meta", pg.JSONB),
    sa.UniqueConstraint("run_id", "idempotency_key", name="uq_signals_run_id_idempotency_key"),
    sa.Index(
        "ix_signals_inbox",
        "run_id",
        "name",
        "id",
        postgresql_where=sa.text("consumed_at IS NULL"),
    ),
)

timers = sa.Table(
    "timers",
    metadata,
    sa.Column(
        "run_id",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("cursor_key", sa.Text, primary_key=True),
    sa.Column("fire_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("fired_at", sa.DateTime(timezone=True)),
    sa.Index("ix_timers_due", "fire_at", postgresql_where=sa.text("fired_at IS NULL")),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column(
        "run_id",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("runs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("cursor_key", sa.Text),
    sa.Column("data", pg.JSONB),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Index("ix_events_run_id_id", "run_id", "id"),
)


#: The overlap policies and sources a schedule may hold (CHECK constraints).
OVERLAP_SQL = "overlap IN (" + ", ".join(f"'{p}'" for p in OVERLAP_POLICIES) + ")"
SOURCE_SQL = "source IN (" + ", ".join(f"'{p}'" for p in SCHEDULE_SOURCES) + ")"

schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("flow", sa.Text, nullable=False),
    sa.Column("version", sa.Integer),
    sa.Column("cron", sa.Text, nullable=False),
    sa.Column("tz", sa.Text, nullable=False),
    sa.Column("input", pg.JSONB),
    sa.Column("overlap", sa.Text, nullable=False, server_default="skip"),
    sa.Column("catchup_seconds", sa.Integer),
    sa.Column("jitter_seconds", sa.Integer, nullable=False, server_default="0"),
    sa.Column("start_at", sa.DateTime(timezone=True)),
    sa.Column("end_at", sa.DateTime(timezone=True)),
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.text("false")),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("next_tick", sa.DateTime(timezone=True)),
    sa.Column("last_tick", sa.DateTime(timezone=True)),
    sa.Column("buffered_tick", sa.DateTime(timezone=True)),
    sa.Column("last_run_id", pg.UUID(as_uuid=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.CheckConstraint(OVERLAP_SQL, name="overlap"),
    sa.CheckConstraint(SOURCE_SQL, name="source"),
    # The sweep's two ways in: due ticks, and buffered ticks waiting for their previous run.
    sa.Index("ix_schedules_next_tick", "next_tick", postgresql_where=sa.text("NOT paused")),
    sa.Index(
        "ix_schedules_buffered_tick",
        "buffered_tick",
        postgresql_where=sa.text("buffered_tick IS NOT NULL AND NOT paused"),
    ),
)

schedule_events = sa.Table(
    "schedule_events",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column(
        "schedule_id",
        sa.Text,
        sa.ForeignKey("schedules.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("tick", sa.DateTime(timezone=True)),
    sa.Column("run_id", pg.UUID(as_uuid=True)),
    sa.Column("data", pg.JSONB),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Index("ix_schedule_events_schedule_id_id", "schedule_id", "id"),
)


# The worker registry (migration 0005): written at a worker's start and heartbeat, deleted at its
# clean stop; ``flows`` are the ``name@version`` it can run.
workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("flows", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("queues", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
)


def validate_schema_name(schema: str) -> str:
    """Return ``schema`` if it is a lowercase SQL identifier, else raise ``ConfigInvalid``."""
    if not _IDENT.match(schema):
        raise ConfigInvalid(
            f"schema name {schema!r} is not a lowercase SQL identifier "
            "(letters, digits and underscores, at most 63 characters), e.g. 'iterflow'"
        )
    return schema


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier (``"acme"``; an embedded ``"`` is doubled).

    Every schema name interpolated into SQL text goes through this, whether or not it was
    validated first, so no name can ever reach PostgreSQL as anything but one identifier.
    """
    if "\x00" in name:
        raise ConfigInvalid(f"SQL identifier {name!r} contains a NUL character")
    return '"' + name.replace('"', '""') + '"'


def translate_map(schema: str) -> dict[str | None, str | None]:
    """The ``schema_translate_map`` that places the tables in ``schema``."""
    return {DEFAULT_SCHEMA: schema}


# The attempt starts of each flow and key in its rate window (iterflow.core.limits; migration
# 0008), written under the advisory lock of that flow and key.
rate_windows = sa.Table(
    "rate_windows",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("limit_key", sa.Text, primary_key=True),
    sa.Column("starts", pg.ARRAY(sa.DateTime(timezone=True)), nullable=False),
)
