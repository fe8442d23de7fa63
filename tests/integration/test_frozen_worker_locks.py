"""A frozen worker (SIGSTOP, a VM stall, a long GC pause) must not hold locks the others need.

Right after one of procrastinate's queries it holds none: its pool runs each query in autocommit
(``runtime/host.py``'s ``_pool``). With psycopg's default, the query's transaction stayed open
until the frozen worker's ``COMMIT``; the periodic defer it had just made then blocked the same
defer of every other worker, so no worker deferred the reconciler any more and nothing recovered
the frozen worker's runs (the split-brain e2e test's rare failure, tests/e2e/test_split_brain.py).

Inside one of its own multi-statement transactions (flow control, or the store's SQLAlchemy
ones), PostgreSQL ends the transaction once it has been idle for the lease."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import psycopg_pool
import pytest
import sqlalchemy as sa
from procrastinate import App, PsycopgConnector
from sqlalchemy.ext.asyncio import create_async_engine

from iterflow import Engine
from iterflow.core.errors import DatabaseUnavailable
from iterflow.core.limits import Gate, Limits
from iterflow.core.models import NewRun
from iterflow.runtime.host import _pool
from iterflow.store.postgres import PostgresStore
from iterflow.store.urls import asyncpg_url, libpq_url
from tests.contract.support import LEASE, new_run

#: Takes a lock in a transaction of the store, sets the first event, waits for the second.
Freeze = Callable[[PostgresStore, asyncio.Event, asyncio.Event], Awaitable[None]]

DEFER = (
    "SELECT procrastinate_defer_periodic_job_v2("
    "'q', NULL, 'reconcile-lock', 'iterflow.reconcile.test', 0, 'q', %s, '{}'::jsonb) AS id"
)


async def _defer_and_freeze(url: str, factory: Any) -> str:
    """Defer a periodic job on a pool connection of ``factory``, then, as if frozen before
    the connection went back, try the same defer from another session (a second worker)."""
    app = App(connector=PsycopgConnector(conninfo=libpq_url(url), pool_factory=factory))
    stamp = int(time.time())
    async with app.open_async():
        pool: psycopg_pool.AsyncConnectionPool = app.connector.pool
        async with pool.connection() as frozen:
            await frozen.execute(DEFER, (stamp,))
            # frozen here: the block has not ended, the connection is not back in the pool
            with psycopg.connect(libpq_url(url), autocommit=True) as other:
                other.execute("SET statement_timeout = '2s'")
                try:
                    other.execute(DEFER, (stamp,))
                except psycopg.errors.QueryCanceled:
                    return "blocked"
                return "went on"


async def test_a_frozen_workers_last_procrastinate_query_holds_no_lock(engine: Engine) -> None:
    assert await _defer_and_freeze(engine.database_url, _pool) == "went on"


async def test_without_autocommit_the_frozen_query_blocks_the_other_workers_defer(
    engine: Engine,
) -> None:
    """The failure the autocommit pool removes, shown on psycopg's default pool."""

    def plain(**options: Any) -> psycopg_pool.AsyncConnectionPool:
        return psycopg_pool.AsyncConnectionPool(**options)

    assert await _defer_and_freeze(engine.database_url, plain) == "blocked"


async def _claim_goes_on(
    database_url: str,
    freeze: Freeze,
    run: NewRun,
    gate: Gate | None = None,
    frozen: PostgresStore | None = None,
) -> None:
    """Store A (``frozen``, else one whose transactions end once idle for 1 s) runs ``freeze``,
    which takes a lock, sets ``holding`` and waits for ``resume`` (frozen) inside one of its
    transactions; store B's claim of ``run`` must go on once A's transaction has been idle that
    long, and A's next statement must fail."""
    engine = create_async_engine(asyncpg_url(database_url), pool_size=4)
    own = frozen is None
    if frozen is None:
        frozen = PostgresStore(
            engine, schema="iterflow", queue="iterflow.iterflow", transaction_idle_seconds=1.0
        )
    other = PostgresStore(engine, schema="iterflow", queue="iterflow.iterflow")
    holding, resume = asyncio.Event(), asyncio.Event()
    try:
        await other.create_run(run)
        stuck = asyncio.create_task(freeze(frozen, holding, resume))
        await holding.wait()
        async with asyncio.timeout(60):  # the idle time, then the lock is gone
            claim = await other.claim(run.id, "w2", LEASE, gate)
        assert claim is not None and claim.run.id == run.id
        resume.set()
        with pytest.raises(DatabaseUnavailable):  # its session was ended: nothing it wrote stays
            await stuck
    finally:
        resume.set()
        if own:
            await frozen.close()
        await other.close()
        await engine.dispose()


def _lock_the_run(run: NewRun) -> Freeze:
    """A ``Freeze`` holding ``run``'s row lock in one of the store's SQLAlchemy transactions."""

    async def freeze(store: PostgresStore, holding: asyncio.Event, resume: asyncio.Event) -> None:
        lock = sa.text("SELECT id FROM iterflow.runs WHERE id = :id FOR UPDATE")
        async with store._tx() as conn:
            await conn.execute(lock, {"id": run.id})
            holding.set()
            await resume.wait()  # frozen, the run's row locked
            await conn.execute(lock, {"id": run.id})

    return freeze


async def test_a_frozen_workers_flow_control_transaction_ends_with_its_lease(
    database_url: str,
) -> None:
    """A worker frozen inside a flow-control transaction holds the advisory lock of a flow and
    key, which every other worker's claim of that key waits for. PostgreSQL ends that
    transaction once it has been idle for the store's ``transaction_idle_seconds`` (the
    engine's lease), so the other workers go on; without it they waited until the frozen
    worker resumed."""

    async def freeze(store: PostgresStore, holding: asyncio.Event, resume: asyncio.Event) -> None:
        key = {"ns": store._lock_ns, "name": "f", "key": "k"}
        async with store._conns.transaction() as fetch:
            await fetch(store._q.limit_lock, key)
            holding.set()
            await resume.wait()  # frozen, the flow and key's lock held
            await fetch(store._q.limit_lock, key)

    limits = Limits(concurrency=2, key=lambda i: i)
    flow_gate = Gate(frozenset({"f@1"}), {"f@1": limits})
    await _claim_goes_on(database_url, freeze, new_run(limit_key="k"), flow_gate)


async def test_a_frozen_process_s_own_transaction_ends_with_its_lease(database_url: str) -> None:
    """The same for the store's own SQLAlchemy transactions (a signal's delivery, a cancel, a
    retry, the sweeps): a process frozen inside one, holding a run's row lock, stalled the run's
    worker (its claim, renewal and checkpoints wait for that lock) until it resumed."""
    run = new_run()
    await _claim_goes_on(database_url, _lock_the_run(run), run)


async def test_at_default_settings_a_frozen_transaction_ends_after_the_lease(
    database_url: str,
) -> None:
    """The engine's own store at the default settings: its transactions end once idle for the
    default lease (20 s), so a run's worker waits that long for a frozen process, not for good."""
    async with Engine(database_url) as engine:
        assert engine.settings.lease_seconds == 20.0
        store = engine.store
        assert isinstance(store, PostgresStore)
        run = new_run()
        began = time.monotonic()
        await _claim_goes_on(database_url, _lock_the_run(run), run, frozen=store)
        assert time.monotonic() - began >= 19  # not before the lease: live ones are left alone
