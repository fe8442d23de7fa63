"""(1) The limit: single-row INSERT + COMMIT per second on the same database and settings.

Measured two ways, on a scratch table in a fresh database:

* **raw asyncpg**: one connection, ``INSERT`` in autocommit (each statement is its own
  transaction), the statement prepared once by asyncpg's cache;
* **SQLAlchemy Core on asyncpg**, for comparison, as an ordinary SQLAlchemy application runs
  it: an ``AsyncEngine`` configured like the engine's (same pool size, no pre-ping),
  ``AUTOCOMMIT`` execution option, one pool checkout per statement, a ``sqlalchemy.text``
  statement. (The store's hot path no longer goes through SQLAlchemy's execution layer or pool
  checkout, see ``PostgresStore._one``; the raw asyncpg rate is the limit it is judged by.)

Both sequentially (one row at a time) and with 8 concurrent connections.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from iterflow.core.settings import Settings
from iterflow.store.postgres import HOT_IDLE
from iterflow.store.urls import asyncpg_url, libpq_url

from .config import Context
from .report import Section, spread

__all__ = ["INSERT_SQL", "make_sa_engine", "measure", "run"]

SCRATCH_DDL = """
CREATE TABLE IF NOT EXISTS bench_scratch (
    id bigserial PRIMARY KEY,
    run_id uuid NOT NULL,
    payload jsonb,
    at timestamptz NOT NULL DEFAULT now()
)"""
INSERT_SQL = "INSERT INTO bench_scratch (run_id, payload) VALUES ($1, CAST($2 AS jsonb))"
_SA_INSERT = sa.text("INSERT INTO bench_scratch (run_id, payload) VALUES (:r, CAST(:p AS jsonb))")
_PAYLOAD = '{"ok":true}'


def make_sa_engine(url: str, settings: Settings | None = None) -> AsyncEngine:
    """An ``AsyncEngine`` configured exactly like ``Engine.open`` configures its own."""
    s = settings or Settings()
    return create_async_engine(
        asyncpg_url(url),
        pool_size=s.pool_size,
        max_overflow=s.pool_size + HOT_IDLE,
        pool_pre_ping=False,
    )


async def _sequential(op: Callable[[], Awaitable[object]], rows: int) -> float:
    for _ in range(min(50, rows)):  # warm-up: connections, prepared statements
        await op()
    start = time.perf_counter()
    for _ in range(rows):
        await op()
    return rows / (time.perf_counter() - start)


async def _concurrent(
    ops: list[Callable[[], Awaitable[object]]], seconds: float
) -> tuple[float, int]:
    for op in ops:
        await op()
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop(op: Callable[[], Awaitable[object]]) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await op()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(loop(op) for op in ops))
    return done / (time.perf_counter() - start), done


async def measure(
    url: str, rows: int, seconds: float, *, concurrent: bool = True
) -> dict[str, float]:
    """One measurement of the rates on the database at ``url`` (sequential ones only unless
    ``concurrent``)."""
    conns = [await asyncpg.connect(libpq_url(url)) for _ in range(8 if concurrent else 1)]
    engine = make_sa_engine(url)
    auto = engine.execution_options(isolation_level="AUTOCOMMIT")
    try:
        await conns[0].execute(SCRATCH_DDL)

        def raw_op(conn: asyncpg.Connection) -> Callable[[], Awaitable[object]]:
            return lambda: conn.execute(INSERT_SQL, uuid.uuid4(), _PAYLOAD)

        async def sa_op() -> None:
            async with auto.connect() as conn:
                await conn.execute(_SA_INSERT, {"r": uuid.uuid4(), "p": _PAYLOAD})

        out = {
            "raw_asyncpg_seq": await _sequential(raw_op(conns[0]), rows),
            "sqlalchemy_seq": await _sequential(sa_op, rows),
        }
        if concurrent:
            out["raw_asyncpg_8"], _ = await _concurrent([raw_op(c) for c in conns], seconds)
            out["sqlalchemy_8"], _ = await _concurrent([sa_op] * 8, seconds)
        return out
    finally:
        for conn in conns:
            await conn.close()
        await engine.dispose()


async def run(ctx: Context) -> Section:
    """Measure the INSERT + COMMIT limits ``repeats`` times; report medians."""
    section = Section("limits", "1. The limit: single-row INSERT+COMMIT per second")
    samples: dict[str, list[float]] = {}
    with ctx.server.database("limits") as url:
        for _ in range(ctx.sizes.repeats):
            for key, value in (
                await measure(url, ctx.sizes.insert_rows, ctx.sizes.concurrent_seconds)
            ).items():
                samples.setdefault(key, []).append(value)
    stats = {key: spread(values) for key, values in samples.items()}
    section.raw = {"samples": samples, "spread": stats}
    labels = {
        "raw_asyncpg_seq": "INSERT+COMMIT/s, raw asyncpg, 1 connection",
        "sqlalchemy_seq": "INSERT+COMMIT/s, SQLAlchemy Core+asyncpg, 1 connection",
        "raw_asyncpg_8": "INSERT+COMMIT/s, raw asyncpg, 8 connections",
        "sqlalchemy_8": "INSERT+COMMIT/s, SQLAlchemy+asyncpg, 8 connections",
    }
    for key, label in labels.items():
        s = stats[key]
        note = f"min-max {s['min']:,.0f}-{s['max']:,.0f} over {s['n']}" if s["n"] > 1 else ""
        section.add(label, s["median"], "/s", note=note)
    raw, sa_rate = stats["raw_asyncpg_seq"]["median"], stats["sqlalchemy_seq"]["median"]
    section.add(
        "per-statement cost SQLAlchemy adds over raw asyncpg",
        (1 / sa_rate - 1 / raw) * 1000,
        "ms",
        note="same INSERT+COMMIT; pool checkout, greenlet, result wrapping",
    )
    return section
