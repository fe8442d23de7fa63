"""The contract suite's only fixture: every test runs once per store implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from iterflow.store.base import Store
from iterflow.store.memory import MemoryStore
from iterflow.store.postgres import PostgresStore
from iterflow.store.urls import asyncpg_url


@pytest.fixture(params=["postgres", "memory"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A fresh store: PostgreSQL on a migrated per-test database, or in memory."""
    if request.param == "memory":
        yield MemoryStore()
        return
    url = request.getfixturevalue("database_url")
    engine = create_async_engine(asyncpg_url(url), pool_size=2)
    pg = PostgresStore(engine, schema="iterflow", queue="iterflow.iterflow")
    try:
        yield pg
    finally:
        await pg.close()
        await engine.dispose()
