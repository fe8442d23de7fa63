"""The PostgreSQL store: SQLAlchemy Core on asyncpg.

The hot-path writes (start, claim, checkpoint, spawn, suspend, finish, park) are each **one
statement**, a data-modifying CTE run as its own transaction on a hot connection
(:class:`~iterflow.store.connections.HotConnections`), fenced by the run's lease token where one
is held. Signal delivery, cancel and retry are short transactions of several statements that
lock the run row first. The statements are in :mod:`iterflow.store.queries`; the tables are
declared once in the placeholder schema ``iterflow`` (:mod:`iterflow.store.schema`): the
statements spell the configured schema as a quoted identifier, and the one SQLAlchemy-built query
(``list_runs``) maps it with ``schema_translate_map``. Driver errors are mapped at this boundary
(:func:`~iterflow.store.connections.map_error`). About 500 lines: one method per Protocol
operation; plumbing is in ``store/connections.py``, row decoding in ``store/rows.py``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection

from iterflow.core.decisions import retry_cut
from iterflow.core.errors import DatabaseUnavailable, LeaseLost
from iterflow.core.keys import waiting_for_signal
from iterflow.core.limits import Gate
from iterflow.core.models import (
    TERMINAL_STATUSES,
    CancelResult,
    ChildRecord,
    NewRun,
    RetryResult,
    RunDetail,
    RunFilter,
    RunRecord,
    RunStatus,
    SignalResult,
    StartResult,
    StepRecord,
    SuspendPlan,
)
from iterflow.core.states import (
    RETRYABLE_STATUSES,
    Canceled,
    EventPayload,
    Parked,
    Retried,
    SignalReceived,
    Started,
    Suspended,
    finished_event,
)
from iterflow.store import schema as schema_tables
from iterflow.store.base import (
    Claim,
    Lease,
    PurgeBatch,
    WakeUp,
    signal_limit,
)
from iterflow.store.connections import HOT_IDLE, HotConnections, Row, execute_on, guarded
from iterflow.store.group_commit import CheckpointBatcher, Key
from iterflow.store.outbox import (
    FETCH_ANY_JOB_SQL,
    FETCH_JOB_SQL,
    TASK_NAME,
    flow_queue,
    reconcile_task_name,
    retention_task_name,
    schedule_task_name,
)
from iterflow.store.pg_control import ControlStatements, PostgresControl
from iterflow.store.pg_limits import PostgresLimits
from iterflow.store.pg_schedules import PostgresSchedules
from iterflow.store.pg_starts import PostgresStarts, StartStatements
from iterflow.store.queries import (
    RUN_COLS,
    TERMINAL_CHANNEL,
    Statements,
    json_param,
    run_filter_clauses,
    start_params,
)
from iterflow.store.rows import (
    child_record,
    event_record,
    run_record,
    signal_record,
    step_record,
    timer_record,
)
from iterflow.store.schedule_queries import ScheduleStatements

__all__ = ["HOT_IDLE", "TERMINAL_CHANNEL", "PostgresStore"]


_j = json_param


#: ``Statements.checkpoint_batch``'s array parameters, each from one checkpoint parameter.
_BATCH_COLUMNS = {
    "run_ids": "run_id",
    "tokens": "token",
    "positions": "position",
    "cursor_keys": "cursor_key",
    "kinds": "kind",
    "labels": "label",
    "statuses": "status",
    "outputs": "output",
    "errors": "error",
    "attempts": "attempts",
    "started_ats": "started_at",
    "renews": "renew",
    "leases": "lease",
}


def _data(payload: EventPayload) -> str | None:
    """An event's payload as the JSON text bound to ``events.data``."""
    return _j(payload.to_data())


