"""The PostgreSQL store: SQLAlchemy Core on asyncpg.

Hot-path writes (start, claim, checkpoint, suspend, finish) are each **one statement**: a
data-modifying CTE that is its own transaction, fenced by the run's lease token where one is held.
Driver errors are mapped at this boundary: data PostgreSQL refuses (SQLSTATE class 22/23) to
:class:`~iterflow.core.errors.DataRejected`, missing tables to
:class:`~iterflow.core.errors.SchemaMissing`, everything else to
:class:`~iterflow.core.errors.DatabaseUnavailable`.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, cast

import asyncpg
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from iterflow.core.errors import (
    DatabaseUnavailable,
    DataRejected,
    FlowError,
    LeaseLost,
    SchemaMissing,
)
from iterflow.core.models import (
    TERMINAL_STATUSES,
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
    SuspendPlan,
    TimerRecord,
)
from iterflow.store import schema as schema_tables
from iterflow.store.base import Claim, Lease, WakeUp, signal_limit
from iterflow.store.outbox import TASK_NAME, reconcile_task_name
from iterflow.store.queries import RUN_COLS, TERMINAL_CHANNEL, Statements

__all__ = ["HOT_IDLE", "TERMINAL_CHANNEL", "PostgresStore"]

Row = Mapping[Any, Any]


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
        claims=row["claims"],
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
        self.schema = schema
        self._q = Statements(schema)
        self._compiled: dict[int, tuple[str, tuple[str, ...]]] = {}
        #: Idle hot-path connections kept checked out of SQLAlchemy's pool (see ``_one``).
        self._hot: list[PoolProxiedConnection] = []
        self._closed = False

    async def close(self) -> None:
        """Give the idle hot-path connections back to the pool (before it is disposed)."""
        self._closed = True
        await self._drop_hot()

    async def _drop_hot(self, exc: BaseException | None = None) -> None:
        hot, self._hot = self._hot, []
        for raw in hot:
            if exc is not None:
                raw.invalidate(exc)
            with contextlib.suppress(Exception):
                await greenlet_spawn(raw.close)

    # -- plumbing ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        """A transaction; failures leave as ``DatabaseUnavailable``/``SchemaMissing``."""
        async with _guarded(self._engine.begin()) as conn:
            yield conn

    @asynccontextmanager
    async def _autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection where each statement is its own transaction."""
        async with _guarded(self._auto.connect()) as conn:
            yield conn

    async def _one(self, stmt: sa.TextClause, params: dict[str, Any]) -> Row | None:
        """Run one statement in autocommit (it is its own transaction): the hot path.

        It skips SQLAlchemy's per-execution machinery (Connection, autobegin, isolation switch,
        result wrapping; ~0.3 ms a statement): the statement is compiled once for asyncpg and run
        with ``fetchrow`` on a connection of the same pool, where asyncpg keeps it prepared.
        SQLAlchemy's codecs on pooled connections still decode ``json``/``jsonb``.

        A few connections stay checked out between statements (``HOT_IDLE``), so consecutive
        statements skip the pool's checkout and check-in too (two greenlet switches and the
        reset, ~0.05 ms a statement); each is used by one statement at a time.
        """
        compiled = self._compiled.get(id(stmt))
        if compiled is None:
            c = stmt.compile(dialect=self._engine.dialect)
            compiled = self._compiled[id(stmt)] = (c.string, tuple(c.positiontup or ()))
        sql, names = compiled
        if self._hot:
            raw = self._hot.pop()
        else:
            try:
                raw = await self._engine.raw_connection()
            except Exception as exc:  # the pool raises the driver's errors unwrapped
                raise _map(exc) from exc
        try:
            row: Row | None = await raw.driver_connection.fetchrow(  # type: ignore[union-attr]
                sql, *[params[n] for n in names]
            )
        except BaseException as exc:
            # Only a plain statement error (bad data, constraint, missing table, serialization)
            # leaves the session usable; anything else (terminated backend, lost socket,
            # cancellation mid-protocol) may leave it broken: it must not go back to the pool,
            # and the idle hot connections, opened before the same failure, are dropped too.
            sqlstate = str(getattr(exc, "sqlstate", None) or "")
            if not (isinstance(exc, asyncpg.PostgresError) and sqlstate[:2] in _SESSION_SAFE):
                raw.invalidate(exc)
                await self._drop_hot(exc)
            await greenlet_spawn(raw.close)
            if isinstance(exc, Exception):
                raise _map(exc) from exc
            raise
        if self._closed or len(self._hot) >= HOT_IDLE:
            await greenlet_spawn(raw.close)
        else:
            self._hot.append(raw)
        return row

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
            row = await _execute_on(conn, self._q.start, params)
        else:
            row = await self._one(self._q.start, params)
        if row is not None:
            return StartResult(run_id=row["id"], created=True, status=RunStatus(row["status"]))
        existing = await self._existing(run, conn)
        return StartResult(run_id=existing["id"], created=False, status=existing["status"])

    async def _existing(self, run: NewRun, conn: Any) -> Row:
        params = {"name": run.name, "idem": run.idempotency_key}
        row = (
            await _execute_on(conn, self._q.existing, params)
            if conn is not None
            else await self._one(self._q.existing, params)
        )
        if row is None:  # pragma: no cover - the conflicting row must exist
            raise DatabaseUnavailable("idempotent start found neither a new nor an existing run")
        return {"id": row["id"], "status": RunStatus(row["status"])}

    # -- attempts ---------------------------------------------------------------------------

    async def claim(self, run_id: uuid.UUID, owner: str, lease_seconds: float) -> Claim | None:
        token = uuid.uuid4()
        row = await self._one(
            self._q.claim,
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
        elif renew or record.attempts > 1:  # a retried step's memo replaces its retrying row
            params["lease"] = lease.seconds
            row = await self._one(self._q.checkpoint, params)
        else:
            row = await self._one(self._q.checkpoint_fenced, params)
        if row is None or not row["leased"]:
            raise LeaseLost(lease.run_id)

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
                "event": _j({"version": child.version, "parent": str(lease.run_id)}),
                "queue": self._queue,
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
            self._q.finish,
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
            self._q.park,
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
    ) -> SignalResult:
        async with self._tx() as conn:
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
                    },
                )
            ).first()
            if inserted is None:
                return SignalResult("duplicate")
            waiting = status is RunStatus.AWAITING_SIGNAL and row.waiting_for == f"signal:{name}"
            if waiting or status is RunStatus.RUNNING:
                # A running attempt may be about to wait for it: a queued wake-up (blocked by
                # the run's job lock until the attempt ends) makes sure it is seen.
                await conn.execute(self._q.wake, {"run_id": run_id, "queue": self._queue})
            await conn.execute(
                self._q.event,
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
            row = (await conn.execute(self._q.cancel_lock, {"run_id": run_id})).first()
            if row is None:
                return CancelResult("not_found")
            status = RunStatus(row.status)
            if status in (RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELED):
                return CancelResult("already_terminal", status)
            await conn.execute(
                self._q.cancel,
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
        if row.status != RunStatus.FAILED.value:
            return RetryResult("not_failed", RunStatus(row.status))
        cut = (await conn.execute(self._q.retry_cut, {"run_id": run_id})).scalar()
        cut = 2147483647 if cut is None else cut
        children = (
            await conn.execute(self._q.retry_children, {"run_id": run_id, "cut": cut})
        ).scalars()
        for child_id in list(children):  # a failed child is retried with its parent
            await self._retry_in(conn, child_id)
        for stmt in self._q.retry_reset:
            await conn.execute(stmt, {"run_id": run_id, "cut": cut})
        await conn.execute(
            self._q.event,
            {
                "run_id": run_id,
                "type": "retried",
                "cursor_key": None,
                "data": _j({"from": cut}),
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
    ) -> list[RunRecord]:
        """Newest first, keyset-paginated on ``seq`` (never skips rows sharing a timestamp)."""
        runs = schema_tables.runs
        stmt = sa.select(*[runs.c[c.strip()] for c in RUN_COLS.split(",")])
        if name is not None:
            stmt = stmt.where(runs.c.name == name)
        if statuses:
            stmt = stmt.where(runs.c.status.in_([s.value for s in statuses]))
        if tag is not None:
            stmt = stmt.where(runs.c.tags.contains([tag]))
        if before_seq is not None:
            stmt = stmt.where(runs.c.seq < before_seq)
        stmt = stmt.order_by(runs.c.seq.desc()).limit(limit)
        async with self._autocommit() as conn:
            result = await conn.execute(
                stmt, execution_options={"schema_translate_map": self._translate}
            )
            rows = result.mappings().all()
        return [_run(r) for r in rows]

    # -- reads ------------------------------------------------------------------------------

    async def pending_wake(self, run_id: uuid.UUID) -> WakeUp | None:
        row = await self._one(self._q.pending_wake, {"lock": str(run_id)})
        if row is None:
            return None
        return WakeUp(run_id=run_id, scheduled_at=row["scheduled_at"], priority=row["priority"])

    async def get_run(self, run_id: uuid.UUID) -> RunRecord | None:
        row = await self._one(self._q.get_run, {"run_id": run_id})
        return None if row is None else _run(row)

    async def detail(self, run_id: uuid.UUID) -> RunDetail | None:
        async with self._autocommit() as conn:
            p = {"run_id": run_id}
            run_row = (await conn.execute(self._q.get_run, p)).mappings().first()
            if run_row is None:
                return None
            step_rows = (await conn.execute(self._q.detail_steps, p)).mappings().all()
            sig_rows = (await conn.execute(self._q.detail_signals, p)).mappings().all()
            timer_rows = (await conn.execute(self._q.detail_timers, p)).mappings().all()
            ev_rows = (await conn.execute(self._q.detail_events, p)).mappings().all()
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
        from iterflow.core.errors import ConfigInvalid

        raise ConfigInvalid(
            "conn= must be a sqlalchemy.ext.asyncio.AsyncConnection inside a transaction"
        )
    try:
        result = await conn.execute(stmt, params)
    except Exception as exc:
        raise _map(exc) from exc
    return result.mappings().first()


#: SQLSTATE classes after which a connection is still usable: data exception, integrity
#: violation, transaction rollback (serialization, deadlock), syntax error or access rule.
_SESSION_SAFE = frozenset({"22", "23", "40", "42"})
#: Idle hot-path connections a store keeps out of the pool (see ``PostgresStore._one``). The
#: pool must have this much headroom beyond what everything else needs (``Engine`` adds it to
#: ``max_overflow``): a statement waiting in the pool is never handed a hot connection.
HOT_IDLE = 4


def _sqlstate(exc: BaseException) -> str:
    """The SQLSTATE of a driver error, raw or wrapped by SQLAlchemy ('' if none)."""
    for candidate in (exc, getattr(exc, "orig", None), getattr(exc, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str) and state:
            return state
    orig = getattr(exc, "orig", None)
    cause = getattr(orig, "__cause__", None)
    state = getattr(cause, "sqlstate", None)
    return state if isinstance(state, str) else ""


#: SQLSTATE classes meaning "PostgreSQL refused this data": a data exception (22: bad value,
#: out of range, untranslatable character) or an integrity violation (23). Never an outage.
_DATA_REFUSED = frozenset({"22", "23"})


def _map(exc: Exception) -> Exception:
    """The stable error for a driver/pool failure at the store boundary."""
    state = _sqlstate(exc)
    if state[:2] in _DATA_REFUSED:
        text = str(getattr(exc, "orig", None) or exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        return DataRejected(
            f"PostgreSQL refused the data (SQLSTATE {state}: {first}); nothing was written. "
            "Retrying the same data fails the same way: fix the value",
            details={"sqlstate": state},
        )
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.InvalidSchemaNameError):
        return SchemaMissing(
            f"iterflow tables are missing ({str(exc).strip().splitlines()[0]}); run "
            "`flowctl migrate` or `await engine.migrate()`"
        )
    if isinstance(exc, asyncpg.PostgresError):
        text = str(exc).strip()
        return DatabaseUnavailable(
            f"PostgreSQL error: {text.splitlines()[0] if text else type(exc).__name__}"
        )
    if isinstance(exc, DBAPIError):
        text = str(exc.orig) if exc.orig is not None else str(exc)
        if isinstance(exc, ProgrammingError) and "does not exist" in text:
            return SchemaMissing(
                f"iterflow tables are missing ({text.splitlines()[0]}); run `flowctl migrate` "
                "or `await engine.migrate()`"
            )
        first = text.splitlines()[0] if text else type(exc).__name__
        return DatabaseUnavailable(f"PostgreSQL error: {first}")
    if isinstance(exc, OSError):
        return DatabaseUnavailable(f"cannot reach PostgreSQL: {exc}")
    return DatabaseUnavailable(f"PostgreSQL connection failed: {type(exc).__name__}: {exc}")


@asynccontextmanager
async def _guarded(opening: Any) -> AsyncIterator[AsyncConnection]:
    """Enter ``opening`` (``engine.begin()`` or ``.connect()``) and map every failure that is not
    ours to a stable error. A connection that failed with something other than a database error
    (e.g. asyncpg's ``InternalClientError`` after the server killed the backend mid-statement)
    is in an unknown state and is invalidated rather than returned to the pool; SQLAlchemy
    invalidates disconnects itself."""
    try:
        async with opening as conn:
            try:
                yield conn
            except (DBAPIError, FlowError):
                raise
            except Exception:
                with contextlib.suppress(Exception):
                    await conn.invalidate()
                raise
    except FlowError:
        raise
    except Exception as exc:
        raise _map(exc) from exc
