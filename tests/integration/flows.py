"""Shared flow models and DB inspection helpers for integration tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from pydantic import BaseModel

from iterflow import Engine, RunDetail
from iterflow.store.urls import libpq_url

TABLES = (
    "iterflow.runs",
    "iterflow.steps",
    "iterflow.signals",
    "iterflow.timers",
    "iterflow.events",
    "procrastinate_jobs",
    "procrastinate_events",
    "procrastinate_periodic_defers",
    "procrastinate_workers",
)


class OrderIn(BaseModel):
    order_id: str
    amount: int


class Approval(BaseModel):
    approved: bool
    by: str = "ops"


class Receipt(BaseModel):
    order_id: str
    charged: int
    approved_by: str


def sql(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one query on the test database (autocommit) and return all rows."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def jobs_of(url: str, run_id: uuid.UUID) -> list[tuple[int, str]]:
    """The run's wake-up jobs in procrastinate's table, ``(id, status)`` oldest first (an
    ended one is deleted)."""
    query = "SELECT id, status::text FROM procrastinate_jobs WHERE lock = %s ORDER BY id"
    return [(int(job_id), str(status)) for job_id, status in sql(url, query, str(run_id))]


def all_tables(url: str) -> list[str]:
    """Every table of the ``iterflow`` schema (``iterflow.runs``, ...) and every procrastinate
    table (``procrastinate_jobs``, ``procrastinate_events``, ...), as queryable names."""
    rows = sql(
        url,
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_type = 'BASE TABLE' AND (table_schema = 'iterflow' "
        "OR (starts_with(table_name, 'procrastinate_') AND table_schema = current_schema())) "
        "ORDER BY 1, 2",
    )
    return [f"{schema}.{name}" if schema == "iterflow" else name for schema, name in rows]


def counts(url: str) -> dict[str, int]:
    """Row counts of every iterflow table and every procrastinate table (``TABLES`` at least:
    a table missing from the database fails loudly rather than being skipped)."""
    names = sorted({*TABLES, *all_tables(url)})
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        query = " UNION ALL ".join(
            f"SELECT {i}, count(*) FROM {name}" for i, name in enumerate(names)
        )
        rows = conn.execute(query).fetchall()  # type: ignore[arg-type]
    return {names[i]: n for i, n in rows}


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 15.0, what: str = "condition"
) -> None:
    """Poll ``check`` with a deadline (never a bare sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def settle(engine: Engine, run_id: uuid.UUID) -> RunDetail:
    """Drive the run to a terminal state (in memory: drain; PostgreSQL: the worker does it)."""
    if engine.database_url == "memory://":
        await engine.drain()

    async def terminal() -> bool:
        return (await engine.status(run_id)).run.is_terminal

    await eventually(terminal, timeout=30, what=f"run {run_id} to end")
    return await engine.status(run_id)


@asynccontextmanager
async def running(engine: Engine) -> AsyncIterator[Engine]:
    """Open ``engine`` with an in-process worker (in memory: ``settle`` drains instead)."""
    async with engine:
        if engine.database_url != "memory://":
            await engine.listen(concurrency=2)
        yield engine
