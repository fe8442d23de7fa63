"""Every SQL statement of the PostgreSQL store, built once per schema.

The hot-path writes (start, claim, checkpoint, suspend, finish, spawn, park) are each **one
statement** (a data-modifying CTE, run as its own transaction by ``PostgresStore``, fenced by the
run's lease token where one is held). Signal delivery, cancel and retry are transactions of a few
statements: a row lock first, then the writes. Bind parameters are named; JSON goes in as text and
is cast to ``jsonb``. Statuses, event types and the fixed event payloads are spelled from
:mod:`iterflow.core.states`, never by hand.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from iterflow.core.keys import SIGNAL_WAIT_PREFIX, WaitKind
from iterflow.core.models import NewRun, RunFilter
from iterflow.core.states import (
    LIVE_STATUSES,
    RESUMABLE_STATUSES,
    RETRYABLE_STATUSES,
    TERMINAL_STATUSES,
    TIMED_STATUSES,
    EventPayload,
    EventType,
    Recovered,
    Rewoken,
    RunStatus,
    Started,
    StepStatus,
    Unparked,
)
from iterflow.store.outbox import (
    PENDING_WAKE_SQL,
    drop_queued_wakes_sql,
    end_own_wake_sql,
    flow_queue,
    has_live_job_sql,
    orphaned_jobs_sql,
    release_doing_sql,
    wake_insert_sql,
)
from iterflow.store.schema import quote_identifier, status_in

__all__ = [
    "RUN_COLS",
    "TERMINAL_CHANNEL",
    "Statements",
    "json_param",
    "run_filter_clauses",
    "start_params",
]

#: NOTIFY channel carrying the id of every run that reached a terminal status.
TERMINAL_CHANNEL = "iterflow_terminal"

RUN_COLS = (
    "id, seq, name, version, status, input, output, error, idempotency_key, parent_run_id, "
    "parent_cursor_key, tags, priority, lease_owner, lease_expires_at, claims, "
    "stalled_claims, waiting_for, wake_at, created_at, updated_at, started_at, finished_at, meta, "
    "deadline_at, limit_key, held"
)


def _v(member: StrEnum) -> str:
    """A status or event type as an SQL string literal."""
    return f"'{member.value}'"


def json_param(value: Any) -> str | None:
    """A JSON value as the text bound to a ``CAST(:x AS jsonb)`` parameter (NULL for None)."""
    return None if value is None else json.dumps(value, separators=(",", ":"))


def start_params(run: NewRun, queue: str) -> dict[str, Any]:
    """The parameters of :attr:`Statements.start` for ``run`` (one statement writes the run,
    its ``started`` event and its wake-up job; ``delayed_until`` is set by the statement from
    the run's due time, ``now() + delay`` on the database's clock)."""
    return {
        "id": run.id,
        "name": run.name,
        "version": run.version,
        "input": json_param(run.input),
        "idem": run.idempotency_key,
        "tags": list(run.tags),
        "priority": run.priority,
        "wake_at": run.wake_at,
        "delay": run.delay,
        "parent_run_id": run.parent_run_id,
        "parent_cursor_key": run.parent_cursor_key,
        "meta": json_param(run.meta),
        "event": json_param(Started(version=run.version).to_data()),
        "queue": queue,
        "deadline": run.deadline,
        "input_hash": run.input_hash,
        "run_queue": flow_queue(queue, run.name, run.version),
        "limit_key": run.limit_key,
        "run_key": run.run_key,
    }


def run_filter_clauses(runs: sa.Table, where: RunFilter) -> list[sa.ColumnElement[bool]]:
    """The SQL of :meth:`RunFilter.matches <iterflow.core.models.RunFilter.matches>` over the
    ``runs`` table (used by ``list_runs`` and ``count_runs``)."""
    c = runs.c
    clauses: list[sa.ColumnElement[bool]] = []
    if where.name is not None:
        clauses.append(c.name == where.name)
    if where.version is not None:
        clauses.append(c.version == where.version)
    if where.statuses:  # ix_runs_status_seq
        clauses.append(c.status.in_([s.value for s in where.statuses]))
    if where.tags:  # the GIN index on tags
        clauses.append(c.tags.contains(list(where.tags)))
    if where.idempotency_key is not None:  # (name, idempotency_key) or (idempotency_key, seq)
        clauses.append(c.idempotency_key == where.idempotency_key)
    if where.created_after is not None:
        clauses.append(c.created_at >= where.created_after)
    if where.created_before is not None:
        clauses.append(c.created_at < where.created_before)
    if where.finished_after is not None:
        clauses.append(c.finished_at >= where.finished_after)
    if where.finished_before is not None:
        clauses.append(c.finished_at < where.finished_before)
    if where.parent_run_id is not None:  # ix_runs_parent_run_id
        clauses.append(c.parent_run_id == where.parent_run_id)
    if where.schedule_id is not None:  # ix_runs_schedule_id_seq: the key written literally
        clauses.append(
            c.meta.op("->>", return_type=sa.Text)(sa.literal_column("'schedule_id'"))
            == where.schedule_id
        )
    if (bounds := where.id_bounds()) is not None:  # a range scan of the primary key
        clauses.append(c.id.between(*bounds))
    return clauses


def _held_head(s: str) -> str:
    """A held run ``r`` the reconciler wakes: no attempt of its flow and key is live (whose end
    would wake the line), none of its line has a wake-up queued, and it is first in line."""
    return f"""NOT EXISTS (
                    SELECT 1 FROM {s}.runs AS o
                    WHERE o.name = r.name AND o.limit_key = r.limit_key AND o.id <> r.id
                      AND (o.status = {_RUNNING}
                           OR (o.held IS NOT NULL AND {status_in(RESUMABLE_STATUSES, "o.status")}
                               AND ({has_live_job_sql("o.id")}
                                    OR o.priority > r.priority
                                    OR (o.priority = r.priority AND o.seq < r.seq)))))"""


def _jsonb(payload: EventPayload) -> str:
    """A fixed event payload as a ``jsonb`` literal."""
    return "'" + json.dumps(payload.to_data()).replace("'", "''") + "'::jsonb"


def _iso_utc(expr: str) -> str:
    """``expr`` (a timestamptz) as text in Python's ``datetime.isoformat()`` form for UTC
    (``2025-01-02T03:04:05.123456+00:00``, the fraction omitted when zero); NULL stays NULL."""
    utc = f"({expr} AT TIME ZONE 'UTC')"
    return (
        f"CASE WHEN {expr} IS NULL THEN NULL ELSE "
        f"to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN to_char({utc}, 'US') = "
        f"'000000' THEN '' ELSE to_char({utc}, '.US') END || '+00:00' END"
    )


_PENDING = _v(RunStatus.PENDING)
_RUNNING = _v(RunStatus.RUNNING)
_RETRYING = _v(RunStatus.RETRYING)
_PARKED = _v(RunStatus.PARKED)
_CANCELED = _v(RunStatus.CANCELED)


class Statements:
    """The store's statements for tables in schema ``schema``.

    The schema name is interpolated as a quoted identifier (``"acme".runs``), whatever it is:
    validation happens in ``Settings``, but SQL text never relies on it.
    """

    def __init__(self, schema: str) -> None:
        s = quote_identifier(schema)
        self.start = sa.text(f"""
            WITH ins AS (
                INSERT INTO {s}.runs (id, name, version, status, input, idempotency_key, tags,
                    priority, wake_at, parent_run_id, parent_cursor_key, meta, deadline_at,
                    input_hash, run_key, queue, limit_key)
                VALUES (:id, :name, :version, {_PENDING}, CAST(:input AS jsonb), :idem,
                    CAST(:tags AS text[]), :priority,
                    coalesce(CAST(:wake_at AS timestamptz), now() + CAST(:delay AS interval)),
                    :parent_run_id, :parent_cursor_key, CAST(:meta AS jsonb),
                    now() + CAST(:deadline AS interval), CAST(:input_hash AS text),
                    CAST(:run_key AS text), :run_queue, CAST(:limit_key AS text))
                ON CONFLICT (name, idempotency_key) WHERE idempotency_key IS NOT NULL
                DO NOTHING
                RETURNING id, status, wake_at, queue
            ), ev AS (
                INSERT INTO {s}.events (run_id, type, data)
                SELECT id, {_v(EventType.STARTED)}, CAST(:event AS jsonb)
                    || jsonb_build_object('delayed_until', {_iso_utc("wake_at")})
                FROM ins RETURNING 1
            ), job AS ({wake_insert_sql("ins", wake_at="ins.wake_at", queue="ins.queue")})
            SELECT id, status, true AS created, (SELECT count(*) FROM job) AS jobs FROM ins""")
        self.existing = sa.text(
            f"SELECT id, status, input_hash FROM {s}.runs "
            "WHERE name = :name AND idempotency_key = :idem"
        )
        self.claim = sa.text(f"""
            WITH claimed AS (
                UPDATE {s}.runs SET status = {_RUNNING}, lease_token = :token,
                    lease_owner = :owner,
                    lease_expires_at = now() + make_interval(secs => :lease),
                    claims = claims + 1, stalled_claims = stalled_claims + 1,
                    started_at = coalesce(started_at, now()), updated_at = now(), held = NULL,
                    -- taken from a lost attempt (expired lease), as the reconciler's recovery
                    -- would: the attempt counts it (iterflow.core.decisions.lost_attempts)
                    waiting_for = CASE WHEN status = {_RUNNING} THEN {_v(WaitKind.RECOVERY)}
                                       ELSE waiting_for END
                WHERE id = :run_id AND ({status_in(RESUMABLE_STATUSES)}
                    OR (status = {_RUNNING} AND lease_expires_at < now()))
                    -- flow control (iterflow.core.limits): a flow version this worker serves
                    -- (NULL: any), and a limited run only once admitted (:admitted)
                    AND (CAST(:served AS text[]) IS NULL
                         OR name || '@' || version = ANY(CAST(:served AS text[])))
                    AND (limit_key IS NULL OR CAST(:admitted AS boolean))
                RETURNING {RUN_COLS}
            )
            SELECT claimed.*, now() AS db_now,
                (SELECT coalesce(json_agg(json_build_object(
                    'position', position, 'cursor_key', cursor_key, 'kind', kind,
                    'label', label, 'status', status, 'output', output, 'error', error,
                    'attempts', attempts, 'started_at', started_at, 'finished_at', finished_at)
                    ORDER BY position), '[]'::json)
                 FROM {s}.steps WHERE run_id = :run_id) AS history,
                (SELECT coalesce(json_agg(json_build_object(
                    'cursor_key', cursor_key, 'fire_at', fire_at, 'fired_at', fired_at)),
                    '[]'::json)
                 FROM {s}.timers WHERE run_id = :run_id AND fired_at IS NULL) AS timers,
                (SELECT coalesce(json_agg(json_build_object(
                    'id', id, 'name', name, 'payload', payload,
                    'idempotency_key', idempotency_key, 'received_at', received_at,
                    'consumed_by', consumed_by, 'consumed_at', consumed_at, 'meta', meta)
                    ORDER BY id),
                    '[]'::json)
                 FROM {s}.signals WHERE run_id = :run_id AND consumed_at IS NULL) AS inbox,
                (SELECT coalesce(json_agg(json_build_object(
                    'id', c.id, 'cursor_key', c.parent_cursor_key, 'status', c.status,
                    'output', c.output, 'error', c.error, 'finished_at', c.finished_at)),
                    '[]'::json)
                 FROM {s}.runs AS c
                 WHERE c.parent_run_id = :run_id AND {status_in(TERMINAL_STATUSES, "c.status")}
                   AND NOT EXISTS (SELECT 1 FROM {s}.steps AS m
                                   WHERE m.run_id = :run_id
                                     AND m.cursor_key = c.parent_cursor_key)) AS children,
                -- The row as it was before this claim (same snapshot): when it became claimable.
                (SELECT CASE WHEN p.status = {_RUNNING} THEN p.lease_expires_at
                             ELSE p.updated_at END
                 FROM {s}.runs AS p WHERE p.id = :run_id) AS ready_at
            FROM claimed""")
        self.renew = sa.text(f"""
            UPDATE {s}.runs SET lease_expires_at = now() + make_interval(secs => :lease)
            WHERE id = :run_id AND lease_token = :token AND status = {_RUNNING}
            RETURNING id""")
        lease_and_memo = f"""
            WITH lease AS (
                UPDATE {s}.runs SET lease_expires_at = now() + make_interval(secs => :lease),
                    stalled_claims = 0, updated_at = now()
                WHERE id = :run_id AND lease_token = :token AND status = {_RUNNING}
                RETURNING id
            ), memo AS (
                INSERT INTO {s}.steps (run_id, position, cursor_key, kind, label, status,
                    output, error, attempts, started_at, finished_at)
                SELECT id, :position, :cursor_key, :kind, :label, :status,
                    CAST(:output AS jsonb), CAST(:error AS jsonb), :attempts,
                    CAST(:started_at AS timestamptz), now()
                FROM lease
                ON CONFLICT (run_id, position) DO UPDATE SET status = EXCLUDED.status,
                    output = EXCLUDED.output, error = EXCLUDED.error,
                    attempts = EXCLUDED.attempts, finished_at = EXCLUDED.finished_at
                WHERE {s}.steps.status = {_v(StepStatus.RETRYING)}
                RETURNING 1
            )"""
        leased = "SELECT (SELECT count(*) FROM lease) AS leased"
        #: The attempt's first checkpoint: renew the lease, reset the no-progress count and write
        #: the memo, fenced by the token.
        self.checkpoint = sa.text(f"{lease_and_memo}\n            {leased}")
        #: Every later plain step: the memo alone, fenced by a share lock on the run row. The
        #: lock blocks a concurrent takeover (recovery, cancel, an expired-lease claim: all
        #: UPDATEs of the row) until this commits, and a takeover committed first changes the
        #: token, so nothing is inserted. No new run-row version, no upsert: a fresh position
        #: (a retried step's memo replaces its ``retrying`` row through ``checkpoint``).
        fenced = f"""
            INSERT INTO {s}.steps (run_id, position, cursor_key, kind, label, status, output,
                error, attempts, started_at, finished_at)
            SELECT id, :position, :cursor_key, :kind, :label, :status, CAST(:output AS jsonb),
                CAST(:error AS jsonb), :attempts, CAST(:started_at AS timestamptz), now()
            FROM {s}.runs
            WHERE id = :run_id AND lease_token = :token AND status = {_RUNNING}
            FOR SHARE"""
        self.checkpoint_fenced = sa.text(f"{fenced}\n            RETURNING 1 AS leased")
        #: The same as a batch of one (``store/group_commit.py``): a locked run row is skipped
        #: instead of waited for, as the batch skips it.
        self.checkpoint_skip_locked = sa.text(
            f"{fenced} SKIP LOCKED\n            RETURNING run_id, position"
        )
        #: Checkpoints of several runs in one statement (``store/group_commit.py``): plain ones
        #: fenced as ``checkpoint_fenced`` fences them alone, an attempt's first one (``renew``)
        #: renewing the lease and resetting the no-progress count as ``checkpoint`` does; a row
        #: whose run row is locked elsewhere is skipped instead of waited for. Returns the rows
        #: written. (A run's row is taken once: the lock of one CTE, then at most one update.)
        self.checkpoint_batch = sa.text(f"""
            WITH b AS (
                SELECT * FROM unnest(CAST(:run_ids AS uuid[]), CAST(:tokens AS uuid[]),
                    CAST(:positions AS integer[]), CAST(:cursor_keys AS text[]),
                    CAST(:kinds AS text[]), CAST(:labels AS text[]), CAST(:statuses AS text[]),
                    CAST(:outputs AS text[]), CAST(:errors AS text[]),
                    CAST(:attempts AS integer[]), CAST(:started_ats AS timestamptz[]),
                    CAST(:renews AS boolean[]), CAST(:leases AS float8[]))
                AS b(run_id, token, position, cursor_key, kind, label, status, output, error,
                    attempts, started_at, renew, lease)
            ), shared AS (
                SELECT r.id FROM {s}.runs AS r
                JOIN b ON r.id = b.run_id AND r.lease_token = b.token AND NOT b.renew
                WHERE r.status = {_RUNNING}
                FOR SHARE OF r SKIP LOCKED
            ), renewing AS (
                SELECT r.id FROM {s}.runs AS r
                JOIN b ON r.id = b.run_id AND r.lease_token = b.token AND b.renew
                WHERE r.status = {_RUNNING}
                FOR NO KEY UPDATE OF r SKIP LOCKED
            ), lease AS (
                UPDATE {s}.runs AS r
                SET lease_expires_at = now() + make_interval(secs => b.lease),
                    stalled_claims = 0, updated_at = now()
                FROM b
                WHERE r.id = b.run_id AND b.renew AND r.id IN (SELECT id FROM renewing)
                RETURNING r.id
            )
            INSERT INTO {s}.steps (run_id, position, cursor_key, kind, label, status, output,
                error, attempts, started_at, finished_at)
            SELECT b.run_id, b.position, b.cursor_key, b.kind, b.label, b.status,
                CAST(b.output AS jsonb), CAST(b.error AS jsonb), b.attempts, b.started_at, now()
            FROM b
            WHERE (NOT b.renew AND b.run_id IN (SELECT id FROM shared))
               OR (b.renew AND b.run_id IN (SELECT id FROM lease))
            RETURNING run_id, position""")
        #: The same, also consuming a signal and/or firing a timer (signals, sleeps, retries).
        self.checkpoint_marked = sa.text(f"""{lease_and_memo}, consumed AS (
                UPDATE {s}.signals SET consumed_by = :cursor_key, consumed_at = now()
                WHERE id = :signal_id AND run_id IN (SELECT id FROM lease)
                    AND consumed_at IS NULL
                RETURNING 1
            ), fired AS (
                UPDATE {s}.timers SET fired_at = now()
                WHERE run_id IN (SELECT id FROM lease) AND cursor_key = :timer_key
                    AND fired_at IS NULL
                RETURNING 1
            )
            {leased}""")
        self.suspend = sa.text(f"""
            WITH run AS (
                UPDATE {s}.runs SET status = :status, waiting_for = :waiting_for,
                    wake_at = LEAST(CAST(:wake_at AS timestamptz), deadline_at),
                    lease_token = NULL,
                    lease_owner = NULL, lease_expires_at = NULL, updated_at = now(),
                    stalled_claims = CASE WHEN :progress THEN 0 ELSE stalled_claims END
                WHERE id = :run_id AND lease_token = :token AND status = {_RUNNING}
                RETURNING id, priority, wake_at, queue
            ), timer AS (
                INSERT INTO {s}.timers (run_id, cursor_key, fire_at)
                SELECT run.id, t.key, t.fire_at FROM run,
                    unnest(CAST(:timer_keys AS text[]), CAST(:timer_ats AS timestamptz[]))
                        AS t(key, fire_at)
                ON CONFLICT (run_id, cursor_key) DO NOTHING
                RETURNING 1
            ), ev AS (
                INSERT INTO {s}.events (run_id, type, cursor_key, data)
                SELECT id, {_v(EventType.SUSPENDED)}, :cursor_key, CAST(:event AS jsonb) FROM run
                RETURNING 1
            ), job AS (
                {
            wake_insert_sql(
                "run WHERE run.wake_at IS NOT NULL",
                wake_at="run.wake_at",
                priority="run.priority",
                queue="run.queue",
            )
        }
            ), own_job AS ({end_own_wake_sql("run")})
            SELECT (SELECT count(*) FROM run) AS leased""")
        self.finish = sa.text(f"""
            WITH run AS (
                UPDATE {s}.runs SET status = :status, output = CAST(:output AS jsonb),
                    error = CAST(:error AS jsonb), finished_at = now(), updated_at = now(),
                    lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
                    waiting_for = NULL, wake_at = NULL
                WHERE id = :run_id AND lease_token = :token AND status = {_RUNNING}
                RETURNING id, parent_run_id
            ), ev AS (
                INSERT INTO {s}.events (run_id, type, data)
                SELECT id, :event_type, CAST(:event AS jsonb) FROM run RETURNING 1
            ), parent AS (
                {
            wake_insert_sql(
                "run WHERE parent_run_id IS NOT NULL",
                "parent_run_id",
                wake_at="NULL",
                priority="0",
                queue=f"(SELECT p.queue FROM {s}.runs AS p WHERE p.id = run.parent_run_id)",
            )
        }
            ), notified AS (
                SELECT pg_notify('{TERMINAL_CHANNEL}', id::text) FROM run
            ), own_job AS ({end_own_wake_sql("run")})
            SELECT (SELECT count(*) FROM run) AS leased,
                   (SELECT count(*) FROM notified) AS notified""")
        # The run row locked, with what the delivery rules need: how many signals it holds
        # (the cap) and whether this idempotency key was delivered before (even once closed).
        self.signal_lock = sa.text(f"""
            SELECT r.status, r.waiting_for,
                   (SELECT count(*) FROM {s}.signals g WHERE g.run_id = r.id) AS held,
                   EXISTS (SELECT 1 FROM {s}.signals g WHERE g.run_id = r.id
                           AND g.idempotency_key = CAST(:idem AS text)) AS seen
            FROM {s}.runs r WHERE r.id = :run_id FOR UPDATE OF r""")
        self.signal_insert = sa.text(f"""
            INSERT INTO {s}.signals (run_id, name, payload, idempotency_key, meta)
            VALUES (:run_id, :name, CAST(:payload AS jsonb), :idem, CAST(:meta AS jsonb))
            ON CONFLICT (run_id, idempotency_key) DO NOTHING
            RETURNING id""")
        self.event = sa.text(f"""
            INSERT INTO {s}.events (run_id, type, cursor_key, data)
            VALUES (:run_id, :type, :cursor_key, CAST(:data AS jsonb))""")
        self.wake = sa.text(
            wake_insert_sql(
                f"{s}.runs WHERE id = :run_id", wake_at="NULL", priority="priority", queue="queue"
            )
        )
        #: A wake-up at the run's own due time (NULL: now), for a pending run or one with a due
        #: time: merged into its queued wake-up it changes nothing; it matters when a claim is
        #: in flight (see ``PostgresStore.deliver_signal``).
        self.wake_when_due = sa.text(
            wake_insert_sql(
                f"{s}.runs WHERE id = :run_id AND (wake_at IS NOT NULL OR status = {_PENDING})",
                wake_at="wake_at",
                priority="priority",
                queue="queue",
            )
        )
        self.get_run = sa.text(f"SELECT {RUN_COLS} FROM {s}.runs WHERE id = :run_id")
        self.retry_lock = sa.text(f"SELECT status FROM {s}.runs WHERE id = :run_id FOR UPDATE")
        # retry: the failed run's rows are read under the row lock above, the cut is decided
        # in the core (iterflow.core.decisions.retry_cut) and applied by position and key.
        self.retry_steps = sa.text(
            f"SELECT * FROM {s}.steps WHERE run_id = :run_id ORDER BY position"
        )
        self.retry_signals = sa.text(
            f"SELECT * FROM {s}.signals WHERE run_id = :run_id AND consumed_by IS NOT NULL "
            "ORDER BY id"
        )
        self.retry_timers = sa.text(f"SELECT * FROM {s}.timers WHERE run_id = :run_id")
        self.retry_children = sa.text(
            f"SELECT id, parent_cursor_key, status FROM {s}.runs WHERE parent_run_id = :run_id "
            "ORDER BY seq"
        )
        self.retry_release_signals = sa.text(f"""
            UPDATE {s}.signals SET consumed_by = NULL, consumed_at = NULL
            WHERE run_id = :run_id AND id = ANY(CAST(:ids AS bigint[]))""")
        self.retry_drop_timers = sa.text(f"""
            DELETE FROM {s}.timers
            WHERE run_id = :run_id AND cursor_key = ANY(CAST(:keys AS text[]))""")
        self.retry_drop_steps = sa.text(f"""
            DELETE FROM {s}.steps
            WHERE run_id = :run_id AND position = ANY(CAST(:positions AS integer[]))""")
        self.retry_reset = sa.text(f"""
            UPDATE {s}.runs SET status = {_PENDING}, error = NULL, output = NULL,
                finished_at = NULL, stalled_claims = 0, waiting_for = NULL,
                wake_at = NULL, deadline_at = NULL, updated_at = now()
            WHERE id = :run_id AND {status_in(RETRYABLE_STATUSES)}""")
        self.recover_expired = sa.text(f"""
            WITH stale AS (
                SELECT id FROM {s}.runs
                WHERE status = {_RUNNING} AND lease_expires_at < now()
                ORDER BY lease_expires_at LIMIT :limit
                FOR UPDATE SKIP LOCKED
            ), reset AS (
                UPDATE {s}.runs AS r SET status = {_RETRYING}, lease_token = NULL,
                    lease_owner = NULL, lease_expires_at = NULL,
                    waiting_for = {_v(WaitKind.RECOVERY)}, updated_at = now()
                FROM stale WHERE r.id = stale.id
                RETURNING r.id, r.priority, r.queue
            ), stuck AS ({release_doing_sql("reset")}
            ), ev AS (
                INSERT INTO {s}.events (run_id, type, data)
                SELECT id, {_v(EventType.RECOVERED)}, {_jsonb(Recovered())} FROM reset
                RETURNING 1
            ), job AS ({
            wake_insert_sql("reset", wake_at="NULL", priority="reset.priority", queue="reset.queue")
        })
            SELECT (SELECT count(*) FROM reset) AS recovered,
                   (SELECT count(*) FROM stuck) AS released""")
        self.spawn = sa.text(f"""
            WITH lease AS (
                UPDATE {s}.runs SET lease_expires_at = now() + make_interval(secs => :lease),
                    updated_at = now()
                WHERE id = :parent AND lease_token = :token AND status = {_RUNNING}
                RETURNING id
            ), ins AS (
                INSERT INTO {s}.runs (id, name, version, status, input, tags, priority,
                    parent_run_id, parent_cursor_key, meta, deadline_at, queue, limit_key)
                SELECT :id, :name, :version, {_PENDING}, CAST(:input AS jsonb),
                    CAST(:tags AS text[]), :priority, lease.id, :parent_cursor_key,
                    CAST(:meta AS jsonb), now() + CAST(:deadline AS interval), :run_queue,
                    CAST(:limit_key AS text)
                FROM lease
                ON CONFLICT (id) DO NOTHING
                RETURNING id, queue
            ), ev AS (
                INSERT INTO {s}.events (run_id, type, data)
                SELECT id, {_v(EventType.STARTED)}, CAST(:event AS jsonb) FROM ins RETURNING 1
            ), job AS ({wake_insert_sql("ins", wake_at="NULL", queue="ins.queue")})
            SELECT (SELECT count(*) FROM lease) AS leased, (SELECT count(*) FROM ins) AS created,
                   (SELECT count(*) FROM job) AS jobs""")
        self.cancel_lock = sa.text(f"SELECT status FROM {s}.runs WHERE id = :run_id FOR UPDATE")
        self.cancel = sa.text(f"""
            WITH RECURSIVE tree AS (
                SELECT id FROM {s}.runs WHERE id = :run_id
                UNION ALL
                SELECT r.id FROM {s}.runs AS r JOIN tree ON r.parent_run_id = tree.id
                WHERE NOT coalesce((r.meta ->> 'detached')::boolean, false)
            ), target AS (
                SELECT id FROM {s}.runs
                WHERE id IN (SELECT id FROM tree)
                  AND {status_in(LIVE_STATUSES)}
                FOR UPDATE
            ), upd AS (
                UPDATE {s}.runs AS r SET status = {_CANCELED}, error = CAST(:error AS jsonb),
                    finished_at = now(), updated_at = now(), lease_token = NULL,
                    lease_owner = NULL, lease_expires_at = NULL, waiting_for = NULL,
                    wake_at = NULL
                FROM target WHERE r.id = target.id
                RETURNING r.id, r.parent_run_id
            ), ev AS (
                INSERT INTO {s}.events (run_id, type, data)
                SELECT id, {_v(EventType.CANCELED)}, CAST(:event AS jsonb) FROM upd RETURNING 1
            ), dropped AS ({drop_queued_wakes_sql("upd")}
            ), parents AS (
                {
            wake_insert_sql(
                "upd WHERE parent_run_id IS NOT NULL AND parent_run_id NOT IN (SELECT id FROM upd)"
                f" AND EXISTS (SELECT 1 FROM {s}.runs AS p WHERE p.id = upd.parent_run_id"
                f" AND {status_in(LIVE_STATUSES, 'p.status')})",
                "parent_run_id",
                wake_at="NULL",
                priority="0",
                queue=f"(SELECT p.queue FROM {s}.runs AS p WHERE p.id = upd.parent_run_id)",
            )
        }
            ), notified AS (
                SELECT pg_notify('{TERMINAL_CHANNEL}', id::text) FROM upd
            )
            SELECT (SELECT count(*) FROM upd) AS canceled,
                   (SELECT count(*) FROM notified) AS notified,
                   (SELECT count(*) FROM dropped) AS dropped""")
        # A wake-up or periodic sweep left ``doing`` by a dead worker (see orphaned_jobs_sql);
        # a wake-up's lock is its run id (the CASE casts only those: other locks are any text).
        run = f"{s}.runs AS r WHERE r.id = CASE WHEN j.task_name = :task THEN j.lock::uuid END"
        self.release_orphans = sa.text(
            orphaned_jobs_sql(
                f"EXISTS (SELECT 1 FROM {run})",
                f"EXISTS (SELECT 1 FROM {run} "
                f"AND r.status = {_RUNNING} AND r.lease_expires_at >= now())",
            )
        )
        # The runs that may be stranded, one index-driven branch per cause (the conditions
        # below then decide): a sweep reads what is held, overdue or due, not every live run.
        self.rewake = sa.text(f"""
            WITH candidate AS (
                SELECT id FROM {s}.runs WHERE held IS NOT NULL
                UNION SELECT id FROM {s}.runs
                      WHERE deadline_at <= now() AND {status_in(LIVE_STATUSES)}
                UNION SELECT id FROM {s}.runs
                      WHERE status = {_PENDING} AND (wake_at IS NULL OR wake_at <= now())
                UNION SELECT id FROM {s}.runs
                      WHERE {status_in([RunStatus.RETRYING, RunStatus.AWAITING_CHILD])}
                UNION SELECT run_id FROM {s}.timers WHERE fired_at IS NULL AND fire_at <= now()
                UNION SELECT run_id FROM {s}.signals WHERE consumed_at IS NULL
            ), stranded AS (
                SELECT r.id, r.priority, r.queue FROM {s}.runs AS r
                WHERE r.id IN (SELECT id FROM candidate)
                  AND {status_in(RESUMABLE_STATUSES, "r.status")}
                  AND NOT {has_live_job_sql("r.id")}
                  AND (r.held IS NULL OR {_held_head(s)})
                  AND (r.held IS NOT NULL OR
                    r.deadline_at <= now()
                    OR (r.status = {_PENDING} AND (r.wake_at IS NULL OR r.wake_at <= now()))
                    OR (r.status = {_RETRYING}
                        AND NOT EXISTS (SELECT 1 FROM {s}.timers AS t
                                        WHERE t.run_id = r.id AND t.fired_at IS NULL
                                          AND t.fire_at > now()))
                    OR ({status_in(TIMED_STATUSES, "r.status")}
                        AND EXISTS (SELECT 1 FROM {s}.timers AS t
                                    WHERE t.run_id = r.id AND t.fired_at IS NULL
                                      AND t.fire_at <= now()))
                    OR (r.status = {_v(RunStatus.AWAITING_SIGNAL)}
                        AND EXISTS (SELECT 1 FROM {s}.signals AS g
                                    WHERE g.run_id = r.id AND g.consumed_at IS NULL
                                      AND '{SIGNAL_WAIT_PREFIX}' || g.name = r.waiting_for))
                    OR (r.status = {_v(RunStatus.AWAITING_CHILD)}
                        AND EXISTS (SELECT 1 FROM {s}.runs AS c
                                    WHERE c.parent_run_id = r.id
                                      AND {status_in(TERMINAL_STATUSES, "c.status")}
                                      AND NOT EXISTS (
                                        SELECT 1 FROM {s}.steps AS m
                                        WHERE m.run_id = r.id
                                          AND m.cursor_key = c.parent_cursor_key)))
                  )
                ORDER BY r.updated_at
                LIMIT :limit
                FOR UPDATE OF r SKIP LOCKED
            ), ev AS (
                INSERT INTO {s}.events (run_id, type, data)
                SELECT id, {_v(EventType.REWOKEN)}, {_jsonb(Rewoken())} FROM stranded
                RETURNING 1
            ), job AS ({
            wake_insert_sql(
                "stranded", wake_at="NULL", priority="stranded.priority", queue="stranded.queue"
            )
        })
            SELECT (SELECT count(*) FROM stranded) AS rewoken""")
        self.pending_wake = sa.text(PENDING_WAKE_SQL)
        self._retention(s)
        self._limits(s)
        self.detail_steps = sa.text(
            f"SELECT * FROM {s}.steps WHERE run_id = :run_id ORDER BY position"
        )
        self.detail_signals = sa.text(
            f"SELECT * FROM {s}.signals WHERE run_id = :run_id ORDER BY id"
        )
        self.detail_timers = sa.text(
            f"SELECT * FROM {s}.timers WHERE run_id = :run_id ORDER BY fire_at"
        )
        self.detail_events = sa.text(f"SELECT * FROM {s}.events WHERE run_id = :run_id ORDER BY id")
        # the dashboard's "changed since" poll: a range scan of the events primary key, bounded
        self.change_token = sa.text(f"SELECT coalesce(max(id), 0) AS token FROM {s}.events")
        self.changes_since = sa.text(f"""
            WITH e AS (
                SELECT id, run_id FROM {s}.events WHERE id > :since ORDER BY id LIMIT :limit
            )
            SELECT e.run_id, r.status, max(e.id) AS last, (SELECT max(id) FROM e) AS token
            FROM e JOIN {s}.runs r ON r.id = e.run_id
            GROUP BY e.run_id, r.status ORDER BY last
        """)
        # ... and the claims it cannot see (a claim writes no event): the running runs whose row
        # was written at or after :since, over the live-status partial index (few rows)
        self.running_since = sa.text(f"""
            WITH c AS (
                SELECT id, updated_at FROM {s}.runs
                WHERE status = {_RUNNING} AND updated_at >= CAST(:since AS timestamptz)
                ORDER BY updated_at LIMIT :limit
            )
            SELECT now() AS db_now, c.id, c.updated_at FROM (SELECT 1) AS one
            LEFT JOIN c ON true ORDER BY c.updated_at""")
        #: An attempt's job ended without the attempt's write (``Store.end_wake``).
        self.end_wake = sa.text(end_own_wake_sql("(SELECT 1) AS always"))
        self.park = sa.text(f"""
            WITH run AS (
                UPDATE {s}.runs SET status = {_PARKED}, error = CAST(:error AS jsonb),
                    waiting_for = {_v(WaitKind.DEPLOY)}, wake_at = NULL, lease_token = NULL,
                    lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
                WHERE id = :run_id AND lease_token = :token AND status = {_RUNNING}
                RETURNING id
            ), ev AS (
                INSERT INTO {s}.events (run_id, type, data)
                SELECT id, {_v(EventType.PARKED)}, CAST(:event AS jsonb) FROM run RETURNING 1
            ), own_job AS ({end_own_wake_sql("run")})
            SELECT (SELECT count(*) FROM run) AS leased""")
        _unpark_set = (
            f"status = {_PENDING}, error = NULL, waiting_for = NULL, wake_at = NULL, "
            "stalled_claims = 0, updated_at = now()"
        )
        self.unpark = sa.text(
            f"UPDATE {s}.runs SET {_unpark_set} WHERE id = :run_id AND status = {_PARKED}"
        )
        self.requeue_parked = sa.text(f"""
            WITH parked AS (
                SELECT id FROM {s}.runs
                WHERE status = {_PARKED} AND name = ANY(CAST(:names AS text[]))
                FOR UPDATE SKIP LOCKED
            ), upd AS (
                UPDATE {s}.runs AS r SET {_unpark_set}
                FROM parked WHERE r.id = parked.id
                RETURNING r.id, r.priority, r.queue
            ), ev AS (
                INSERT INTO {s}.events (run_id, type, data)
                SELECT id, {_v(EventType.UNPARKED)}, {_jsonb(Unparked("worker_start"))} FROM upd
                RETURNING 1
            ), job AS ({
            wake_insert_sql("upd", wake_at="NULL", priority="upd.priority", queue="upd.queue")
        })
            SELECT (SELECT count(*) FROM upd) AS requeued""")

    def _limits(self, s: str) -> None:
        """Flow control's statements (:mod:`iterflow.core.limits`): the limited claim runs in a
        transaction that first takes the advisory lock of the run's flow and key, so every
        count below sees every committed claim of that key and no other claim runs meanwhile.
        ``:run_id`` (NULL after an attempt ended) is left out of the counts."""
        me = "CAST(:run_id AS uuid)"
        resumable = status_in(RESUMABLE_STATUSES, "h.status")
        lock = "pg_advisory_xact_lock(hashtext(:ns), hashtext({name} || chr(31) || {key}))"
        #: A run the fast claim refused: why (not claimable, a flow version not served, limited);
        #: a limited run's lock is taken by the same statement.
        self.limit_probe = sa.text(f"""
            SELECT name, version, limit_key, queue,
                ({status_in(RESUMABLE_STATUSES)}
                 OR (status = {_RUNNING} AND lease_expires_at < now())) AS claimable,
                CASE WHEN limit_key IS NOT NULL
                     THEN {lock.format(name="name", key="limit_key")} END AS locked
            FROM {s}.runs WHERE id = :run_id""")
        self.limit_lock = sa.text(f"SELECT {lock.format(name=':name', key=':key')}")
        self.limit_state = sa.text(f"""
            SELECT now() AS db_now,
                (SELECT count(*) FROM {s}.runs
                 WHERE name = :name AND limit_key = :key AND status = {_RUNNING}
                   AND id IS DISTINCT FROM {me}) AS live,
                (SELECT starts FROM {s}.rate_windows
                 WHERE name = :name AND limit_key = :key) AS starts,
                (SELECT count(*) FROM {s}.runs AS h
                 WHERE h.name = :name AND h.limit_key = :key AND h.held IS NOT NULL
                   AND {resumable} AND h.id IS DISTINCT FROM {me}
                   AND {has_live_job_sql("h.id")}) AS woken,
                (SELECT count(*) FROM {s}.runs AS h
                 WHERE h.name = :name AND h.limit_key = :key AND h.held IS NOT NULL
                   AND {resumable} AND h.id IS DISTINCT FROM {me}
                   AND NOT {has_live_job_sql("h.id")}) AS held""")
        #: Whether any run of the key is held (the release's lock-free first look).
        self.limit_any_held = sa.text(f"""
            SELECT EXISTS (SELECT 1 FROM {s}.runs
                           WHERE name = :name AND limit_key = :key AND held IS NOT NULL) AS held""")
        self.limit_hold = sa.text(f"""
            UPDATE {s}.runs SET held = CAST(:held AS jsonb)
                || jsonb_build_object('since', coalesce(held ->> 'since', {_iso_utc("now()")}))
            WHERE id = :run_id""")
        #: Wake the first ``:n`` held runs of the key in line (highest priority, then oldest)
        #: that have no wake-up queued (the run being claimed counts as having none).
        self.limit_wake = sa.text(f"""
            WITH heads AS (
                SELECT h.id, h.priority, h.queue FROM {s}.runs AS h
                WHERE h.name = :name AND h.limit_key = :key AND h.held IS NOT NULL
                  AND {resumable}
                  AND (h.id = {me} OR NOT {has_live_job_sql("h.id")})
                ORDER BY h.priority DESC, h.seq
                LIMIT :n
            ), job AS ({
            wake_insert_sql(
                "heads",
                wake_at="CAST(:wake_at AS timestamptz)",
                priority="heads.priority",
                queue="heads.queue",
            )
        })
            SELECT (SELECT count(*) FROM job) AS woken""")
        self.limit_window = sa.text(f"""
            INSERT INTO {s}.rate_windows (name, limit_key, starts)
            VALUES (:name, :key, CAST(:starts AS timestamptz[]))
            ON CONFLICT (name, limit_key) DO UPDATE SET starts = EXCLUDED.starts""")
        #: A run fetched from a queue by a worker that does not serve its flow version (a run
        #: queued before its flow had a queue of its own): move it to its own queue.
        self.route = sa.text(f"""
            WITH moved AS (
                UPDATE {s}.runs SET queue = :run_queue
                WHERE id = :run_id AND queue IS DISTINCT FROM :run_queue
                RETURNING id, priority, queue
            ), job AS ({
            wake_insert_sql("moved", wake_at="NULL", priority="moved.priority", queue="moved.queue")
        })
            SELECT (SELECT count(*) FROM job) AS routed""")

    def _retention(self, s: str) -> None:
        """Retention's statements: one batch of finished top-level runs (oldest first, locked
        ``SKIP LOCKED``, leaving out any whose tree still holds a live run) deleted with their
        descendants; the rows of steps, signals, timers and events go by ``ON DELETE CASCADE``.
        ``:flow`` (NULL: any) and ``:exclude`` select the flows."""
        live_in_tree = f"""EXISTS (
                    WITH RECURSIVE tree AS (
                        SELECT c.id, c.status FROM {s}.runs AS c WHERE c.parent_run_id = r.id
                        UNION ALL
                        SELECT c.id, c.status FROM {s}.runs AS c
                        JOIN tree ON c.parent_run_id = tree.id
                    )
                    SELECT 1 FROM tree WHERE {status_in(LIVE_STATUSES, "tree.status")})"""
        roots = f"""
                SELECT r.id, r.status FROM {s}.runs AS r
                WHERE r.status = :status AND r.parent_run_id IS NULL
                  AND r.finished_at IS NOT NULL
                  AND r.finished_at < now() - make_interval(secs => :older_than)
                  AND (CAST(:flow AS text) IS NULL OR r.name = :flow)
                  AND NOT (r.name = ANY(CAST(:exclude AS text[])))
                  AND NOT {live_in_tree}"""
        tree = f"""tree AS (
                SELECT id FROM roots
                UNION ALL
                SELECT c.id FROM {s}.runs AS c JOIN tree ON c.parent_run_id = tree.id
            )"""
        self.purge = sa.text(f"""
            WITH RECURSIVE roots AS ({roots}
                ORDER BY r.finished_at LIMIT :limit
                FOR UPDATE OF r SKIP LOCKED
            ), {tree}, deleted AS (
                DELETE FROM {s}.runs WHERE id IN (SELECT id FROM tree) RETURNING 1
            )
            SELECT (SELECT count(*) FROM roots) AS top_level,
                   (SELECT count(*) FROM deleted) AS runs""")
        self.purge_count = sa.text(f"""
            WITH RECURSIVE roots AS ({roots}
            ), {tree}
            SELECT (SELECT count(*) FROM roots) AS top_level,
                   (SELECT count(*) FROM tree) AS runs""")
