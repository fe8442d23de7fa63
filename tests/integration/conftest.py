"""Fixtures shared by the integration tests (the database ones are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from iterflow import Engine


@pytest.fixture(params=["postgres", "memory"])
async def eng(request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    """An open engine on PostgreSQL (per-test database) or on the in-memory store."""
    if request.param == "memory":
        async with Engine.in_memory() as memory:
            yield memory
        return
    url = request.getfixturevalue("database_url")
    async with Engine(url, pool_size=4) as pg:
        await pg.listen(concurrency=2)
        yield pg


@pytest.fixture(params=["postgres", "memory"])
def fresh(request: pytest.FixtureRequest) -> Engine:
    """An engine not yet open, on PostgreSQL (per-test database) or in memory: register the
    flows, then open it with :func:`tests.integration.flows.running` (a worker serves the flows
    registered before it starts)."""
    if request.param == "memory":
        return Engine.in_memory()
    return Engine(request.getfixturevalue("database_url"), pool_size=4)
