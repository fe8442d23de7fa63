"""Resume, fork, cancel with compensation and the worker registry on PostgreSQL (a mixin of
:class:`~iterflow.store.postgres.PostgresStore`, with its statements).

``resume`` and ``fork`` are short transactions like ``retry``: the run row is locked first, its
rows are read, the core decides (:func:`~iterflow.core.decisions.resume_children`,
:func:`~iterflow.core.decisions.fork_cut`) and the writes apply the decision. The worker registry
is one row per running worker in ``workers``, off the hot path (written at a worker's start and
heartbeat, deleted at its clean stop).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from iterflow.core.decisions import (
    cancel_meta,
    canceled_error,
    fork_cut,
    forked_run,
    resume_children,
    was_compensated,
)
from iterflow.core.models import (
    CancelResult,
    ChildRecord,
    RetryResult,
    RunStatus,
    StartResult,
    WorkerInfo,
    WorkerRecord,
)
from iterflow.core.states import (
    LIVE_STATUSES,
    Canceled,
    CancelRequested,
    EventType,
    Forked,
    Resumed,
)
from iterflow.store.base import WORKER_PRUNE_SECONDS
from iterflow.store.queries import (
    RUN_COLS,
    TERMINAL_CHANNEL,
    Statements,
    json_param,
    start_params,
)
from iterflow.store.rows import run_record, signal_record, step_record, timer_record
from iterflow.store.schema import quote_identifier, status_in

__all__ = ["ControlStatements", "PostgresControl"]

_CANCELED = f"'{RunStatus.CANCELED.value}'"
_PENDING = f"'{RunStatus.PENDING.value}'"


class ControlStatements:
    """The statements of :class:`PostgresControl` for tables in schema ``schema``."""

    def __init__(self, schema: str) -> None:
        s = quote_identifier(schema)
        self.fork_source = sa.text(f"SELECT {RUN_COLS} FROM {s}.runs WHERE id = :run_id FOR SHARE")
        self.fork_copy_steps = sa.text(f"""
            INSERT INTO {s}.steps (run_id, position, cursor_key, kind, label, status, output,
                error, attempts, started_at, finished_at)
            SELECT :new_id, position, cursor_key, kind, label, status, output, error, attempts,
                started_at, finished_at
            FROM {s}.steps
            WHERE run_id = :run_id AND position = ANY(CAST(:positions AS integer[]))""")
        self.resume_reset = sa.text(f"""
            UPDATE {s}.runs SET status = {_PENDING}, error = NULL, output = NULL,
                finished_at = NULL, stalled_claims = 0, waiting_for = NULL, wake_at = NULL,
                updated_at = now()
            WHERE id = :run_id AND status = {_CANCELED}""")
        # cancel(compensate=True): the live non-detached children, each canceled with its tree
        # by the plain cancel statement; then the run itself is set pending with the request.
        self.cancel_children = sa.text(f"""
            SELECT id FROM {s}.runs
            WHERE parent_run_id = :run_id AND {status_in(LIVE_STATUSES)}
              AND NOT coalesce((meta ->> 'detached')::boolean, false)""")
        self.cancel_request = sa.text(f"""
            WITH run AS (
                UPDATE {s}.runs SET status = {_PENDING}, meta = meta || CAST(:meta AS jsonb),
                    lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
                    waiting_for = NULL, wake_at = NULL, updated_at = now()
                WHERE id = :run_id AND {status_in(LIVE_STATUSES)}
                RETURNING id
            )
            SELECT pg_notify('{TERMINAL_CHANNEL}', id::text) FROM run""")
        self.worker_register = sa.text(f"""
            WITH pruned AS (
                DELETE FROM {s}.workers
                WHERE heartbeat_at < now() - make_interval(secs => :prune) AND id <> :id
            )
            INSERT INTO {s}.workers (id, host, pid, flows, queues)
            VALUES (:id, :host, :pid, CAST(:flows AS text[]), CAST(:queues AS text[]))
            ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,
                flows = excluded.flows, queues = excluded.queues, heartbeat_at = now()""")
        self.worker_remove = sa.text(f"DELETE FROM {s}.workers WHERE id = :id")
        self.worker_list = sa.text(f"""
            SELECT id, host, pid, flows, queues, started_at, heartbeat_at,
                heartbeat_at < now() - make_interval(secs => :stale) AS stale
            FROM {s}.workers ORDER BY started_at, id""")


class PostgresControl:
    """``resume``, ``fork``, ``cancel(compensate=True)`` and the worker registry; mixed into
    ``PostgresStore``."""

    _queue: str
    _q: Statements
    _cq: ControlStatements
    _tx: Callable[[], AbstractAsyncContextManager[AsyncConnection]]
    _autocommit: Callable[[], AbstractAsyncContextManager[AsyncConnection]]

    async def resume(self, run_id: uuid.UUID) -> RetryResult:
        async with self._tx() as conn:
            return await self._resume_in(conn, run_id)

    async def _resume_in(self, conn: AsyncConnection, run_id: uuid.UUID) -> RetryResult:
        row = (await conn.execute(self._q.retry_lock, {"run_id": run_id})).first()
        if row is None:
            return RetryResult("missing")
        if row.status != RunStatus.CANCELED.value:
            return RetryResult("not_failed", RunStatus(row.status))
        p = {"run_id": run_id}
        steps = [step_record(r) for r in (await conn.execute(self._q.retry_steps, p)).mappings()]
        if was_compensated(steps):  # its completed steps were undone: nothing to resume
            return RetryResult("not_failed", RunStatus.CANCELED)
        children = resume_children(steps, await self._children(conn, run_id))
        for child_id in children:
            await self._resume_in(conn, child_id)
        await conn.execute(self._cq.resume_reset, p)
        await self._event(conn, run_id, EventType.RESUMED, Resumed(children=len(children)))
        await conn.execute(self._q.wake, {"run_id": run_id, "queue": self._queue})
        return RetryResult("queued", RunStatus.PENDING)

    async def _cancel_compensating(
        self, conn: AsyncConnection, run_id: uuid.UUID, reason: str
    ) -> CancelResult:
        """``cancel(run_id, compensate=True)`` of a live run locked by the caller's
        transaction: cancel its live non-detached children (and their trees), then set it
        ``pending`` with the request in ``meta``, its lease cleared, a ``cancel_requested``
        event, a terminal NOTIFY (an attempt in flight stops) and a wake-up."""
        p = {"run_id": run_id}
        error = json_param(canceled_error(reason))
        event = json_param(Canceled(reason=reason, root=str(run_id)).to_data())
        for child in (await conn.execute(self._cq.cancel_children, p)).scalars().all():
            await conn.execute(
                self._q.cancel,
                {"run_id": child, "error": error, "event": event, "queue": self._queue},
            )
        await conn.execute(self._cq.cancel_request, {**p, "meta": json_param(cancel_meta(reason))})
        await self._event(conn, run_id, EventType.CANCEL_REQUESTED, CancelRequested(reason))
        await conn.execute(self._q.wake, {**p, "queue": self._queue})
        return CancelResult("canceling", RunStatus.PENDING)

    async def fork(
        self, run_id: uuid.UUID, new_id: uuid.UUID, from_step: str | None
    ) -> StartResult | None:
        async with self._tx() as conn:
            p = {"run_id": run_id}
            source = (await conn.execute(self._cq.fork_source, p)).mappings().first()
            if source is None:
                return None
            fork = fork_cut(
                [step_record(r) for r in (await conn.execute(self._q.retry_steps, p)).mappings()],
                [
                    signal_record(r)
                    for r in (await conn.execute(self._q.retry_signals, p)).mappings()
                ],
                [timer_record(r) for r in (await conn.execute(self._q.retry_timers, p)).mappings()],
                await self._children(conn, run_id),
                from_step,
            )
            new = forked_run(run_record(source), new_id, fork)
            await conn.execute(self._q.start, start_params(new, self._queue))
            if fork.kept:
                await conn.execute(
                    self._cq.fork_copy_steps,
                    {**p, "new_id": new_id, "positions": list(fork.kept)},
                )
            forked = Forked(str(run_id), from_step, fork.cut.position)
            await self._event(conn, new_id, EventType.FORKED, forked)
            return StartResult(new_id, True, RunStatus.PENDING)

    async def _children(self, conn: AsyncConnection, run_id: uuid.UUID) -> list[ChildRecord]:
        rows = (await conn.execute(self._q.retry_children, {"run_id": run_id})).mappings()
        return [ChildRecord(r["id"], r["parent_cursor_key"], RunStatus(r["status"])) for r in rows]

    async def _event(
        self, conn: AsyncConnection, run_id: uuid.UUID, type_: EventType, payload: Any
    ) -> None:
        await conn.execute(
            self._q.event,
            {
                "run_id": run_id,
                "type": type_.value,
                "cursor_key": None,
                "data": json_param(payload.to_data()),
            },
        )

    # -- workers ----------------------------------------------------------------------------

    async def register_worker(self, info: WorkerInfo) -> None:
        async with self._autocommit() as conn:  # one statement: no transaction block
            await conn.execute(
                self._cq.worker_register,
                {
                    "id": info.id,
                    "host": info.host,
                    "pid": info.pid,
                    "flows": list(info.flows),
                    "queues": list(info.queues),
                    "prune": WORKER_PRUNE_SECONDS,
                },
            )

    async def remove_worker(self, worker_id: str) -> None:
        async with self._autocommit() as conn:
            await conn.execute(self._cq.worker_remove, {"id": worker_id})

    async def list_workers(self, stale_seconds: float) -> list[WorkerRecord]:
        async with self._autocommit() as conn:
            rows = (
                (await conn.execute(self._cq.worker_list, {"stale": stale_seconds}))
                .mappings()
                .all()
            )
        return [
            WorkerRecord(
                id=r["id"],
                host=r["host"],
                pid=r["pid"],
                flows=tuple(r["flows"]),
                queues=tuple(r["queues"]),
                started_at=r["started_at"],
                heartbeat_at=r["heartbeat_at"],
                stale=bool(r["stale"]),
            )
            for r in rows
        ]
