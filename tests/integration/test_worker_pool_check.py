"""The checkout check of procrastinate's pool in the worker (``runtime/host.py``): no round
trip for a healthy idle connection, the full check (which raises, so the pool replaces the
connection) for one the server closed."""

from __future__ import annotations

import psycopg
import pytest

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
