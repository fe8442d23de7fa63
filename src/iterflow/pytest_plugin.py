"""iterflow's pytest plugin (entry point ``pytest11``: loaded when iterflow is installed).

Fixtures, each an entered :class:`iterflow.testing.TestEngine` (guide: ``docs/testing.md``):

* ``iterflow_engine``: in memory, on a fake clock (no database; ``advance`` skips time).
* ``iterflow_pg_engine``: a real PostgreSQL engine with an in-process worker, on a fresh,
  migrated schema dropped after the test. The server is ``$ITERFLOW_DATABASE_URL`` or
  ``$DATABASE_URL`` when set (the role must be allowed to create schemas), else an embedded
  PostgreSQL started once per session (the ``iterflow_database_url`` fixture; override it to
  use your own).
* ``iterflow_any_engine``: both of them in turn (a parametrized fixture), to run one test on
  the in-memory store and on PostgreSQL.

Async fixtures need pytest-asyncio (``asyncio_mode = "auto"`` or ``@pytest.mark.asyncio``). The
plugin imports iterflow's engine only when a fixture is used.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from iterflow.testing import TestEngine

try:  # an optional dependency of the tests that use async fixtures
    from pytest_asyncio import fixture as _async_fixture
except ImportError:  # pragma: no cover - plain pytest reports async fixtures it cannot run
    _async_fixture = pytest.fixture  # type: ignore[assignment]

__all__ = ["iterflow_any_engine", "iterflow_database_url", "iterflow_engine", "iterflow_pg_engine"]

#: Settings of the PostgreSQL test engine: short leases so ``t.recover()`` after an injected
#: crash takes about two seconds, and prompt timers.
PG_TEST_SETTINGS: dict[str, Any] = {
    "pool_size": 4,
    "lease_seconds": 2.0,
    "worker_poll_interval": 0.1,
}


@pytest.fixture(scope="session")
def iterflow_database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The PostgreSQL server of ``iterflow_pg_engine``: ``$ITERFLOW_DATABASE_URL`` or
    ``$DATABASE_URL``, else an embedded server started once for the session."""
    from iterflow.store.urls import resolve_database_url

    url = resolve_database_url(None)
    if url is not None:
        yield url
        return
    from iterflow.store.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path_factory.mktemp("iterflow-pg") / "data")
    yield server.start()
    server.stop()


@_async_fixture
async def iterflow_engine() -> AsyncIterator[TestEngine]:
    """An in-memory :class:`~iterflow.testing.TestEngine` on a fake clock."""
    from iterflow.testing import TestEngine

    async with TestEngine() as engine:
        yield engine


@_async_fixture
async def iterflow_pg_engine(iterflow_database_url: str) -> AsyncIterator[TestEngine]:
    """A :class:`~iterflow.testing.TestEngine` on PostgreSQL, in a fresh schema."""
    from iterflow.runtime.engine import Engine
    from iterflow.store.migrate import run_migrations
    from iterflow.testing import TestEngine

    schema = f"iterflow_test_{uuid.uuid4().hex[:12]}"
    await asyncio.to_thread(run_migrations, iterflow_database_url, schema=schema)
    try:
        engine = Engine(iterflow_database_url, db_schema=schema, **PG_TEST_SETTINGS)
        async with TestEngine(engine=engine) as test_engine:
            yield test_engine
    finally:
        await asyncio.to_thread(_drop_schema, iterflow_database_url, schema)


@pytest.fixture(params=["memory", "postgres"])
def iterflow_any_engine(request: pytest.FixtureRequest) -> TestEngine:
    """``iterflow_engine``, then ``iterflow_pg_engine``: the same test on both stores."""
    name = "iterflow_engine" if request.param == "memory" else "iterflow_pg_engine"
    engine: TestEngine = request.getfixturevalue(name)
    return engine


def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    from iterflow.store.urls import libpq_url

    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
