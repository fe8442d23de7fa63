"""Starts beyond one plain run, on PostgreSQL (a mixin of
:class:`~iterflow.store.postgres.PostgresStore`, with its statements): several runs in one
transaction (``publish``), a start and a signal in one transaction (``signal_with_start``: the
start statement's unique index makes concurrent callers wait for the first one's commit and find
its run), and starts with a run key (debounce, singleton; :mod:`iterflow.core.debounce`).

A keyed start takes a transaction-level advisory lock on (schema, flow, key) first, so the
starts of one key are serialized across every process (and held until the caller commits when
it joins the caller's transaction); then it joins the key's debounced run that has not begun, or
returns its live singleton run, or inserts with the ordinary start statement. A worker's claim
races a debounce only on the run row: the join locks it ``FOR UPDATE`` and re-checks that the run
has not begun, so a claim committed first makes the join start a new run instead.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from iterflow.core.debounce import DEBOUNCE_META_KEY
from iterflow.core.errors import ConfigInvalid
from iterflow.core.models import NewRun, RunStatus, SignalResult, StartResult
from iterflow.core.states import LIVE_STATUSES, EventType
from iterflow.store.base import Claim, Lease, idempotency_conflict
from iterflow.store.connections import Row, execute_on
from iterflow.store.outbox import claimed_wake_insert_sql, reschedule_wake_sql
from iterflow.store.queries import RUN_COLS, Statements, json_param, start_params
from iterflow.store.rows import run_record
from iterflow.store.schema import quote_identifier, status_in

__all__ = ["PostgresStarts", "StartStatements"]

_PENDING = f"'{RunStatus.PENDING.value}'"


class StartStatements:
    """The statements of :class:`PostgresStarts` for tables in schema ``schema``."""

    def __init__(self, schema: str) -> None:
        s = quote_identifier(schema)
        #: Serializes the keyed starts of one (schema, flow, key) until the transaction ends.
        self.key_lock = sa.text(
            "SELECT pg_advisory_xact_lock(hashtext(:namespace), hashtext(:name || chr(31) || :key))"
        )
        #: Join the key's debounced run of this flow version that no worker has begun: the
        #: newest input (with its limit key) or the first, and a new quiet period, its queued
        #: wake-up moved to the new due time.
        self.debounce_join = sa.text(f"""
            WITH target AS (
                SELECT id FROM {s}.runs
                WHERE name = :name AND run_key = :key AND finished_at IS NULL
                  AND version = :version AND status = {_PENDING} AND started_at IS NULL
                  AND (meta -> '{DEBOUNCE_META_KEY}') IS NOT NULL
                ORDER BY seq DESC LIMIT 1
                FOR UPDATE
            ), run AS (
                UPDATE {s}.runs AS r SET
                    input = CASE WHEN :keep = 'last' THEN CAST(:input AS jsonb) ELSE r.input END,
                    limit_key = CASE WHEN :keep = 'last' THEN CAST(:limit_key AS text)
                                     ELSE r.limit_key END,
                    wake_at = now() + CAST(:delay AS interval), updated_at = now()
                FROM target WHERE r.id = target.id
                RETURNING r.id, r.wake_at
            ), job AS ({reschedule_wake_sql("run")})
            SELECT id FROM run""")
        #: A start that is its own first claim (``PostgresStarts.start_claimed``): the run row
        #: is written ``running`` under the caller's lease, with its ``started`` event and a
        #: ``doing`` wake-up job that holds the run's job lock while the attempt runs
        #: (``outbox.claimed_wake_insert_sql``); a lease that expires is recovered by the
        #: reconciler (``Statements.recover_expired``), which releases that job and queues the
        #: run's wake-up then.
        self.start_claimed = sa.text(f"""
            WITH ins AS (
                INSERT INTO {s}.runs (id, name, version, status, input, idempotency_key, tags,
                    priority, meta, deadline_at, input_hash, queue, lease_token, lease_owner,
                    lease_expires_at, claims, stalled_claims, started_at)
                VALUES (:id, :name, :version, '{RunStatus.RUNNING.value}', CAST(:input AS jsonb),
                    :idem, CAST(:tags AS text[]), :priority, CAST(:meta AS jsonb),
                    now() + CAST(:deadline AS interval), CAST(:input_hash AS text), :run_queue,
                    :token, :owner, now() + make_interval(secs => :lease), 1, 1, now())
                ON CONFLICT (name, idempotency_key) WHERE idempotency_key IS NOT NULL
                DO NOTHING
                RETURNING {RUN_COLS}, queue
            ), ev AS (
                INSERT INTO {s}.events (run_id, type, data)
                SELECT id, '{EventType.STARTED.value}',
                    CAST(:event AS jsonb) || jsonb_build_object('delayed_until', NULL)
                FROM ins RETURNING 1
            ), job AS ({claimed_wake_insert_sql("ins")})
            SELECT ins.*, now() AS db_now, (SELECT id FROM job) AS job_id FROM ins""")
        #: The key's live run (a singleton start returns it).
        self.singleton_live = sa.text(f"""
            SELECT id, status FROM {s}.runs
            WHERE name = :name AND run_key = :key AND finished_at IS NULL
              AND {status_in(LIVE_STATUSES)}
            ORDER BY seq DESC LIMIT 1""")


class PostgresStarts:
    """``create_runs``, ``signal_with_start`` and keyed starts; mixed into ``PostgresStore``."""

    schema: str
    _queue: str
    _q: Statements
    _tq: StartStatements
    _tx: Callable[[], AbstractAsyncContextManager[AsyncConnection]]

    if TYPE_CHECKING:  # PostgresStore's

        async def _one(self, stmt: sa.TextClause, params: dict[str, Any]) -> Row | None: ...

        async def _existing(self, run: NewRun, conn: Any) -> Row: ...

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
        ) -> SignalResult: ...

    @asynccontextmanager
    async def _joined(self, conn: Any) -> AsyncIterator[AsyncConnection]:
        """A transaction of our own, or a savepoint in the caller's (``conn=``), so that a
        refused batch leaves the caller's transaction as it was."""
        if conn is None:
            async with self._tx() as tx:
                yield tx
            return
        if not isinstance(conn, AsyncConnection):
            raise ConfigInvalid(
                "conn= must be a sqlalchemy.ext.asyncio.AsyncConnection inside a transaction"
            )
        async with conn.begin_nested():
            yield conn

    async def create_runs(self, runs: Sequence[NewRun], *, conn: Any = None) -> list[StartResult]:
        async with self._joined(conn) as tx:
            return [await self._start_in(tx, run) for run in runs]

    async def _start_in(self, conn: AsyncConnection, run: NewRun) -> StartResult:
        """One start inside ``conn``'s transaction (keyed or plain)."""
        if run.run_key is not None:
            return await self._keyed_start(conn, run)
        row = await execute_on(conn, self._q.start, start_params(run, self._queue))
        return await self._created_or_existing(row, run, conn)

    async def _created_or_existing(self, row: Row | None, run: NewRun, conn: Any) -> StartResult:
        """The result of the start statement: the new run, or the run an idempotency key
        already names (``IDEMPOTENCY_CONFLICT`` for another input)."""
        if row is not None:
            return StartResult(run_id=row["id"], created=True, status=RunStatus(row["status"]))
        existing = await self._existing(run, conn)
        stored = existing["input_hash"]
        if stored is not None and run.input_hash is not None and stored != run.input_hash:
            raise idempotency_conflict(run.name, run.idempotency_key or "")
        return StartResult(run_id=existing["id"], created=False, status=existing["status"])

    async def _keyed_start(self, conn: AsyncConnection, run: NewRun) -> StartResult:
        key = {"name": run.name, "key": run.run_key}
        namespace = f"iterflow.start:{self.schema}"
        await execute_on(conn, self._tq.key_lock, {**key, "namespace": namespace})
        if run.idempotency_key is not None:
            idem = {"name": run.name, "idem": run.idempotency_key}
            if await execute_on(conn, self._q.existing, idem) is not None:
                return await self._created_or_existing(None, run, conn)
        if run.debounce is not None:
            params = {
                **key,
                "version": run.version,
                "keep": run.debounce,
                "input": json_param(run.input),
                "limit_key": run.limit_key,
                "delay": run.delay,
                "queue": self._queue,
            }
            joined = await execute_on(conn, self._tq.debounce_join, params)
            if joined is not None:
                return StartResult(run_id=joined["id"], created=False, status=RunStatus.PENDING)
        if run.singleton:
            live = await execute_on(conn, self._tq.singleton_live, key)
            if live is not None:
                return StartResult(
                    run_id=live["id"], created=False, status=RunStatus(live["status"])
                )
        row = await execute_on(conn, self._q.start, start_params(run, self._queue))
        return await self._created_or_existing(row, run, conn)

    async def start_claimed(
        self, run: NewRun, owner: str, lease_seconds: float
    ) -> tuple[StartResult, Claim | None]:
        """A plain start (no run key, no delay) that is also the run's first claim by ``owner``:
        one statement, one commit (see :meth:`Store.start_claimed`)."""
        token = uuid.uuid4()
        params = {
            **start_params(run, self._queue),
            "token": token,
            "owner": owner,
            "lease": lease_seconds,
        }
        row = await self._one(self._tq.start_claimed, params)
        if row is None:  # its idempotency key names an existing run
            return await self._created_or_existing(None, run, None), None
        claim = Claim(
            run=run_record(row),
            lease=Lease(
                run_id=run.id,
                token=token,
                owner=owner,
                seconds=lease_seconds,
                job_id=row["job_id"],
            ),
            history=[],
            timers={},
            inbox=[],
            db_now=row["db_now"],
            ready_at=row["created_at"],
        )
        return StartResult(run_id=run.id, created=True, status=RunStatus.RUNNING), claim

    async def signal_with_start(
        self,
        run: NewRun,
        name: str,
        payload: Any,
        signal_key: str | None,
        *,
        max_signals: int,
        meta: Mapping[str, Any] | None = None,
    ) -> tuple[StartResult, SignalResult]:
        async with self._tx() as conn:
            row = await execute_on(conn, self._q.start, start_params(run, self._queue))
            started = await self._created_or_existing(row, run, conn)
            signal = await self._deliver_on(
                conn, started.run_id, name, payload, signal_key, max_signals=max_signals, meta=meta
            )
            return started, signal
