"""(11) Short-flow latency next to DBOS Transact, on the same PostgreSQL in the same run.

An empty (0-step) flow, start -> result, wall clock around the two calls, in one process:

* iterflow, the start claimed in its commit: the process hosts a worker (``engine.listen``)
  with a free slot, so the run is written claimed and attempted at once (``runtime/eager.py``);
* iterflow through the queue: started from a second engine of the same process that hosts no
  worker, so the run goes start commit -> procrastinate fetch -> claim -> finish -> NOTIFY;
* DBOS Transact, ``DBOS.start_workflow_async`` -> ``handle.get_result()`` (its system database
  in the same PostgreSQL database, schema ``dbos``), when the optional ``dbos`` package is
  installed (``pip install 'iterflow[bench]'``); otherwise the section says so and skips it.

The three are sampled round-robin so a change of machine load affects them alike.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from pydantic import BaseModel

from iterflow import Engine, FlowContext
from iterflow.store.urls import libpq_url

from .config import Context
from .flows import Steps, register
from .report import Section, Target, percentiles

__all__ = ["run"]


class Empty(BaseModel):
    """No input."""


Sample = Callable[[], Awaitable[None]]


async def _iterflow(url: str, stack: list[Engine]) -> tuple[Sample, Sample]:
    """The two iterflow samplers (claimed at start; through the queue)."""
    engine, client = Engine(url, pool_size=10), Engine(url, pool_size=10)
    for eng in (engine, client):
        register(eng)  # bench.steps for the throughput rows

        @eng.flow("peers-empty", input=Empty, output=int)
        async def empty(ctx: FlowContext, _: Empty) -> int:
            return 0

        await eng.open()
        stack.append(eng)
    await engine.listen(concurrency=10)

    async def claimed() -> None:
        started = await engine.start("peers-empty", Empty())
        await engine.result(started.run_id, timeout=30)

    async def queued() -> None:
        started = await client.start("peers-empty", Empty())
        await client.result(started.run_id, timeout=30)

    return claimed, queued


def _dbos(url: str) -> tuple[Sample, Callable[[], None]]:  # pragma: no cover - optional peer
    """The DBOS sampler and its teardown."""
    # an optional package (the ``bench`` extra): imported untyped, so the type check needs it not
    DBOS: Any = importlib.import_module("dbos").DBOS

    DBOS(config={"name": "iterflow-bench", "system_database_url": url, "log_level": "WARNING"})

    async def empty() -> int:
        return 0

    dbos_empty = DBOS.workflow()(empty)
    DBOS.launch()

    async def sample() -> None:
        handle: Any = await DBOS.start_workflow_async(dbos_empty)
        await handle.get_result()

    def teardown() -> None:
        DBOS.destroy(destroy_registry=True)
        # DBOS installed its own default executor on this loop and shut it down
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor())

    return sample, teardown


async def _xid(url: str) -> int:
    """The next transaction id: its advance counts write transactions (bench/stats.py)."""

    def read() -> int:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            row = conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
            return int(row.fetchone()[0])  # type: ignore[index]

    return await asyncio.to_thread(read)


async def _throughput(section: Section, url: str, engines: list[Engine], ctx: Context) -> None:
    """Write transactions per 10-step run and steps/s of concurrent 10-step runs, started by
    the process hosting the worker (claimed at start while a slot is free) and by the client
    engine (through the queue to the same in-process worker)."""
    runs = 40 if ctx.quick else 200
    engine, client = engines
    sequential = 10 if ctx.quick else 50
    for label, eng in (("claimed at start", engine), ("through the queue", client)):
        idle0 = await _xid(url)
        t0 = time.perf_counter()
        await asyncio.sleep(0.5)
        idle = (await _xid(url) - idle0) / (time.perf_counter() - t0)
        x0, t0 = await _xid(url), time.perf_counter()
        for _ in range(sequential):
            started = await eng.start("bench.steps", Steps(n=10))
            await eng.result(started.run_id, timeout=60)
        took = time.perf_counter() - t0
        commits = (await _xid(url) - x0 - idle * took) / sequential
        section.add(
            f"write transactions per 10-step run, {label}",
            commits,
            "",
            Target("<=", 14, "<= 14") if label == "claimed at start" else None,
            note=f"idle baseline {idle:.1f}/s subtracted",
        )
        gate = asyncio.Semaphore(10)  # as the concurrency section starts them

        async def one(eng: Engine = eng, gate: asyncio.Semaphore = gate) -> None:
            async with gate:
                started = await eng.start("bench.steps", Steps(n=10))
            await eng.result(started.run_id, timeout=120)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(runs)))
        section.add(
            f"steps/s, {runs} concurrent 10-step runs, {label}",
            runs * 10 / (time.perf_counter() - t0),
            "/s",
            note="one process: client and worker (--concurrency 10)",
        )


async def run(ctx: Context) -> Section:
    """Measure start -> result of an empty flow, iterflow and DBOS side by side."""
    section = Section("peers", "11. Short flows next to DBOS Transact (same PostgreSQL, same run)")
    n = 30 if ctx.quick else 200
    have_dbos = importlib.util.find_spec("dbos") is not None
    with ctx.server.database("peers") as url:
        engines: list[Engine] = []
        teardown: Callable[[], None] | None = None
        try:
            claimed, queued = await _iterflow(url, engines)
            samplers: dict[str, Sample] = {"claimed": claimed, "queued": queued}
            if have_dbos:
                samplers["dbos"], teardown = _dbos(url)
            for sample in samplers.values():  # warm up: connections, prepared statements
                for _ in range(10):
                    await sample()
            times: dict[str, list[float]] = {k: [] for k in samplers}
            for _ in range(n):
                for key, sample in samplers.items():
                    t0 = time.perf_counter()
                    await sample()
                    times[key].append((time.perf_counter() - t0) * 1000)
            if teardown is not None:
                teardown()
                teardown = None
            await _throughput(section, url, engines, ctx)
        finally:
            if teardown is not None:
                teardown()
            for eng in reversed(engines):
                await eng.close()
    p = {k: percentiles(v) for k, v in times.items()}
    dbos_p50 = p["dbos"]["p50"] if "dbos" in p else None
    target = None if dbos_p50 is None else Target("<=", dbos_p50, "<= DBOS p50")
    labels = {
        "claimed": "iterflow, claimed in its start commit",
        "queued": "iterflow, through the queue (no worker in the process)",
        "dbos": "DBOS Transact 'start_workflow_async' -> 'get_result'",
    }
    for key, label in labels.items():
        if key not in p:
            section.add(f"{label}: not measured", None, note="the dbos package is not installed")
            continue
        section.add(f"{label} p50", p[key]["p50"], "ms", target if key == "claimed" else None)
        section.add(f"{label} p95", p[key]["p95"], "ms", note=f"n={p[key]['n']}")
    return section