class PostgresStore(PostgresControl, PostgresSchedules, PostgresStarts, PostgresLimits):
    """The :class:`~iterflow.store.base.Store` on PostgreSQL (and its
    :class:`~iterflow.store.base.ScheduleStore`, from :mod:`iterflow.store.pg_schedules`)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        schema: str,
        queue: str,
        read_engine: AsyncEngine | None = None,
        transaction_idle_seconds: float | None = None,
        group_commit: bool = True,
    ) -> None:
        self._engine = engine
        self._auto = engine.execution_options(isolation_level="AUTOCOMMIT")
        # read-only inspection (list_runs, count_runs, detail, changes_since): a replica's pool
        # when ``Settings.read_database_url`` is set, else the primary's
        self._read_auto = (read_engine or engine).execution_options(isolation_level="AUTOCOMMIT")
        self._queue = queue
        self._translate = schema_tables.translate_map(schema)
        self.schema = schema
        self._q = Statements(schema)
        self._sq = ScheduleStatements(schema)
        self._cq = ControlStatements(schema)
        self._tq = StartStatements(schema)
        # a frozen process's own multi-statement transactions end with its lease (_tx too)
        self._conns = HotConnections(engine, idle_seconds=transaction_idle_seconds)
        self._fetch_job = sa.text(FETCH_JOB_SQL)
        self._fetch_any_job = sa.text(FETCH_ANY_JOB_SQL)
        # concurrent runs' checkpoints share a statement and a commit under load
        self._batcher = (
            CheckpointBatcher(self._checkpoint_alone, self._checkpoints_together)
            if group_commit
            else None
        )

    @property
    def _hot(self) -> list[PoolProxiedConnection]:
        """The idle hot-path connections (tests look at them)."""
        return self._conns.idle

    async def close(self) -> None:
        """Give the idle hot-path connections back to the pool (before it is disposed)."""
        if self._batcher is not None:
            await self._batcher.close()
        await self._conns.close()

    # -- plumbing ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        """A transaction; failures leave as ``DatabaseUnavailable``/``SchemaMissing``. Its
        locks do not outlive a frozen process: PostgreSQL ends it once idle for the lease
        (``transaction_idle_seconds``, :class:`HotConnections`)."""
        async with guarded(self._engine.begin()) as conn:
            if self._conns.idle_sql is not None:
                await conn.exec_driver_sql(self._conns.idle_sql)
            yield conn

    @asynccontextmanager
    async def _autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection where each statement is its own transaction."""
        async with guarded(self._auto.connect()) as conn:
            yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        """:meth:`_autocommit` on the read-only inspection pool (a replica, if configured)."""
        async with guarded(self._read_auto.connect()) as conn:
            yield conn

    async def _one(self, stmt: sa.TextClause, params: dict[str, Any]) -> Row | None:
        """One statement as its own transaction on a hot connection (the hot path)."""
        return await self._conns.fetchrow(stmt, params)

    # -- start ------------------------------------------------------------------------------

    async def create_run(self, run: NewRun, *, conn: Any = None) -> StartResult:
        if run.run_key is not None:  # debounce, singleton: pg_starts.py
            async with self._joined(conn) as tx:
                return await self._keyed_start(tx, run)
        params = start_params(run, self._queue)
        if conn is not None:
            row = await execute_on(conn, self._q.start, params)
        else:
            row = await self._one(self._q.start, params)
        return await self._created_or_existing(row, run, conn)

    async def _existing(self, run: NewRun, conn: Any) -> Row:
        params = {"name": run.name, "idem": run.idempotency_key}
        row = (
            await execute_on(conn, self._q.existing, params)
            if conn is not None
            else await self._one(self._q.existing, params)
        )
        if row is None:  # pragma: no cover - the conflicting row must exist
            raise DatabaseUnavailable("idempotent start found neither a new nor an existing run")
        return {
            "id": row["id"],
            "status": RunStatus(row["status"]),
            "input_hash": row["input_hash"],
        }

    # -- attempts ---------------------------------------------------------------------------

    async def fetch_job(self, queues: Sequence[str] | None, worker_id: int) -> Row | None:
        """The fetch of a wake-up for procrastinate worker ``worker_id`` of ``queues``
        (``outbox.FETCH_JOB_SQL``: procrastinate's rules with a plan that does not read past
        sleepers' wake-ups; None: every queue, procrastinate's own function), on the hot path:
        the job's row (procrastinate's ``Job.from_row`` reads it), or None when nothing is
        due."""
        if queues is None:
            row = await self._one(self._fetch_any_job, {"worker_id": worker_id})
        else:
            # JSON, not an array: the planner then sizes the queue list alike in every plan
            # and keeps one generic plan (an array's length made it plan each fetch anew)
            params = {"queues": json.dumps(list(queues)), "worker_id": worker_id}
            row = await self._one(self._fetch_job, params)
        return None if row is None or row["id"] is None else row

    async def claim(
        self, run_id: uuid.UUID, owner: str, lease_seconds: float, gate: Gate | None = None
    ) -> Claim | None:
        token = uuid.uuid4()
        served = None if gate is None or gate.served is None else sorted(gate.served)
        params = {
            "run_id": run_id,
            "token": token,
            "owner": owner,
            "lease": lease_seconds,
            "served": served,
            "admitted": False,
        }
        row = None
        if gate is None or not gate.all_limited:  # else it would refuse: straight to pg_limits.py
            row = await self._one(self._q.claim, params)
        if row is None:  # not claimable, another worker's flow, or limited (pg_limits.py)
            row = await self._claim_refused(run_id, gate, params)
        if row is None:
            return None
        return Claim(
            run=run_record(row),
            lease=Lease(run_id=run_id, token=token, owner=owner, seconds=lease_seconds),
            history=[step_record(d) for d in row["history"]],
            timers={t.cursor_key: t for t in map(timer_record, row["timers"])},
            inbox=[signal_record(d) for d in row["inbox"]],
            db_now=row["db_now"],
            children={c.cursor_key: c for c in map(child_record, row["children"])},
            ready_at=row["ready_at"],
        )

    async def renew(self, lease: Lease) -> None:
        row = await self._one(
            self._q.renew, {"run_id": lease.run_id, "token": lease.token, "lease": lease.seconds}
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
        renew: bool = True,
    ) -> None:
        params: dict[str, Any] = {
            "run_id": lease.run_id,
            "token": lease.token,
            "position": record.position,
            "cursor_key": record.cursor_key,
            "kind": record.kind.value,
            "label": record.label,
            "status": record.status.value,
            "output": _j(record.output),
            "error": _j(record.error),
            "attempts": record.attempts,
            "started_at": record.started_at,
        }
        if consume_signal is not None or fire_timer is not None:
            params.update(lease=lease.seconds, signal_id=consume_signal, timer_key=fire_timer)
            row = await self._one(self._q.checkpoint_marked, params)
            leased = row is not None and bool(row["leased"])
        else:
            # the attempt's first checkpoint renews the lease; a retried step's memo replaces
            # its retrying row (an upsert: always alone)
            params.update(renew=renew or record.attempts > 1, lease=lease.seconds)
            if self._batcher is None or record.attempts > 1:
                leased = await self._checkpoint_alone(params)
            else:  # with other runs' checkpoints when several are due at once
                leased = await self._batcher.checkpoint(params)
        if not leased:
            raise LeaseLost(lease.run_id)

    async def _checkpoint_alone(self, params: dict[str, Any]) -> bool:
        """One checkpoint in its own statement, waiting for its run row if it is locked:
        whether its lease held."""
        if params["renew"]:
            row = await self._one(self._q.checkpoint, params)
            return row is not None and bool(row["leased"])
        return await self._one(self._q.checkpoint_fenced, params) is not None

    async def _checkpoints_together(self, batch: Sequence[dict[str, Any]]) -> set[Key]:
        """Checkpoints of several runs in one statement and commit, skipping those whose run
        row is locked: the ones written."""
        if len(batch) == 1 and not batch[0]["renew"]:  # a plain one: without the arrays
            rows = await self._conns.fetch(self._q.checkpoint_skip_locked, batch[0])
        else:
            params = {array: [p[name] for p in batch] for array, name in _BATCH_COLUMNS.items()}
            rows = await self._conns.fetch(self._q.checkpoint_batch, params)
        return {(row["run_id"], row["position"]) for row in rows}

    async def spawn_child(self, lease: Lease, child: NewRun) -> bool:
        row = await self._one(
            self._q.spawn,
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
                "event": _data(Started(version=child.version, parent=str(lease.run_id))),
                "queue": self._queue,
                "run_queue": flow_queue(self._queue, child.name, child.version),
                "limit_key": child.limit_key,
                "deadline": child.deadline,
            },
        )
        if row is None or not row["leased"]:
            raise LeaseLost(lease.run_id)
        return bool(row["created"])

    async def suspend(self, lease: Lease, plan: SuspendPlan) -> None:
        row = await self._one(
            self._q.suspend,
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
                "event": _data(Suspended(reason=plan.reason, wake_at=_iso(plan.wake_at))),
                "queue": self._queue,
                "job_id": lease.job_id,
            },
        )
        if row is None or not row["leased"]:
            raise LeaseLost(lease.run_id)

    async def finish(
        self, lease: Lease, status: RunStatus, output: Any, error: dict[str, Any] | None
    ) -> None:
        event = finished_event(status, error, str(lease.run_id))
        row = await self._one(
            self._q.finish,
            {
                "run_id": lease.run_id,
                "token": lease.token,
                "status": status.value,
                "output": _j(output),
                "error": _j(error),
                "event_type": event.type.value,
                "event": _data(event),
                "queue": self._queue,
                "job_id": lease.job_id,
            },
        )
        if row is None or not row["leased"]:
            raise LeaseLost(lease.run_id)

    async def end_wake(self, lease: Lease) -> None:
        if lease.job_id is not None:
            await self._one(self._q.end_wake, {"job_id": lease.job_id})

    async def fail_unclaimed(self, lease: Lease, error: dict[str, Any]) -> None:
        await self.finish(lease, RunStatus.FAILED, None, error)

    async def expire(self, lease: Lease, error: dict[str, Any]) -> None:
        event = finished_event(RunStatus.FAILED, error)
        message = str(error.get("message", "deadline exceeded"))
        async with self._tx() as conn:
            row = (
                (
                    await conn.execute(
                        self._q.finish,
                        {
                            "run_id": lease.run_id,
                            "token": lease.token,
                            "status": RunStatus.FAILED.value,
                            "output": None,
                            "error": _j(error),
                            "event_type": event.type.value,
                            "event": _data(event),
                            "queue": self._queue,
                            "job_id": lease.job_id,
                        },
                    )
                )
                .mappings()
                .first()
            )
            if row is None or not row["leased"]:
                raise LeaseLost(lease.run_id)
            # The run is terminal now: the cancel reaches only its live, non-detached tree.
            await conn.execute(
                self._q.cancel,
                {
                    "run_id": lease.run_id,
                    "error": _j({"code": "RUN_CANCELED", "message": message}),
                    "event": _data(Canceled(reason=message, root=str(lease.run_id))),
                    "queue": self._queue,
                },
            )

    async def park(self, lease: Lease, error: dict[str, Any]) -> None:
        row = await self._one(
            self._q.park,
            {
                "run_id": lease.run_id,
                "token": lease.token,
                "error": _j(error),
                "event": _data(Parked(code=error.get("code"), message=error.get("message"))),
                "job_id": lease.job_id,
            },
        )
        if row is None or not row["leased"]:
            raise LeaseLost(lease.run_id)

    async def requeue_parked(self, names: Sequence[str]) -> int:
        if not names:
            return 0
        row = await self._one(self._q.requeue_parked, {"names": list(names), "queue": self._queue})
        return 0 if row is None else int(row["requeued"])

    # -- signals, retry ---------------------------------------------------------------------

    async def deliver_signal(
        self,
        run_id: uuid.UUID,
        name: str,
        payload: Any,
        idempotency_key: str | None,
        *,
        max_signals: int,
        meta: Mapping[str, Any] | None = None,
    ) -> SignalResult:
        async with self._tx() as conn:
            return await self._deliver_on(
                conn, run_id, name, payload, idempotency_key, max_signals=max_signals, meta=meta
            )

    async def _deliver_on(
        self,
        conn: AsyncConnection,
        run_id: uuid.UUID,
        name: str,
        payload: Any,
        idempotency_key: str | None,
        *,
        max_signals: int,
        meta: Mapping[str, Any] | None,
    ) -> SignalResult:
        """:meth:`deliver_signal` in ``conn``'s transaction (``signal_with_start``'s too)."""
        row = (
            await conn.execute(self._q.signal_lock, {"run_id": run_id, "idem": idempotency_key})
        ).first()
        if row is None:
            return SignalResult("not_found")
        if row.seen:  # keys are remembered for the life of the run's rows
            return SignalResult("duplicate")
        status = RunStatus(row.status)
        if status in TERMINAL_STATUSES:
            return SignalResult("closed")
        if row.held >= max_signals:
            raise signal_limit(run_id, max_signals)
        inserted = (
            await conn.execute(
                self._q.signal_insert,
                {
                    "run_id": run_id,
                    "name": name,
                    "payload": _j(payload),
                    "idem": idempotency_key,
                    "meta": _j(dict(meta)) if meta else None,
                },
            )
        ).first()
        if inserted is None:
            return SignalResult("duplicate")
        awaited = waiting_for_signal(name)
        waiting = status is RunStatus.AWAITING_SIGNAL and row.waiting_for == awaited
        if waiting or status is RunStatus.RUNNING:
            # A running attempt may be about to wait for it: a queued wake-up (blocked by
            # the run's job lock until the attempt ends) makes sure it is seen.
            await conn.execute(self._q.wake, {"run_id": run_id, "queue": self._queue})
        else:
            # A claim blocked behind this row lock reads the inbox with its statement's
            # snapshot, without this signal: a wake-up at the run's own due time (merged into
            # its queued one otherwise) makes the attempt after it see the signal.
            await conn.execute(self._q.wake_when_due, {"run_id": run_id, "queue": self._queue})
        await conn.execute(
            self._q.event,
            {
                "run_id": run_id,
                "type": SignalReceived.type.value,
                "cursor_key": None,
                "data": _data(SignalReceived(name, inserted.id, waiting)),
            },
        )
        return SignalResult("delivered" if waiting else "buffered", signal_id=inserted.id)

    async def cancel(
        self, run_id: uuid.UUID, reason: str, *, compensate: bool = False
    ) -> CancelResult:
        async with self._tx() as conn:
            row = (await conn.execute(self._q.cancel_lock, {"run_id": run_id})).first()
            if row is None:
                return CancelResult("not_found")
            status = RunStatus(row.status)
            if status in TERMINAL_STATUSES:
                return CancelResult("already_terminal", status)
            if compensate:
                return await self._cancel_compensating(conn, run_id, reason)
            await conn.execute(
                self._q.cancel,
                {
                    "run_id": run_id,
                    "error": _j({"code": "RUN_CANCELED", "message": reason}),
                    "event": _data(Canceled(reason=reason, root=str(run_id))),
                    "queue": self._queue,
                },
            )
            return CancelResult("canceled", RunStatus.CANCELED)

    async def retry(self, run_id: uuid.UUID) -> RetryResult:
        async with self._tx() as conn:
            return await self._retry_in(conn, run_id)

    async def _retry_in(self, conn: AsyncConnection, run_id: uuid.UUID) -> RetryResult:
        row = (await conn.execute(self._q.retry_lock, {"run_id": run_id})).first()
        if row is None:
            return RetryResult("missing")
        if row.status == RunStatus.PARKED.value:  # re-check on the code deployed now
            await conn.execute(self._q.unpark, {"run_id": run_id})
            await conn.execute(
                self._q.event,
                {
                    "run_id": run_id,
                    "type": "unparked",
                    "cursor_key": None,
                    "data": _j({"reason": "retry"}),
                },
            )
            await conn.execute(self._q.wake, {"run_id": run_id, "queue": self._queue})
            return RetryResult("queued", RunStatus.PENDING)
        if RunStatus(row.status) not in RETRYABLE_STATUSES:
            return RetryResult("not_failed", RunStatus(row.status))
        p = {"run_id": run_id}
        cut = retry_cut(
            [step_record(r) for r in (await conn.execute(self._q.retry_steps, p)).mappings()],
            [signal_record(r) for r in (await conn.execute(self._q.retry_signals, p)).mappings()],
            [timer_record(r) for r in (await conn.execute(self._q.retry_timers, p)).mappings()],
            [
                ChildRecord(r["id"], r["parent_cursor_key"], RunStatus(r["status"]))
                for r in (await conn.execute(self._q.retry_children, p)).mappings()
            ],
        )
        for child_id in cut.child_ids:  # a failed child is retried with its parent
            await self._retry_in(conn, child_id)
        if cut.signal_ids:
            await conn.execute(self._q.retry_release_signals, {**p, "ids": list(cut.signal_ids)})
        if cut.timer_keys:
            await conn.execute(self._q.retry_drop_timers, {**p, "keys": list(cut.timer_keys)})
        if cut.positions:
            await conn.execute(self._q.retry_drop_steps, {**p, "positions": list(cut.positions)})
        await conn.execute(self._q.retry_reset, p)
        await conn.execute(
            self._q.event,
            {
                "run_id": run_id,
                "type": "retried",
                "cursor_key": None,
                "data": _data(Retried(from_position=cut.position)),
            },
        )
        await conn.execute(self._q.wake, {"run_id": run_id, "queue": self._queue})
        return RetryResult("queued", RunStatus.PENDING)

    # -- recovery ---------------------------------------------------------------------------

    async def recover_expired(self, limit: int) -> int:
        """Reset ``running`` runs whose lease expired to ``retrying`` and wake them; release the
        procrastinate job their dead worker left in ``doing`` (it holds the run's job lock)."""
        row = await self._one(self._q.recover_expired, {"limit": limit, "queue": self._queue})
        return 0 if row is None else int(row["recovered"])

    async def release_orphaned_jobs(self, stale_seconds: float) -> int:
        row = await self._one(
            self._q.release_orphans,
            {
                "queue": self._queue,
                "task": TASK_NAME,
                "reconcile_task": reconcile_task_name(self.schema),
                "schedule_task": schedule_task_name(self.schema),
                "retention_task": retention_task_name(self.schema),
                "stale": stale_seconds,
            },
        )
        return 0 if row is None else int(row["released"])

    async def rewake_stranded(self, limit: int) -> int:
        row = await self._one(self._q.rewake, {"limit": limit, "queue": self._queue})
        return 0 if row is None else int(row["rewoken"])

    async def list_runs(
        self,
        *,
        name: str | None,
        statuses: Sequence[RunStatus],
        tag: str | None,
        limit: int,
        before_seq: int | None,
        idempotency_key: str | None = None,
        filters: RunFilter | None = None,
        after_seq: int | None = None,
    ) -> list[RunRecord]:
        """Newest first (oldest first after ``after_seq``), keyset-paginated on ``seq`` (never
        skips rows sharing a timestamp)."""
        runs = schema_tables.runs
        where = (filters or RunFilter()).narrowed(
            name=name, statuses=statuses, tag=tag, idempotency_key=idempotency_key
        )
        stmt = sa.select(*[runs.c[c.strip()] for c in RUN_COLS.split(",")])
        stmt = stmt.where(*run_filter_clauses(runs, where))
        if before_seq is not None:
            stmt = stmt.where(runs.c.seq < before_seq)
        if after_seq is not None:
            stmt = stmt.where(runs.c.seq > after_seq)
        order = runs.c.seq.asc() if after_seq is not None else runs.c.seq.desc()
        stmt = stmt.order_by(order).limit(limit)
        async with self._read() as conn:
            result = await conn.execute(
                stmt, execution_options={"schema_translate_map": self._translate}
            )
            rows = result.mappings().all()
        return [run_record(r) for r in rows]

    async def count_runs(self, filters: RunFilter) -> dict[RunStatus, int]:
        runs = schema_tables.runs
        stmt = (
            sa.select(runs.c.status, sa.func.count())
            .where(*run_filter_clauses(runs, filters))
            .group_by(runs.c.status)
        )
        async with self._read() as conn:
            result = await conn.execute(
                stmt, execution_options={"schema_translate_map": self._translate}
            )
            rows = result.all()
        return {RunStatus(status): int(count) for status, count in rows}

    async def changes_since(
        self, since: int | None, limit: int
    ) -> tuple[list[tuple[uuid.UUID, RunStatus]], int]:
        async with self._read() as conn:
            if since is None:
                token = (await conn.execute(self._q.change_token)).scalar_one()
                return [], int(token)
            params = {"since": since, "limit": limit}
            rows = (await conn.execute(self._q.changes_since, params)).mappings().all()
        if not rows:
            return [], since
        changed = [(r["run_id"], RunStatus(r["status"])) for r in rows]
        return changed, int(rows[0]["token"])

    async def running_since(
        self, since: datetime | None, limit: int
    ) -> tuple[list[uuid.UUID], datetime]:
        params = {"since": since, "limit": limit}
        async with self._autocommit() as conn:
            rows = (await conn.execute(self._q.running_since, params)).mappings().all()
        ids = [r["id"] for r in rows if r["id"] is not None]
        mark: datetime = rows[-1]["updated_at"] if len(ids) >= limit else rows[0]["db_now"]
        return ids, mark

    # -- retention --------------------------------------------------------------------------

    async def purge(
        self,
        status: RunStatus,
        older_than: timedelta,
        *,
        flow: str | None = None,
        exclude: Sequence[str] = (),
        limit: int,
        dry_run: bool = False,
    ) -> PurgeBatch:
        params = {
            "status": status.value,
            "older_than": older_than.total_seconds(),
            "flow": flow,
            "exclude": list(exclude),
            "limit": limit,
        }
        async with self._autocommit() as conn:  # one statement: no transaction block
            stmt = self._q.purge_count if dry_run else self._q.purge
            row = (await conn.execute(stmt, params)).mappings().one()
        return PurgeBatch(top_level=int(row["top_level"]), runs=int(row["runs"]))

    # -- reads ------------------------------------------------------------------------------

    async def pending_wake(self, run_id: uuid.UUID) -> WakeUp | None:
        row = await self._one(self._q.pending_wake, {"lock": str(run_id)})
        if row is None:
            return None
        return WakeUp(run_id=run_id, scheduled_at=row["scheduled_at"], priority=row["priority"])

    async def get_run(self, run_id: uuid.UUID) -> RunRecord | None:
        row = await self._one(self._q.get_run, {"run_id": run_id})
        return None if row is None else run_record(row)

    async def detail(self, run_id: uuid.UUID) -> RunDetail | None:
        async with self._read() as conn:
            p = {"run_id": run_id}
            run_row = (await conn.execute(self._q.get_run, p)).mappings().first()
            if run_row is None:
                return None
            step_rows = (await conn.execute(self._q.detail_steps, p)).mappings().all()
            sig_rows = (await conn.execute(self._q.detail_signals, p)).mappings().all()
            timer_rows = (await conn.execute(self._q.detail_timers, p)).mappings().all()
            ev_rows = (await conn.execute(self._q.detail_events, p)).mappings().all()
        return RunDetail(
            run=run_record(run_row),
            steps=tuple(step_record(r) for r in step_rows),
            signals=tuple(signal_record(r) for r in sig_rows),
            timers=tuple(timer_record(r) for r in timer_rows),
            events=tuple(event_record(r) for r in ev_rows),
        )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
