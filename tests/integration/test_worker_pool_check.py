"""procrastinate's pool in the worker (``runtime/host.py``): its checkout check (no round trip
for a healthy idle connection, the full check, which raises so that the pool replaces the
connection, for one the server closed), and its close when the engine stops while it opens."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from iterflow import Engine
from iterflow.runtime.host import _check_idle, _readable
from iterflow.store.urls import libpq_url
from tests.integration.flows import eventually, sql


async def test_a_healthy_connection_is_not_queried_a_closed_one_fails_the_check(
    database_url: str,
) -> None:
    conn = await psycopg.AsyncConnection.connect(libpq_url(database_url), autocommit=True)
    try:
        await conn.execute("SELECT 'marker'")
        await _check_idle(conn)
        pid = conn.info.backend_pid
        last = sql(database_url, "SELECT query FROM pg_stat_activity WHERE pid = %s", pid)
        assert last == [("SELECT 'marker'",)]  # the check sent nothing
        sql(database_url, "SELECT pg_terminate_backend(%s)", pid)

        async def readable() -> bool:
            return _readable(conn.pgconn.socket)

        await eventually(readable, what="the terminated connection's socket to be readable")
        with pytest.raises(psycopg.OperationalError):
            await _check_idle(conn)
    finally:
        await conn.close()


async def test_closing_an_engine_while_its_workers_pool_connects_leaves_no_task_behind(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine closed while its worker's procrastinate pool is still opening closes that pool:
    no psycopg_pool task is left. procrastinate leaves a pool it opens itself behind when the
    opening is interrupted; its tasks, still connecting, swallow the cancellation at the event
    loop's shutdown, which then waited for them for good (a dashboard test hung that way)."""
    import psycopg_pool

    connecting = asyncio.Event()
    original = psycopg_pool.AsyncConnectionPool._connect

    async def slow_connect(self: Any, timeout: float | None = None) -> Any:
        connecting.set()
        await asyncio.sleep(0.5)  # a slow server: the engine closes meanwhile
        return await original(self, timeout)

    monkeypatch.setattr(psycopg_pool.AsyncConnectionPool, "_connect", slow_connect)
    engine = Engine(database_url, pool_size=2)
    async with engine:
        await engine.listen(concurrency=1)
        async with asyncio.timeout(30):
            await connecting.wait()
    left: list[asyncio.Task[Any]] = []
    async with asyncio.timeout(10):  # the pool's close waits for its connecting task
        while left := [t for t in asyncio.all_tasks() if t.get_name().startswith("pool-")]:
            await asyncio.sleep(0.05)  # polling the loop's tasks, with a deadline
    assert left == []
