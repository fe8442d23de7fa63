"""The PostgreSQL store: SQLAlchemy Core on asyncpg.

Hot-path writes (start, claim, checkpoint, suspend, finish) are each **one statement**: a
data-modifying CTE that is its own transaction, fenced by the run's lease token where one is held.
Driver errors are mapped to :class:`~iterflow.errors.DatabaseUnavailable` at this boundary.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..errors import DatabaseUnavailable, SchemaMissing
from ..models import (
    CancelResult,
    ChildRecord,
    EventRecord,
    NewRun,
    RetryResult,
    RunDetail,
    RunRecord,
    RunStatus,
    SignalRecord,
    SignalResult,
    StartResult,
    StepKind,
    StepRecord,
    StepStatus,
    TimerRecord,
)
from ..queue import wake_insert_sql
from ..replay import SuspendPlan
from . import schema as schema_tables
from .base import Claim, Lease, LeaseLost, WakeUp

__all__ = ["TERMINAL_CHANNEL", "PostgresStore"]

Row = Mapping[Any, Any]

#: NOTIFY channel carrying the id of every run that reached a terminal status.
TERMINAL_CHANNEL = "iterflow_terminal"

_RUN_COLS = (
    "id, seq, name, version, status, input, output, error, idempotency_key, parent_run_id, "
    "parent_cursor_key, tags, priority, lease_owner, lease_expires_at, attempts, "
    "stalled_claims, waiting_for, wake_at, created_at, updated_at, started_at, finished_at, meta"
)
_RESUMABLE = "('pending', 'sleeping', 'awaiting_signal', 'awaiting_child', 'retrying')"


def _j(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _ts(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _run(row: Row) -> RunRecord:
    return RunRecord(
        id=row["id"],
        seq=row["seq"],
        name=row["name"],
        version=row["version"],
        status=RunStatus(row["status"]),
        input=row["input"],
        output=row["output"],
        error=row["error"],
        idempotency_key=row["idempotency_key"],
        parent_run_id=row["parent_run_id"],
        parent_cursor_key=row["parent_cursor_key"],
        tags=tuple(row["tags"] or ()),
        priority=row["priority"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
        attempts=row["attempts"],
        stalled_claims=row["stalled_claims"],
        waiting_for=row["waiting_for"],
        wake_at=row["wake_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        meta=dict(row["meta"] or {}),
    )


def _step(d: Row) -> StepRecord:
    return StepRecord(
        position=d["position"],
        cursor_key=d["cursor_key"],
        kind=StepKind(d["kind"]),
        label=d["label"],
        status=StepStatus(d["status"]),
        output=d["output"],
        error=d["error"],
        attempts=d["attempts"],
        started_at=_ts(d["started_at"]),
        finished_at=_ts(d["finished_at"]),
    )


def _signal(d: Row) -> SignalRecord:
    return SignalRecord(
        id=d["id"],
        name=d["name"],
        payload=d["payload"],
        idempotency_key=d["idempotency_key"],
        received_at=cast(datetime, _ts(d["received_at"])),
        consumed_by=d["consumed_by"],
        consumed_at=_ts(d["consumed_at"]),
    )


def _timer(d: Row) -> TimerRecord:
    return TimerRecord(
        cursor_key=d["cursor_key"],
        fire_at=cast(datetime, _ts(d["fire_at"])),
        fired_at=_ts(d["fired_at"]),
    )


class PostgresStore:
    """The :class:`~iterflow.store.base.Store` on PostgreSQL."""

    def __init__(self, engine: AsyncEngine, *, schema: str, queue: str) -> None:
        self._engine = engine
        self._auto = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._queue = queue
        self._translate = schema_tables.translate_map(schema)
        s = schema
        self.schema = schema
        self._sql_start = sa.text(f"""
            WITH ins AS (
                INSERT INTO {s}.runs (id, name, version, status, input, idempotency_key, tags,
                    priority, wake_at, parent_run_id, parent_cursor_key, meta)
                VALUES (:id, :name, :version, 'pending', CAST(:input AS jsonb), :idem,
                    CAST(:tags AS text[]), :priority, CAST(:wake_at AS timestamptz),
                    :parent_run_id, :parent_cursor_key, CAST(:meta AS jsonb))
                ON CONFLICT (name, idempotency_key) WHERE idempotency_key IS NOT NULL
                DO NOTHING
                RETURNING id, status
            ), ev AS (
                INSERT INTO {s}.events (run_id, type, data)
                SELECT id, 'started', CAST(:event AS jsonb) FROM ins RETURNING 1
            ), job AS ({wake_insert_sql("ins")})
            SELECT id, status, true AS created, (SELECT count(*) FROM job) AS jobs FROM ins""")
        self._sql_existing = sa.text(
            f"SELECT id, status FROM {s}.runs WHERE name = :name AND idempotency_key = :idem"
        )
        self._sql_claim = sa.text(f"""
            WITH claimed AS (
                UPDATE {s}.runs SET status = 'running', lease_token = :token,
                    lease_owner = :owner,
                    lease_expires_at = now() + make_interval(secs => :lease),
                    attempts = attempts + 1, stalled_claims = stalled_claims + 1,
                    started_at = coalesce(started_at, now()), updated_at = now()
                WHERE id = :run_id AND (status IN {_RESUMABLE}
                    OR (status = 'running' AND lease_expires_at < now()))
                RETURNING {_RUN_COLS}
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
                    'consumed_by', consumed_by, 'consumed_at', consumed_at) ORDER BY id),
                    '[]'::json)
                 FROM {s}.signals WHERE run_id = :run_id AND consumed_at IS NULL) AS inbox,
                (SELECT coalesce(json_agg(json_build_object(
                    'id', c.id, 'cursor_key', c.parent_cursor_key, 'status', c.status,
                    'output', c.output, 'error', c.error)), '[]'::json)
                 FROM {s}.runs AS c
                 WHERE c.parent_run_id = :run_id AND c.status IN ('done', 'failed', 'canceled')
                   AND NOT EXISTS (SELECT 1 FROM {s}.steps AS m
                                   WHERE m.run_id = :run_id
                                     AND m.cursor_key = c.parent_cursor_key)) AS children
            FROM claimed""")
        self._sql_renew = sa.text(f"""
            UPDATE {s}.runs SET lease_expires_at = now() + make_interval(secs => :lease)
            WHERE id = :run_id AND lease_token = :token AND status = 'running'
            RETURNING id""")
        self._sql_checkpoint = sa.text(f"""
            WITH lease AS (
                UPDATE {s}.runs SET lease_expires_at = now() + make_interval(secs => :lease),
                    stalled_claims = 0, updated_at = now()
                WHERE id = :run_id AND lease_token = :token AND status = 'running'
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
                WHERE {s}.steps.status = 'retrying'
                RETURNING 1
            ), consumed AS (
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
            SELECT (SELECT count(*) FROM lease) AS leased""")
        self._sql_suspend = sa.text(f"""
            WITH run AS (
                UPDATE {s}.runs SET status = :status, waiting_for = :waiting_for,
                    wake_at = CAST(:wake_at AS timestamptz), lease_token = NULL,
                    lease_owner = NULL, lease_expires_at = NULL, updated_at = now(),
                    stalled_claims = CASE WHEN :progress THEN 0 ELSE stalled_claims END
                WHERE id = :run_id AND lease_token = :token AND status = 'running'
                RETURNING id, priority
            ), timer AS (
                INSERT INTO {s}.timers (run_id, cursor_key, fire_at)
                SELECT run.id, t.key, t.fire_at FROM run,
                    unnest(CAST(:timer_keys AS text[]), CAST(:timer_ats AS timestamptz[]))
                        AS t(key, fire_at)
                ON CONFLICT (run_id, cursor_key) DO NOTHING
                RETURNING 1
            ), ev AS (
                INSERT INTO {s}.events (run_id, type, cursor_key, data)
                SELECT id, 'suspended', :cursor_key, CAST(:event AS jsonb) FROM run
                RETURNING 1
            ), job AS (
                {
            wake_insert_sql(
                "run WHERE CAST(:wake_at AS timestamptz) IS NOT NULL", priority="run.priority"
            )
        }
            )
            SELECT (SELECT count(*) FROM run) AS leased""")
        self._sql_finish = sa.text(f"""
            WITH run AS (
                UPDATE {s}.runs SET status = :status, output = CAST(:output AS jsonb),
                    error = CAST(:error AS jsonb), finished_at = now(), updated_at = now(),
                    lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
                    waiting_for = NULL, wake_at = NULL
                WHERE id = :run_id AND lease_token = :token AND status = 'running'
                RETURNING id, parent_run_id
            ), ev AS (
                INSERT INTO {s}.events (run_id, type, data)
                SELECT id, :event_type, CAST(:event AS jsonb) FROM run RETURNING 1
            ), parent AS (
                {
            wake_insert_sql(
                "run WHERE parent_run_id IS NOT NULL", "parent_run_id", wake_at="NULL", priority="0"
            )
        }
            ), notified AS (
                SELECT pg_notify('{TERMINAL_CHANNEL}', id::text) FROM run
            )
            SELECT (SELECT count(*) FROM run) AS leased,
                   (SELECT count(*) FROM notified) AS notified""")
        self._sql_signal_lock = sa.text(
            f"SELECT status, waiting_for FROM {s}.runs WHERE id = :run_id FOR UPDATE"
        )
        self._sql_signal_insert = sa.text(f"""
            INSERT INTO {s}.signals (run_id, name, payload, idempotency_key)
            VALUES (:run_id, :name, CAST(:payload AS jsonb), :idem)
            ON CONFLICT (run_id, idempotency_key) DO NOTHING
            RETURNING id""")
        self._sql_event = sa.text(f"""
            INSERT INTO {s}.events (run_id, type, cursor_key, data)
            VALUES (:run_id, :type, :cursor_key, CAST(:data AS jsonb))""")
        self._sql_wake = sa.text(
            wake_insert_sql(f"{s}.runs WHERE id = :run_id", wake_at="NULL", priority="priority")
        )
        self._sql_get_run = sa.text(f"SELECT {_RUN_COLS} FROM {s}.runs WHERE id = :run_id")
        self._sql_retry_lock = sa.text(f"SELECT status FROM {s}.runs WHERE id = :run_id FOR UPDATE")
        self._sql_retry_cut = sa.text(
            f"SELECT max(position) FROM {s}.steps WHERE run_id = :run_id AND status <> 'ok'"
        )
        self._sql_retry_reset = [
            sa.text(f"""
                UPDATE {s}.signals SET consumed_by = NULL, consumed_at = NULL
                WHERE run_id = :run_id AND consumed_by IN (
                    SELECT cursor_key FROM {s}.steps WHERE run_id = :run_id
                    AND position >= :cut)"""),
            sa.text(f"""
                DELETE FROM {s}.timers WHERE run_id = :run_id AND (cursor_key IN (
                    SELECT cursor_key FROM {s}.steps WHERE run_id = :run_id
                    AND position >= :cut) OR fired_at IS NULL)"""),
            sa.text(f"DELETE FROM {s}.steps WHERE run_id = :run_id AND position >= :cut"),
            sa.text(f"""
                UPDATE {s}.runs SET status = 'pending', error = NULL, output = NULL,
                    finished_at = NULL, stalled_claims = 0, waiting_for = NULL,
                    wake_at = NULL, updated_at = now()
                WHERE id = :run_id AND status = 'failed'"""),
        ]
        self._sql_recover_expired = sa.text(f"""
            WITH stale AS (
                SELECT id FROM {s}.runs
                WHERE status = 'running' AND lease_expires_at < now()
                ORDER BY lease_expires_at LIMIT :limit
                FOR UPDATE SKIP LOCKED
            ), reset AS (
                UPDATE {s}.runs AS r SET status = 'retrying', lease_token = NULL,
                    lease_owner = NULL, lease_expires_at = NULL, waiting_for = 'recovery',
                    updated_at = now()
                FROM stale WHERE r.id = stale.id
                RETURNING r.id, r.priority
            ), stuck AS (
                UPDATE procrastinate_jobs SET status = 'failed', attempts = attempts + 1
                WHERE status = 'doing' AND lock IN (SELECT id::text FROM reset)
                RETURNING 1
            ), ev AS (
                INSERT INTO {s}.events (run_id, type, data)
                SELECT id, 'recovered', '{{"reason": "lease_expired"}}'::jsonb FROM reset
                RETURNING 1
            ), job AS ({wake_insert_sql("reset", wake_at="NULL", priority="reset.priority")})
            SELECT (SELECT count(*) FROM reset) AS recovered,
                   (SELECT count(*) FROM stuck) AS released""")
        self._sql_spawn = sa.text(f"""
            WITH lease AS (
                UPDATE {s}.runs SET lease_expires_at = now() + make_interval(secs => :lease),
                    updated_at = now()
                WHERE id = :parent AND lease_token = :token AND status = 'running'
                RETURNING id
            ), ins AS (
                INSERT INTO {s}.runs (id, name, version, status, input, tags, priority,
                    parent_run_id, parent_cursor_key, meta)
                SELECT :id, :name, :version, 'pending', CAST(:input AS jsonb),
                    CAST(:tags AS text[]), :priority, lease.id, :parent_cursor_key,
                    CAST(:meta AS jsonb)
                FROM lease
                ON CONFLICT (id) DO NOTHING
                RETURNING id
            ), ev AS (
                INSERT INTO {s}.events (run_id, type, data)
                SELECT id, 'started', CAST(:event AS jsonb) FROM ins RETURNING 1
            ), job AS ({wake_insert_sql("ins", wake_at="NULL")})
            SELECT (SELECT count(*) FROM lease) AS leased, (SELECT count(*) FROM ins) AS created,
                   (SELECT count(*) FROM job) AS jobs""")
        self._sql_cancel_lock = sa.text(
            f"SELECT status FROM {s}.runs WHERE id = :run_id FOR UPDATE"
        )
        self._sql_cancel = sa.text(f"""
            WITH RECURSIVE tree AS (
                SELECT id FROM {s}.runs WHERE id = :run_id
                UNION ALL
                SELECT r.id FROM {s}.runs AS r JOIN tree ON r.parent_run_id = tree.id
                WHERE NOT coalesce((r.meta ->> 'detached')::boolean, false)
            ), target AS (
                SELECT id FROM {s}.runs
                WHERE id IN (SELECT id FROM tree)
                  AND status NOT IN ('done', 'failed', 'canceled')
                FOR UPDATE
            ), upd AS (
                UPDATE {s}.runs AS r SET status = 'canceled', error = CAST(:error AS jsonb),
                    finished_at = now(), updated_at = now(), lease_token = NULL,
                    lease_owner = NULL, lease_expires_at = NULL, waiting_for = NULL,
                    wake_at = NULL
                FROM target WHERE r.id = target.id
                RETURNING r.id, r.parent_run_id
            ), ev AS (
                INSERT INTO {s}.events (run_id, type, data)
                SELECT id, 'canceled', CAST(:event AS jsonb) FROM upd RETURNING 1
            ), dropped AS (
                DELETE FROM procrastinate_jobs
                WHERE status = 'todo' AND queueing_lock IN (SELECT id::text FROM upd)
                RETURNING 1
            ), parents AS (
                {
            wake_insert_sql(
                "upd WHERE parent_run_id IS NOT NULL AND parent_run_id NOT IN (SELECT id FROM upd)",
                "parent_run_id",
                wake_at="NULL",
                priority="0",
            )
        }
            ), notified AS (
                SELECT pg_notify('{TERMINAL_CHANNEL}', id::text) FROM upd
            )
            SELECT (SELECT count(*) FROM upd) AS canceled,
                   (SELECT count(*) FROM notified) AS notified,
                   (SELECT count(*) FROM dropped) AS dropped""")
        self._sql_retry_children = sa.text(f"""
            SELECT id FROM {s}.runs WHERE parent_run_id = :run_id AND status = 'failed'
              AND parent_cursor_key IN (SELECT cursor_key FROM {s}.steps
                                        WHERE run_id = :run_id AND position >= :cut)""")
        self._sql_release_orphans = sa.text(f"""
            WITH released AS (
            UPDATE procrastinate_jobs SET status = 'failed', attempts = attempts + 1
            WHERE status = 'doing' AND queue_name = :queue
              AND (worker_id IS NULL OR worker_id IN (
                    SELECT id FROM procrastinate_workers
                    WHERE last_heartbeat < now() - make_interval(secs => :stale)))
              AND NOT EXISTS (
                    SELECT 1 FROM {s}.runs AS r
                    WHERE r.id::text = procrastinate_jobs.lock AND r.status = 'running'
                      AND r.lease_expires_at >= now())
            RETURNING 1
            )
            SELECT count(*) AS released FROM released""")
        self._sql_rewake = sa.text(f"""
            WITH stranded AS (
                SELECT r.id, r.priority FROM {s}.runs AS r
                WHERE r.status IN {_RESUMABLE}
                  AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs AS j
                                  WHERE j.lock = r.id::text AND j.status IN ('todo', 'doing'))
                  AND (
                    (r.status = 'pending' AND (r.wake_at IS NULL OR r.wake_at <= now()))
                    OR (r.status = 'retrying'
                        AND NOT EXISTS (SELECT 1 FROM {s}.timers AS t
                                        WHERE t.run_id = r.id AND t.fired_at IS NULL
                                          AND t.fire_at > now()))
                    OR (r.status IN ('sleeping', 'retrying', 'awaiting_signal')
                        AND EXISTS (SELECT 1 FROM {s}.timers AS t
                                    WHERE t.run_id = r.id AND t.fired_at IS NULL
                                      AND t.fire_at <= now()))
                    OR (r.status = 'awaiting_signal'
                        AND EXISTS (SELECT 1 FROM {s}.signals AS g
                                    WHERE g.run_id = r.id AND g.consumed_at IS NULL
                                      AND 'signal:' || g.name = r.waiting_for))
                    OR (r.status = 'awaiting_child'
                        AND EXISTS (SELECT 1 FROM {s}.runs AS c
                                    WHERE c.parent_run_id = r.id
                                      AND c.status IN ('done', 'failed', 'canceled')
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
                SELECT id, 'rewoken', '{{"reason": "no pending wake-up"}}'::jsonb FROM stranded
                RETURNING 1
            ), job AS ({wake_insert_sql("stranded", wake_at="NULL", priority="stranded.priority")})
            SELECT (SELECT count(*) FROM stranded) AS rewoken""")
        self._sql_pending_wake = sa.text(
            "SELECT scheduled_at, priority FROM procrastinate_jobs "
            "WHERE queueing_lock = :lock AND status = 'todo'"
        )
        self._sql_detail_steps = sa.text(
            f"SELECT * FROM {s}.steps WHERE run_id = :run_id ORDER BY position"
        )
        self._sql_detail_signals = sa.text(
            f"SELECT * FROM {s}.signals WHERE run_id = :run_id ORDER BY id"
        )
        self._sql_detail_timers = sa.text(
            f"SELECT * FROM {s}.timers WHERE run_id = :run_id ORDER BY fire_at"
        )
        self._sql_detail_events = sa.text(
            f"SELECT * FROM {s}.events WHERE run_id = :run_id ORDER BY id"
        )
        self._sql_park = sa.text(f"""
            WITH run AS (
                UPDATE {s}.runs SET status = 'parked', error = CAST(:error AS jsonb),
                    waiting_for = 'deploy', wake_at = NULL, lease_token = NULL,
                    lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
                WHERE id = :run_id AND lease_token = :token AND status = 'running'
                RETURNING id
            ), ev AS (
                INSERT INTO {s}.events (run_id, type, data)
                SELECT id, 'parked', CAST(:event AS jsonb) FROM run RETURNING 1
            )
            SELECT (SELECT count(*) FROM run) AS leased""")
        _unpark_set = (
            "status = 'pending', error = NULL, waiting_for = NULL, wake_at = NULL, "
            "stalled_claims = 0, updated_at = now()"
        )
        self._sql_unpark = sa.text(
            f"UPDATE {s}.runs SET {_unpark_set} WHERE id = :run_id AND status = 'parked'"
        )
        self._sql_requeue_parked = sa.text(f"""
            WITH parked AS (
                SELECT id FROM {s}.runs
                WHERE status = 'parked' AND name = ANY(CAST(:names AS text[]))
                FOR UPDATE SKIP LOCKED
            ), upd AS (
                UPDATE {s}.runs AS r SET {_unpark_set}
                FROM parked WHERE r.id = parked.id
                RETURNING r.id, r.priority
            ), ev AS (
                INSERT INTO {s}.events (run_id, type, data)
                SELECT id, 'unparked', '{{"reason": "worker_start"}}'::jsonb FROM upd
                RETURNING 1
            ), job AS ({wake_insert_sql("upd", wake_at="NULL", priority="upd.priority")})
            SELECT (SELECT count(*) FROM upd) AS requeued""")

    # -- plumbing ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._engine.begin() as conn:
                yield conn
        except DBAPIError as exc:
            raise _map(exc) from exc
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot reach PostgreSQL: {exc}") from exc

    async def _one(self, stmt: sa.TextClause, params: dict[str, Any]) -> Row | None:
        """Run one statement in autocommit (it is its own transaction)."""
        try:
            async with self._auto.connect() as conn:
                result = await conn.execute(stmt, params)
                row = result.mappings().first()
                return row
        except DBAPIError as exc:
            raise _map(exc) from exc
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot reach PostgreSQL: {exc}") from exc

    # -- start ------------------------------------------------------------------------------

    async def create_run(self, run: NewRun, *, conn: Any = None) -> StartResult:
        params = {
            "id": run.id,
            "name": run.name,
            "version": run.version,
            "input": _j(run.input),
            "idem": run.idempotency_key,
            "tags": list(run.tags),
            "priority": run.priority,
            "wake_at": run.wake_at,
            "parent_run_id": run.parent_run_id,
            "parent_cursor_key": run.parent_cursor_key,
            "meta": _j(run.meta),
            "event": _j({"version": run.version, "delayed_until": _iso(run.wake_at)}),
            "queue": self._queue,
        }
        if conn is not None:
            row = await _execute_on(conn, self._sql_start, params)
        else:
            row = await self._one(self._sql_start, params)
        if row is not None:
            return StartResult(run_id=row["id"], created=True, status=RunStatus(row["status"]))
        existing = await self._existing(run, conn)
        return StartResult(run_id=existing["id"], created=False, status=existing["status"])

    async def _existing(self, run: NewRun, conn: Any) -> Row:
        params = {"name": run.name, "idem": run.idempotency_key}
        row = (
            await _execute_on(conn, self._sql_existing, params)
            if conn is not None
            else await self._one(self._sql_existing, params)
        )
        if row is None:  # pragma: no cover - the conflicting row must exist
            raise DatabaseUnavailable("idempotent start found neither a new nor an existing run")
        return {"id": row["id"], "status": RunStatus(row["status"])}

    # -- attempts ---------------------------------------------------------------------------

    async def claim(self, run_id: uuid.UUID, owner: str, lease_seconds: float) -> Claim | None:
        token = uuid.uuid4()
        row = await self._one(
            self._sql_claim,
            {"run_id": run_id, "token": token, "owner": owner, "lease": lease_seconds},
        )
        if row is None:
            return None
        return Claim(
            run=_run(row),
            lease=Lease(run_id=run_id, token=token, owner=owner, seconds=lease_seconds),
            history=[_step(d) for d in row["history"]],
            timers={t.cursor_key: t for t in map(_timer, row["timers"])},
            inbox=[_signal(d) for d in row["inbox"]],
            db_now=row["db_now"],
            children={
                d["cursor_key"]: ChildRecord(
                    id=uuid.UUID(d["id"]),
                    cursor_key=d["cursor_key"],
                    status=RunStatus(d["status"]),
                    output=d["output"],
                    error=d["error"],
                )
                for d in row["children"]
            },
        )

    async def renew(self, lease: Lease) -> None:
        row = await self._one(
            self._sql_renew, {"run_id": lease.run_id, "token": lease.token, "lease": lease.seconds}
        )
        if row is None:
            raise LeaseLost(lease.run_id)

    async def checkpoint(
        self,
        lease: Lease,
        record: StepRecord,
        *,
        consume_signal: int | None = None,
        fire_timer: str | None = None,
    ) -> None:
        row = await self._one(
            self._sql_checkpoint,
            {
                "run_id": lease.run_id,
                "token": lease.token,
                "lease": lease.seconds,
                "position": record.position,
                "cursor_key": record.cursor_key,
                "kind": record.kind.value,
                "label": record.label,
                "status": record.status.value,
                "output": _j(record.output),
                "error": _j(record.error),
                "attempts": record.attempts,
                "started_at": record.started_at,
                "signal_id": consume_signal,
                "timer_key": fire_timer,
            },
        )
        if row is None or not row["leased"]:
            raise LeaseLost(lease.run_id)

    async def spawn_child(self, lease: Lease, child: NewRun) -> bool:
        row = await self._one(
            self._sql_spawn,
            {
                "parent": lease.run_id,
                "token": lease.token,
                "lease": lease.seconds,
                "id": child.id,
                "name": child.name,
                "version": child.version,
                "input": _j(child.input),
                "tags": list(child.tags),
                "priority": child.priority,
                "parent_cursor_key": child.parent_cursor_key,
                "meta": _j(child.meta),
                "event": _j({"version": child.version, "parent": str(lease.run_id)}),
                "queue": self._queue,
            },
        )
        if row is None or not row["leased"]:
            raise LeaseLost(lease.run_id)
        return bool(row["created"])

    async def suspend(self, lease: Lease, plan: SuspendPlan) -> None:
        row = await self._one(
            self._sql_suspend,
            {
                "run_id": lease.run_id,
                "token": lease.token,
                "status": plan.status.value,
                "waiting_for": plan.waiting_for,
                "wake_at": plan.wake_at,
                "progress": plan.progress,
                "timer_keys": [t.cursor_key for t in plan.new_timers],
                "timer_ats": [t.fire_at for t in plan.new_timers],
                "cursor_key": plan.cursor_key,
                "event": _j({"reason": plan.reason, "wake_at": _iso(plan.wake_at)}),
                "queue": self._queue,
            },
        )
        if row is None or not row["leased"]:
            raise LeaseLost(lease.run_id)

    async def finish(
        self, lease: Lease, status: RunStatus, output: Any, error: dict[str, Any] | None
    ) -> None:
        row = await self._one(
            self._sql_finish,
            {
                "run_id": lease.run_id,
                "token": lease.token,
                "status": status.value,
                "output": _j(output),
                "error": _j(error),
                "event_type": "completed" if status is RunStatus.DONE else status.value,
                "event": _j({"code": error.get("code")} if error else None),
                "queue": self._queue,
            },
        )
        if row is None or not row["leased"]:
            raise LeaseLost(lease.run_id)

    async def fail_unclaimed(self, lease: Lease, error: dict[str, Any]) -> None:
        await self.finish(lease, RunStatus.FAILED, None, error)

    async def park(self, lease: Lease, error: dict[str, Any]) -> None:
        row = await self._one(
            self._sql_park,
            {
                "run_id": lease.run_id,
                "token": lease.token,
                "error": _j(error),
                "event": _j({"code": error.get("code"), "message": error.get("message")}),
            },
        )
        if row is None or not row["leased"]:
            raise LeaseLost(lease.run_id)

    async def requeue_parked(self, names: Sequence[str]) -> int:
        if not names:
            return 0
        row = await self._one(
            self._sql_requeue_parked, {"names": list(names), "queue": self._queue}
        )
        return 0 if row is None else int(row["requeued"])

    # -- signals, retry ---------------------------------------------------------------------

    async def deliver_signal(
        self, run_id: uuid.UUID, name: str, payload: Any, idempotency_key: str | None
    ) -> SignalResult:
        async with self._tx() as conn:
            row = (await conn.execute(self._sql_signal_lock, {"run_id": run_id})).first()
            if row is None:
                return SignalResult("not_found")
            status = RunStatus(row.status)
            if status in (RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELED):
                return SignalResult("closed")
            inserted = (
                await conn.execute(
                    self._sql_signal_insert,
                    {
                        "run_id": run_id,
                        "name": name,
                        "payload": _j(payload),
                        "idem": idempotency_key,
                    },
                )
            ).first()
            if inserted is None:
                return SignalResult("duplicate")
            waiting = status is RunStatus.AWAITING_SIGNAL and row.waiting_for == f"signal:{name}"
            if waiting or status is RunStatus.RUNNING:
                # A running attempt may be about to wait for it: a queued wake-up (blocked by
                # the run's job lock until the attempt ends) makes sure it is seen.
                await conn.execute(self._sql_wake, {"run_id": run_id, "queue": self._queue})
            await conn.execute(
                self._sql_event,
                {
                    "run_id": run_id,
                    "type": "signal_received",
                    "cursor_key": None,
                    "data": _j({"name": name, "signal_id": inserted.id, "waiting": waiting}),
                },
            )
            return SignalResult("delivered" if waiting else "buffered", signal_id=inserted.id)

    async def cancel(self, run_id: uuid.UUID, reason: str) -> CancelResult:
        async with self._tx() as conn:
            row = (await conn.execute(self._sql_cancel_lock, {"run_id": run_id})).first()
            if row is None:
                return CancelResult("not_found")
            status = RunStatus(row.status)
            if status in (RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELED):
                return CancelResult("already_terminal", status)
            await conn.execute(
                self._sql_cancel,
                {
                    "run_id": run_id,
                    "error": _j({"code": "RUN_CANCELED", "message": reason}),
                    "event": _j({"reason": reason, "root": str(run_id)}),
                    "queue": self._queue,
                },
            )
            return CancelResult("canceled", RunStatus.CANCELED)

    async def retry(self, run_id: uuid.UUID) -> RetryResult:
        async with self._tx() as conn:
            return await self._retry_in(conn, run_id)

    async def _retry_in(self, conn: AsyncConnection, run_id: uuid.UUID) -> RetryResult:
        row = (await conn.execute(self._sql_retry_lock, {"run_id": run_id})).first()
        if row is None:
            return RetryResult("missing")
        if row.status == RunStatus.PARKED.value:  # re-check on the code deployed now
            await conn.execute(self._sql_unpark, {"run_id": run_id})
            await conn.execute(
                self._sql_event,
                {
                    "run_id": run_id,
                    "type": "unparked",
                    "cursor_key": None,
                    "data": _j({"reason": "retry"}),
                },
            )
            await conn.execute(self._sql_wake, {"run_id": run_id, "queue": self._queue})
            return RetryResult("queued", RunStatus.PENDING)
        if row.status != RunStatus.FAILED.value:
            return RetryResult("not_failed", RunStatus(row.status))
        cut = (await conn.execute(self._sql_retry_cut, {"run_id": run_id})).scalar()
        cut = 2147483647 if cut is None else cut
        children = (
            await conn.execute(self._sql_retry_children, {"run_id": run_id, "cut": cut})
        ).scalars()
        for child_id in list(children):  # a failed child is retried with its parent
            await self._retry_in(conn, child_id)
        for stmt in self._sql_retry_reset:
            await conn.execute(stmt, {"run_id": run_id, "cut": cut})
        await conn.execute(
            self._sql_event,
            {
                "run_id": run_id,
                "type": "retried",
                "cursor_key": None,
                "data": _j({"from": cut}),
            },
        )
        await conn.execute(self._sql_wake, {"run_id": run_id, "queue": self._queue})
        return RetryResult("queued", RunStatus.PENDING)

    # -- recovery ---------------------------------------------------------------------------

    async def recover_expired(self, limit: int) -> int:
        """Reset ``running`` runs whose lease expired to ``retrying`` and wake them; release the
        procrastinate job their dead worker left in ``doing`` (it holds the run's job lock)."""
        row = await self._one(self._sql_recover_expired, {"limit": limit, "queue": self._queue})
        return 0 if row is None else int(row["recovered"])

    async def release_orphaned_jobs(self, stale_seconds: float) -> int:
        row = await self._one(
            self._sql_release_orphans, {"queue": self._queue, "stale": stale_seconds}
        )
        return 0 if row is None else int(row["released"])

    async def rewake_stranded(self, limit: int) -> int:
        row = await self._one(self._sql_rewake, {"limit": limit, "queue": self._queue})
        return 0 if row is None else int(row["rewoken"])

    async def list_runs(
        self,
        *,
        name: str | None,
        statuses: Sequence[RunStatus],
        tag: str | None,
        limit: int,
        before_seq: int | None,
    ) -> list[RunRecord]:
        """Newest first, keyset-paginated on ``seq`` (never skips rows sharing a timestamp)."""
        runs = schema_tables.runs
        stmt = sa.select(*[runs.c[c.strip()] for c in _RUN_COLS.split(",")])
        if name is not None:
            stmt = stmt.where(runs.c.name == name)
        if statuses:
            stmt = stmt.where(runs.c.status.in_([s.value for s in statuses]))
        if tag is not None:
            stmt = stmt.where(runs.c.tags.contains([tag]))
        if before_seq is not None:
            stmt = stmt.where(runs.c.seq < before_seq)
        stmt = stmt.order_by(runs.c.seq.desc()).limit(limit)
        try:
            async with self._auto.connect() as conn:
                result = await conn.execute(
                    stmt, execution_options={"schema_translate_map": self._translate}
                )
                rows = result.mappings().all()
        except DBAPIError as exc:
            raise _map(exc) from exc
        return [_run(r) for r in rows]

    # -- reads ------------------------------------------------------------------------------

    async def pending_wake(self, run_id: uuid.UUID) -> WakeUp | None:
        row = await self._one(self._sql_pending_wake, {"lock": str(run_id)})
        if row is None:
            return None
        return WakeUp(run_id=run_id, scheduled_at=row["scheduled_at"], priority=row["priority"])

    async def get_run(self, run_id: uuid.UUID) -> RunRecord | None:
        row = await self._one(self._sql_get_run, {"run_id": run_id})
        return None if row is None else _run(row)

    async def detail(self, run_id: uuid.UUID) -> RunDetail | None:
        try:
            async with self._auto.connect() as conn:
                p = {"run_id": run_id}
                run_row = (await conn.execute(self._sql_get_run, p)).mappings().first()
                if run_row is None:
                    return None
                step_rows = (await conn.execute(self._sql_detail_steps, p)).mappings().all()
                sig_rows = (await conn.execute(self._sql_detail_signals, p)).mappings().all()
                timer_rows = (await conn.execute(self._sql_detail_timers, p)).mappings().all()
                ev_rows = (await conn.execute(self._sql_detail_events, p)).mappings().all()
        except DBAPIError as exc:
            raise _map(exc) from exc
        return RunDetail(
            run=_run(run_row),
            steps=tuple(_step(r) for r in step_rows),
            signals=tuple(_signal(r) for r in sig_rows),
            timers=tuple(_timer(r) for r in timer_rows),
            events=tuple(
                EventRecord(
                    id=r["id"],
                    type=r["type"],
                    cursor_key=r["cursor_key"],
                    data=r["data"],
                    at=r["at"],
                )
                for r in ev_rows
            ),
        )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


async def _execute_on(conn: Any, stmt: sa.TextClause, params: dict[str, Any]) -> Row | None:
    """Execute on a caller's SQLAlchemy ``AsyncConnection`` (their transaction)."""
    if not isinstance(conn, AsyncConnection):
        from ..errors import ConfigInvalid

        raise ConfigInvalid(
            "conn= must be a sqlalchemy.ext.asyncio.AsyncConnection inside a transaction"
        )
    try:
        result = await conn.execute(stmt, params)
    except DBAPIError as exc:
        raise _map(exc) from exc
    return result.mappings().first()


def _map(exc: DBAPIError) -> Exception:
    text = str(exc.orig) if exc.orig is not None else str(exc)
    if isinstance(exc, ProgrammingError) and "does not exist" in text:
        return SchemaMissing(
            f"iterflow tables are missing ({text.splitlines()[0]}); run `flowctl migrate` "
            "or `await engine.migrate()`"
        )
    return DatabaseUnavailable(f"PostgreSQL error: {text.splitlines()[0] if text else exc}")


def rows_to_steps(rows: Sequence[Row]) -> list[StepRecord]:
    """Convert step rows (used by tools that read history directly)."""
    return [_step(r) for r in rows]
