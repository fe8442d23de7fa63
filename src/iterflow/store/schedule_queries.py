"""The PostgreSQL statements of schedules (``schedules``, ``schedule_events``), per schema.

Kept apart from :mod:`iterflow.store.queries` (the runs' statements): a sweep runs these and the
runs' own start statement in one transaction. The schema is interpolated as a quoted
identifier; bind parameters are named; JSON goes in as text cast to ``jsonb``.
"""

from __future__ import annotations

import sqlalchemy as sa

from iterflow.core.states import LIVE_STATUSES
from iterflow.store.schema import quote_identifier, status_in

__all__ = ["SCHEDULE_COLS", "ScheduleStatements"]

SCHEDULE_COLS = (
    "id, flow, version, cron, tz, input, overlap, catchup_seconds, jitter_seconds, start_at, "
    "end_at, paused, source, next_tick, last_tick, buffered_tick, last_run_id, created_at, "
    "updated_at"
)
_DEFINITION = (
    "flow = :flow, version = :version, cron = :cron, tz = :tz, input = CAST(:input AS jsonb), "
    "overlap = :overlap, catchup_seconds = :catchup_seconds, jitter_seconds = :jitter_seconds, "
    "start_at = :start_at, end_at = :end_at, source = :source"
)


class ScheduleStatements:
    """The schedule statements for tables in schema ``schema``."""

    def __init__(self, schema: str) -> None:
        s = quote_identifier(schema)
        live = status_in(LIVE_STATUSES, "r.status")
        self.now = sa.text("SELECT coalesce(CAST(:now AS timestamptz), now()) AS now")
        #: The sweep's first statement: its clock, and custom plans for the rest of its
        #: transaction. ``due`` binds ``now``; once sweeps with many due rows have made the
        #: custom plans look costly, PostgreSQL's plan cache switches the prepared statement to
        #: a generic plan (``next_tick <= $1`` estimated at a third of the table), an ordered
        #: scan of the whole ``next_tick`` index that reads every schedule on every idle sweep.
        #: A custom plan reads the due rows only (a bitmap scan of the two partial indexes).
        self.sweep_now = sa.text(
            "SELECT set_config('plan_cache_mode', 'force_custom_plan', true) AS plan_cache_mode, "
            "coalesce(CAST(:now AS timestamptz), now()) AS now"
        )
        #: The sweep's read: due rows locked, disjoint between concurrent sweeps. Two ways in,
        #: each served by its partial index: a due tick, or a buffered tick whose previous run
        #: is no longer live.
        self.due = sa.text(f"""
            SELECT {", ".join(f"s.{c.strip()}" for c in SCHEDULE_COLS.split(","))},
                coalesce(({live}), false) AS previous_live
            FROM {s}.schedules AS s LEFT JOIN {s}.runs AS r ON r.id = s.last_run_id
            WHERE NOT s.paused
              AND (s.next_tick <= CAST(:now AS timestamptz)
                   OR (s.buffered_tick IS NOT NULL AND NOT coalesce(({live}), false)))
            ORDER BY s.next_tick NULLS LAST
            LIMIT :limit
            FOR UPDATE OF s SKIP LOCKED""")
        self.advance = sa.text(f"""
            UPDATE {s}.schedules SET last_tick = :last_tick, next_tick = :next_tick,
                buffered_tick = :buffered_tick,
                last_run_id = coalesce(CAST(:last_run_id AS uuid), last_run_id),
                updated_at = now()
            WHERE id = :id""")
        self.set_last_run = sa.text(
            f"UPDATE {s}.schedules SET last_run_id = :last_run_id, updated_at = now() "
            "WHERE id = :id"
        )
        self.event = sa.text(f"""
            INSERT INTO {s}.schedule_events (schedule_id, type, tick, run_id, data, at)
            VALUES (:id, :type, :tick, :run_id, CAST(:data AS jsonb),
                    coalesce(CAST(:at AS timestamptz), now()))""")
        self.create = sa.text(f"""
            WITH ins AS (
                INSERT INTO {s}.schedules (id, flow, version, cron, tz, input, overlap,
                    catchup_seconds, jitter_seconds, start_at, end_at, source, last_tick,
                    next_tick)
                VALUES (:id, :flow, :version, :cron, :tz, CAST(:input AS jsonb), :overlap,
                    :catchup_seconds, :jitter_seconds, :start_at, :end_at, :source, :last_tick,
                    :next_tick)
                ON CONFLICT (id) DO NOTHING
                RETURNING id
            ), ev AS (
                INSERT INTO {s}.schedule_events (schedule_id, type, data)
                SELECT id, 'created', CAST(:data AS jsonb) FROM ins RETURNING 1
            )
            SELECT count(*) AS created FROM ins""")
        self.update = sa.text(f"""
            WITH upd AS (
                UPDATE {s}.schedules SET {_DEFINITION}, last_tick = :last_tick,
                    next_tick = :next_tick, buffered_tick = NULL, paused = :paused,
                    updated_at = now()
                WHERE id = :id
                RETURNING id
            ), ev AS (
                INSERT INTO {s}.schedule_events (schedule_id, type, data)
                SELECT id, 'updated', CAST(:data AS jsonb) FROM upd RETURNING 1
            )
            SELECT count(*) AS updated FROM upd""")
        self.set_paused = sa.text(f"""
            WITH upd AS (
                UPDATE {s}.schedules SET paused = :paused,
                    last_tick = coalesce(CAST(:last_tick AS timestamptz), last_tick),
                    next_tick = CASE WHEN :resume THEN CAST(:next_tick AS timestamptz)
                                     ELSE next_tick END,
                    updated_at = now()
                WHERE id = :id
                RETURNING id
            ), ev AS (
                INSERT INTO {s}.schedule_events (schedule_id, type, data)
                SELECT id, :type, CAST(:data AS jsonb) FROM upd RETURNING 1
            )
            SELECT count(*) AS changed FROM upd""")
        self.delete = sa.text(f"DELETE FROM {s}.schedules WHERE id = :id RETURNING id")
        self.get = sa.text(f"SELECT {SCHEDULE_COLS} FROM {s}.schedules WHERE id = :id")
        self.lock = sa.text(f"SELECT id FROM {s}.schedules WHERE id = :id FOR UPDATE")
        self.list = sa.text(f"SELECT {SCHEDULE_COLS} FROM {s}.schedules ORDER BY id")
        self.events = sa.text(f"""
            SELECT id, type, tick, run_id, data, at FROM {s}.schedule_events
            WHERE schedule_id = :id ORDER BY id DESC LIMIT :limit""")
        # Retention of the decisions: the oldest ``limit`` by id (the primary key, so a batch
        # reads ``limit`` rows however many newer ones there are), those past the age deleted.
        self.purge_events = sa.text(f"""
            WITH oldest AS (
                SELECT id, at FROM {s}.schedule_events ORDER BY id LIMIT :limit
            ), gone AS (
                DELETE FROM {s}.schedule_events AS e USING oldest
                WHERE e.id = oldest.id AND oldest.at < now() - make_interval(secs => :age)
                RETURNING 1
            )
            SELECT count(*) AS deleted FROM gone""")
