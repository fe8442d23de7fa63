"""The store's idle hot-path connections: reused between statements, dropped together on failure.

The store keeps a few pooled connections checked out between hot-path statements. When the
server kills them (a restart, ``pg_terminate_backend``), the statement that meets a dead one fails
with ``DATABASE_UNAVAILABLE`` like any statement on a dead pooled connection, and every idle hot
connection is dropped with it, so the next statement opens a fresh one instead of meeting the
next dead connection.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import cast

import pytest
import sqlalchemy as sa

from iterflow import Engine
from iterflow.core.errors import DatabaseUnavailable, RunNotFound
from iterflow.core.models import NewRun
from iterflow.store.postgres import HOT_IDLE, PostgresStore
from tests.integration.flows import sql


def _hot_pids(store: PostgresStore) -> list[int]:
    return [raw.driver_connection.get_server_pid() for raw in store._hot]  # type: ignore[union-attr]


async def test_idle_hot_connections_are_reused_and_dropped_together_when_killed(
    database_url: str,
) -> None:
    async with Engine(database_url) as engine:
        store = cast(PostgresStore, engine.store)
        run = NewRun(id=uuid.uuid4(), name="f", version=1, input={})
        await store.create_run(run)
        await asyncio.gather(*(store.get_run(run.id) for _ in range(3)))  # three at once
        pids = _hot_pids(store)
        assert len(pids) == 3
        for _ in range(5):  # sequential statements reuse one of them, never a fourth
            await store.get_run(run.id)
        assert sorted(_hot_pids(store)) == sorted(pids)

        for pid in pids:
            sql(database_url, "SELECT pg_terminate_backend(%s)", pid)
        with pytest.raises(DatabaseUnavailable):
            await store.get_run(run.id)
        assert store._hot == []  # the other killed connections went with it
        again = await store.get_run(run.id)
        assert again is not None and again.id == run.id
        assert set(_hot_pids(store)).isdisjoint(pids)


async def test_idle_hot_connections_never_starve_other_statements_of_a_small_pool(
    database_url: str,
) -> None:
    # pool_size=1: the pool's own capacity is two connections; the idle hot ones come on top.
    async with Engine(database_url, pool_size=1) as engine:
        store = engine.store
        runs = [NewRun(id=uuid.uuid4(), name="f", version=1, input={}) for _ in range(5)]
        for run in runs:
            await store.create_run(run)

        async def burst() -> None:
            await asyncio.gather(
                *(store.get_run(run.id) for run in runs * 2),  # hot path, ten at once
                *(
                    store.deliver_signal(run.id, "go", {}, None, max_signals=100) for run in runs
                ),  # transactions
            )

        await asyncio.wait_for(burst(), timeout=10)  # the pool's own timeout is 30 s
        assert len(cast(PostgresStore, store)._hot) <= HOT_IDLE
        await asyncio.wait_for(burst(), timeout=10)  # again, with idle hot connections held


async def test_a_hot_transaction_commits_or_rolls_back_and_keeps_its_connection(
    database_url: str,
) -> None:
    """``HotConnections.transaction`` (the limited claim's): several statements, one commit; an
    error of the block's own rolls them back and the connection stays hot."""
    async with Engine(database_url) as engine:
        store = cast(PostgresStore, engine.store)
        rename = sa.text(f"UPDATE {store.schema}.runs SET name = :name WHERE id = :id RETURNING id")
        run = NewRun(id=uuid.uuid4(), name="f", version=1, input={})
        await store.create_run(run)
        async with store._conns.transaction() as fetch:
            assert await fetch(rename, {"name": "g", "id": run.id}) is not None
            assert await fetch(rename, {"name": "h", "id": run.id}) is not None
        pids = _hot_pids(store)
        with pytest.raises(RunNotFound):
            async with store._conns.transaction() as fetch:
                await fetch(rename, {"name": "lost", "id": run.id})
                raise RunNotFound("the block's own error")
        got = await store.get_run(run.id)
        assert got is not None and got.name == "h"
        assert _hot_pids(store) == pids
