"""The :class:`~iterflow.store.base.ScheduleStore` half of the PostgreSQL store (a mixin of
:class:`~iterflow.store.postgres.PostgresStore`).

The sweep is one transaction: :meth:`PostgresSchedules.sweep_schedules` reads the database's
``now()`` and locks the due rows (``FOR UPDATE SKIP LOCKED``), the caller decides each plan with
the pure core, and :meth:`_Batch.apply` writes it on the same connection: the previous run's
cancel, each run's start (the runs' own start statement: run row, ``started`` event, wake-up
job; an existing idempotency key starts nothing), the schedule's new watermark and its events.
All of it commits at once, or none of it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from iterflow.core.models import NewRun, RunStatus, StartResult
from iterflow.core.scheduling import ScheduleEvent, ScheduleRecord, ScheduleSpec
from iterflow.core.states import LIVE_STATUSES, Canceled
from iterflow.store.base import DueSchedule, ScheduledStart, ScheduleWrite
from iterflow.store.connections import Row
from iterflow.store.queries import Statements, json_param, start_params
from iterflow.store.schedule_queries import ScheduleStatements

__all__ = ["PostgresSchedules", "schedule_record"]


_j = json_param


def schedule_record(row: Row) -> ScheduleRecord:
    """A ``schedules`` row."""
    spec = ScheduleSpec(
        id=row["id"],
        flow=row["flow"],
        cron=row["cron"],
        tz=row["tz"],
        version=row["version"],
        input=row["input"],
        overlap=row["overlap"],
        catchup_seconds=row["catchup_seconds"],
        jitter_seconds=row["jitter_seconds"],
        start_at=row["start_at"],
        end_at=row["end_at"],
        source=row["source"],
    )
    return ScheduleRecord(
        spec=spec,
        paused=row["paused"],
        next_tick=row["next_tick"],
        last_tick=row["last_tick"],
        buffered_tick=row["buffered_tick"],
        last_run_id=row["last_run_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _definition(spec: ScheduleSpec) -> dict[str, Any]:
    return {
        "id": spec.id,
        "flow": spec.flow,
        "version": spec.version,
        "cron": spec.cron,
        "tz": spec.tz,
        "input": _j(spec.input),
        "overlap": spec.overlap,
        "catchup_seconds": spec.catchup_seconds,
        "jitter_seconds": spec.jitter_seconds,
        "start_at": spec.start_at,
        "end_at": spec.end_at,
        "source": spec.source,
    }


def _event_data(spec: ScheduleSpec) -> str | None:
    return _j({"cron": spec.cron, "tz": spec.tz, "source": spec.source})


class PostgresSchedules:
    """Schedules on PostgreSQL; mixed into ``PostgresStore`` (its engine, queue and runs'
    statements)."""

    _engine: AsyncEngine
    _queue: str
    _q: Statements
    _sq: ScheduleStatements
    _tx: Callable[[], AbstractAsyncContextManager[AsyncConnection]]
    _autocommit: Callable[[], AbstractAsyncContextManager[AsyncConnection]]
    schema: str

    async def _schedule_one(self, stmt: sa.TextClause, params: dict[str, Any]) -> Row | None:
        async with self._autocommit() as conn:  # one statement: no transaction block
            return (await conn.execute(stmt, params)).mappings().first()

    async def schedule_now(self) -> datetime:
        row = await self._schedule_one(self._sq.now, {"now": None})
        assert row is not None
        return row["now"]  # type: ignore[no-any-return]

    async def create_schedule(
        self, spec: ScheduleSpec, *, last_tick: datetime | None, next_tick: datetime | None
    ) -> bool:
        params = {
            **_definition(spec),
            "last_tick": last_tick,
            "next_tick": next_tick,
            "data": _event_data(spec),
        }
        row = await self._schedule_one(self._sq.create, params)
        return row is not None and bool(row["created"])

    async def update_schedule(
        self,
        spec: ScheduleSpec,
        *,
        last_tick: datetime | None,
        next_tick: datetime | None,
        paused: bool,
    ) -> bool:
        params = {
            **_definition(spec),
            "last_tick": last_tick,
            "next_tick": next_tick,
            "paused": paused,
            "data": _event_data(spec),
        }
        row = await self._schedule_one(self._sq.update, params)
        return row is not None and bool(row["updated"])

    async def set_schedule_paused(
        self,
        schedule_id: str,
        paused: bool,
        *,
        event: ScheduleEvent,
        last_tick: datetime | None = None,
        next_tick: datetime | None = None,
    ) -> bool:
        row = await self._schedule_one(
            self._sq.set_paused,
            {
                "id": schedule_id,
                "paused": paused,
                "resume": not paused,
                "last_tick": last_tick,
                "next_tick": next_tick,
                "type": event.type,
                "data": _j(event.data),
            },
        )
        return row is not None and bool(row["changed"])

    async def delete_schedule(self, schedule_id: str) -> bool:
        return await self._schedule_one(self._sq.delete, {"id": schedule_id}) is not None

    async def get_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        row = await self._schedule_one(self._sq.get, {"id": schedule_id})
        return None if row is None else schedule_record(row)

    async def list_schedules(self) -> list[ScheduleRecord]:
        async with self._autocommit() as conn:
            rows = (await conn.execute(self._sq.list)).mappings().all()
        return [schedule_record(r) for r in rows]

    async def schedule_events(self, schedule_id: str, *, limit: int) -> list[ScheduleEvent]:
        async with self._autocommit() as conn:
            rows = (
                await conn.execute(self._sq.events, {"id": schedule_id, "limit": limit})
            ).mappings()
            return [
                ScheduleEvent(r["type"], r["tick"], r["run_id"], r["data"], r["at"], r["id"])
                for r in rows
            ]

    async def purge_schedule_events(self, older_than: timedelta, *, limit: int) -> int:
        params = {"age": older_than.total_seconds(), "limit": limit}
        row = await self._schedule_one(self._sq.purge_events, params)
        assert row is not None
        return int(row["deleted"])

    @asynccontextmanager
    async def sweep_schedules(
        self, *, limit: int, now: datetime | None = None
    ) -> AsyncIterator[_Batch]:
        try:
            async with self._tx() as conn:
                clock = (await conn.execute(self._sq.sweep_now, {"now": now})).one().now
                rows = await conn.execute(self._sq.due, {"now": clock, "limit": limit})
                due = [
                    DueSchedule(schedule_record(r), bool(r["previous_live"]))
                    for r in rows.mappings()
                ]
                try:
                    yield _Batch(self, conn, clock, due)
                except Exception as exc:  # the caller's own error: roll back, raise it as is
                    raise _Rollback(exc) from exc
        except _Rollback as rollback:
            raise rollback.error from rollback.error.__cause__

    async def start_scheduled(
        self, schedule_id: str, starts: Sequence[ScheduledStart], *, event: str
    ) -> list[StartResult]:
        async with self._tx() as conn:
            if (await conn.execute(self._sq.lock, {"id": schedule_id})).first() is None:
                return []
            results = [await self._start_on(conn, schedule_id, s, event) for s in starts]
            if event == "triggered" and results:
                await conn.execute(
                    self._sq.set_last_run, {"id": schedule_id, "last_run_id": results[-1].run_id}
                )
            return results

    # -- on the sweep's connection ------------------------------------------------------------

    async def _start_on(
        self, conn: AsyncConnection, schedule_id: str, start: ScheduledStart, event: str
    ) -> StartResult:
        run: NewRun = start.run
        params = start_params(run, self._queue)
        row = (await conn.execute(self._q.start, params)).mappings().first()
        if row is not None:
            result = StartResult(row["id"], True, RunStatus(row["status"]))
        else:
            found = (
                (
                    await conn.execute(
                        self._q.existing, {"name": run.name, "idem": run.idempotency_key}
                    )
                )
                .mappings()
                .one()
            )
            result = StartResult(found["id"], False, RunStatus(found["status"]))
        await conn.execute(
            self._sq.event,
            {
                "id": schedule_id,
                "type": event,
                "tick": start.tick,
                "run_id": result.run_id,
                "data": _j({"created": result.created, "wake_at": _iso(run.wake_at)}),
                "at": None,
            },
        )
        return result

    async def _cancel_on(self, conn: AsyncConnection, run_id: uuid.UUID, reason: str) -> None:
        row = (await conn.execute(self._q.cancel_lock, {"run_id": run_id})).first()
        if row is None or RunStatus(row.status) not in LIVE_STATUSES:
            return
        await conn.execute(
            self._q.cancel,
            {
                "run_id": run_id,
                "error": _j({"code": "RUN_CANCELED", "message": reason}),
                "event": _j(Canceled(reason=reason, root=str(run_id)).to_data()),
                "queue": self._queue,
            },
        )


@dataclass
class _Batch:
    """:class:`~iterflow.store.base.ScheduleBatch` on the sweep's transaction."""

    store: PostgresSchedules
    conn: AsyncConnection
    now: datetime
    due: Sequence[DueSchedule] = field(default_factory=list)

    async def apply(self, schedule_id: str, write: ScheduleWrite) -> list[StartResult]:
        record = next((d.record for d in self.due if d.record.id == schedule_id), None)
        if record is None:
            raise ValueError(f"schedule {schedule_id!r} is not in this sweep")
        conn, sq = self.conn, self.store._sq
        if write.cancel_previous and record.last_run_id is not None:
            reason = f"canceled by schedule {schedule_id}: a new tick started (cancel_previous)"
            await self.store._cancel_on(conn, record.last_run_id, reason)
        results = [
            await self.store._start_on(conn, schedule_id, s, "started") for s in write.starts
        ]
        for event in write.events:
            await conn.execute(
                sq.event,
                {
                    "id": schedule_id,
                    "type": event.type,
                    "tick": event.tick,
                    "run_id": event.run_id,
                    "data": _j(event.data),
                    "at": None,
                },
            )
        await conn.execute(
            sq.advance,
            {
                "id": schedule_id,
                "last_tick": write.last_tick,
                "next_tick": write.next_tick,
                "buffered_tick": write.buffered_tick,
                "last_run_id": results[-1].run_id if results else None,
            },
        )
        return results


class _Rollback(BaseException):
    """Carries a sweep caller's exception through the transaction's error mapping (which maps
    every ``Exception`` to a store error) so it rolls back and leaves unchanged."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
