"""Run a workload between two settled statistics snapshots, timing it and its CPU."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from iterflow import Engine

from .stats import DbDelta, PgCpu, snapshot

__all__ = ["Measured", "count_rows", "measured", "wait_for_count"]


@dataclass
class Measured:
    """A workload's wall time, CPU, database delta and whatever it returned."""

    seconds: float
    client_cpu: float
    pg_cpu: float | None
    delta: DbDelta
    extra: dict[str, Any] = field(default_factory=dict)


async def measured(
    database_url: str,
    maintenance_url: str,
    pg: PgCpu,
    workload: Callable[[dict[str, Any]], Awaitable[float]],
) -> Measured:
    """Snapshot, run ``workload(extra)`` (it returns its own timed seconds), snapshot again.

    The workload must close every connection it opened (engines, workers) before returning, so
    that its backends flush their statistics.
    """
    # PostgreSQL CPU is read outside the snapshots: a backend's CPU time moves to the
    # postmaster's children times only once it has exited and been reaped, which the settled
    # "after" snapshot guarantees for the workload's backends.
    pg0 = pg.seconds()
    before = await asyncio.to_thread(snapshot, database_url, maintenance_url)
    extra: dict[str, Any] = {}
    cpu0 = time.process_time()
    seconds = await workload(extra)
    cpu1 = time.process_time()
    after = await asyncio.to_thread(snapshot, database_url, maintenance_url)
    pg1 = pg.seconds()
    pg_cpu = None if pg0 is None or pg1 is None else pg1 - pg0
    return Measured(seconds, cpu1 - cpu0, pg_cpu, after - before, extra)


async def count_rows(engine: Engine, sql: str, params: dict[str, Any] | None = None) -> int:
    """``SELECT count(*) ...`` through the engine's pool."""
    async with engine.sqlalchemy_engine.connect() as conn:
        value = (await conn.execute(sa.text(sql), params or {})).scalar()
        await conn.rollback()
    return int(value or 0)


async def wait_for_count(
    engine: Engine,
    sql: str,
    expected: int,
    *,
    timeout: float,
    interval: float = 0.02,
    params: dict[str, Any] | None = None,
    at_most: bool = False,
) -> float:
    """Poll ``sql`` (a count) until it reaches ``expected`` (falls to it, with ``at_most``);
    return ``perf_counter()`` then."""
    deadline = time.perf_counter() + timeout
    while True:
        count = await count_rows(engine, sql, params)
        if (count <= expected) if at_most else (count >= expected):
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {expected} from: {sql}")
        await asyncio.sleep(interval)
