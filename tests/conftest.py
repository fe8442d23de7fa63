"""Test fixtures: a real PostgreSQL per session, a migrated template, a fresh clone per test.

``DATABASE_URL`` (an admin URL on a real server) replaces the embedded server. Each test gets
its own database created with ``CREATE DATABASE ... TEMPLATE``, so tests are isolated and fast.
``./scripts/test`` runs the suite on a few pytest-xdist workers, each with its own embedded
server (or its own template on ``DATABASE_URL``'s server).
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from iterflow.store.urls import libpq_url

#: The migrated template database; one per pytest-xdist worker (on a shared ``DATABASE_URL``
#: server, workers must not drop each other's template).
TEMPLATE = f"iterflow_template_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"

#: A test still running this long before its timeout (pytest-timeout) prints its asyncio tasks.
HANG_DUMP_BEFORE_TIMEOUT = 20.0


def _dump_tasks() -> None:
    """Print every unfinished asyncio task with the chain of coroutines it is awaiting:
    pytest-timeout shows the threads, and a hung test's main thread is just its event loop
    waiting in ``select``."""
    tasks = [t for t in list(getattr(asyncio.tasks, "_all_tasks", ())) if not t.done()]
    lines = [f"--- {len(tasks)} asyncio task(s) still running ---"]
    for task in tasks:
        lines.append(f"task {task.get_name()}:")
        awaited: object = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is not None:
                code = frame.f_code
                lines.append(f"    {code.co_filename}:{frame.f_lineno} in {code.co_name}")
            else:
                lines.append(f"    awaiting {awaited!r}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
    print("\n".join(lines), file=sys.stderr, flush=True)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Format a failure with the garbage collector off, after a collection.

    CPython 3.11.7 keeps the AST converter's recursion depth in interpreter-wide state: a
    finalizer run by the collector in the middle of pytest's ``ast.parse`` of a traceback's
    source (an asyncio task or future logging its unretrieved exception, whose traceback
    formatting parses too) resets it, and the report fails with ``SystemError: AST constructor
    recursion depth mismatch``, ending the session as an INTERNALERROR that hides the failure.
    """
    if call.excinfo is None:
        yield
        return
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture(autouse=True)
def _hang_dump(request: pytest.FixtureRequest) -> Iterator[None]:
    """Diagnose a hang: the asyncio tasks of a test still running shortly before its timeout."""
    marker = request.node.get_closest_marker("timeout")
    timeout = float(marker.args[0]) if marker else float(request.config.getini("timeout"))
    timer = threading.Timer(max(1.0, timeout - HANG_DUMP_BEFORE_TIMEOUT), _dump_tasks)
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()


def _admin_exec(url: str, *statements: str) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def with_database(url: str, name: str) -> str:
    """``url`` pointed at database ``name``."""
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Admin URL of the PostgreSQL server used by this session."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    from iterflow.store.embedded import EmbeddedPostgres

    data_dir: Path = tmp_path_factory.mktemp("pg") / "data"
    server = EmbeddedPostgres(data_dir)
    url = server.start()
    # Durability is not under test here; skipping fsync keeps CREATE DATABASE and commits fast.
    _admin_exec(url, "ALTER SYSTEM SET fsync = off", "ALTER SYSTEM SET max_connections = 300")
    _admin_exec(url, "SELECT pg_reload_conf()")
    yield url
    server.stop()


@pytest.fixture(scope="session")
def template_url(server_url: str) -> str:
    """A database migrated to head, used as the template of every per-test database."""
    _admin_exec(
        server_url,
        f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)",
        f"CREATE DATABASE {TEMPLATE}",
    )
    from iterflow.store.migrate import run_migrations

    url = with_database(server_url, TEMPLATE)
    run_migrations(url)
    return url


@pytest.fixture(scope="session")
def iterflow_database_url(server_url: str) -> str:
    """The test kit's PostgreSQL (``iterflow_pg_engine``, iterflow's pytest plugin) is this
    session's server: each of its engines gets a fresh, migrated schema there."""
    return server_url


@pytest.fixture
def database_url(server_url: str, template_url: str) -> Iterator[str]:
    """A fresh, migrated database for one test (dropped afterwards)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    _admin_exec(server_url, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    yield with_database(server_url, name)
    _admin_exec(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    """A fresh database with nothing installed (for migration tests)."""
    name = f"e_{uuid.uuid4().hex[:16]}"
    _admin_exec(server_url, f"CREATE DATABASE {name}")
    yield with_database(server_url, name)
    _admin_exec(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[object]:
    """An opened ``Engine`` on the per-test database (no worker started)."""
    from iterflow import Engine

    async with Engine(database_url, pool_size=4) as eng:
        yield eng
