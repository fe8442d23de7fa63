"""A worker frozen right after one of procrastinate's queries (SIGSTOP, a VM stall, a long GC
pause) must hold no lock: its pool runs each query in autocommit (``runtime/host.py``'s
``_pool``). With psycopg's default, the query's transaction stayed open until the frozen
worker's ``COMMIT``; the periodic defer it had just made then blocked the same defer of every
other worker, so no worker deferred the reconciler any more and nothing recovered the frozen
worker's runs (the split-brain e2e test's rare failure, tests/e2e/test_split_brain.py)."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import psycopg_pool
from procrastinate import App, PsycopgConnector

from iterflow import Engine
from iterflow.runtime.host import _pool
from iterflow.store.urls import libpq_url

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
