"""(5) Throughput with concurrency: 200 concurrent 10-step runs, one worker process, then two;
then 50 concurrent runs on one process; set against the raw 8-connection INSERT+COMMIT rate
measured on the same server in the same repetition.

Each worker runs as many attempts at once as the case has runs (``--concurrency 200``: the 200
runs are concurrent in the worker, not queued behind 10 slots; the two processes split them).
Two more cases run beside them in the same repetitions: one process with group commit off
(``Settings.group_commit``: every checkpoint its own commit, as before it existed) and one with
the ``--concurrency`` of the other sections (10).

Each case gives two figures: end to end (the clock runs from the first ``handle.start`` of one
client, so the client's start rate is in it) and **draining a queue**: the same number of runs
started due at one instant (a delayed start) while the warm workers wait, timed on the
database's clock from the first of their first steps to the last finish: the workers' own rate.

The worker processes are started and warmed up first; the clock starts before the first
``handle.start`` (all 200 are started concurrently from one client) and stops when the last run
is ``done``. Each repetition uses a fresh database.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from iterflow import Engine
from iterflow.runtime.engine import FlowHandle
from iterflow.store.schema import LIVE_STATUS_SQL

from . import limits
from .config import Context
from .flows import Steps, register
from .measure import count_rows, wait_for_count
from .report import Section, Target, spread
from .stats import PgCpu
from .steps import wait_worker_ready
from .workers import WorkerProcess

__all__ = ["drain", "run"]

WARMUP = 5


async def _once(
    ctx: Context,
    url: str,
    processes: int,
    pg: PgCpu,
    runs: int | None = None,
    concurrency: int | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    sizes = ctx.sizes
    runs = runs or sizes.concurrent_runs
    workers = [
        WorkerProcess(
            url,
            ctx.log_dir,
            name=f"conc{processes}-{i}",
            concurrency=concurrency or sizes.worker_concurrency,
            settings=settings,
        ).start()
        for i in range(processes)
    ]
    try:
        engine = Engine(url, pool_size=10)
        flows = register(engine)
        async with engine:
            await wait_worker_ready(engine, workers, 60)
            warm = [await flows.steps.start(Steps(n=sizes.concurrent_steps)) for _ in range(WARMUP)]
            for started in warm:
                await flows.steps.result(started.run_id, timeout=60)
            gate = asyncio.Semaphore(10)

            async def start_one() -> None:
                async with gate:
                    await flows.steps.start(Steps(n=sizes.concurrent_steps))

            done_sql = (
                f"SELECT count(*) FROM {engine.settings.db_schema}.runs WHERE status = 'done'"
            )
            cpu_w0 = sum(w.cpu_seconds() for w in workers)
            cpu_c0, pg0 = time.process_time(), pg.seconds()
            t0 = time.perf_counter()
            await asyncio.gather(*(start_one() for _ in range(runs)))
            t_started = time.perf_counter()
            t_done = await wait_for_count(engine, done_sql, runs + WARMUP, timeout=300)
            elapsed = t_done - t0
            cpu_w = sum(w.cpu_seconds() for w in workers) - cpu_w0
            cpu_c, pg1 = time.process_time() - cpu_c0, pg.seconds()
            drained = await drain(
                engine, flows.steps, runs, sizes.concurrent_steps, gate, workers, pg
            )
    finally:
        for w in workers:
            w.stop()
    pg_cpu = None if pg0 is None or pg1 is None else pg1 - pg0
    busy = cpu_w + cpu_c + (pg_cpu or 0.0)
    steps = runs * sizes.concurrent_steps
    return {
        "drain_seconds": drained["seconds"],
        "drain_steps_per_s": steps / drained["seconds"],
        "drain_worker_cpu_ms_per_step": drained["worker_cpu_s"] * 1000 / steps,
        "drain_pg_cpu_ms_per_step": (
            None if drained["pg_cpu_s"] is None else drained["pg_cpu_s"] * 1000 / steps
        ),
        "seconds": elapsed,
        "start_seconds": t_started - t0,
        "runs_per_s": runs / elapsed,
        "steps_per_s": runs * sizes.concurrent_steps / elapsed,
        "worker_cpu_s": cpu_w,
        "client_cpu_s": cpu_c,
        "pg_cpu_s": pg_cpu,
        "cpu_utilisation": busy / (elapsed * (os.cpu_count() or 1)),
    }


async def drain(
    engine: Engine,
    handle: FlowHandle[Steps, Any],
    runs: int,
    steps: int,
    gate: asyncio.Semaphore,
    workers: list[WorkerProcess],
    pg: PgCpu,
) -> dict[str, Any]:
    """The workers' own rate, without the client's start rate in it: ``runs`` runs started
    due at one instant (a delayed start), then the span on the database's clock from the first
    of their first steps to the last finish; and the CPU the workers and PostgreSQL used from
    the last start (before the runs are due) to the last finish."""
    due_in = timedelta(seconds=1.0 + runs / 200)

    async def start_one() -> uuid.UUID:
        async with gate:
            return (await handle.start(Steps(n=steps), delay=due_in)).run_id

    ids = await asyncio.gather(*(start_one() for _ in range(runs)))
    cpu_w0, pg0 = sum(w.cpu_seconds() for w in workers), pg.seconds()
    schema = engine.settings.db_schema
    # The poll must not weigh on the CPU it measures: counting the live runs reads the small
    # index of live runs (an earlier poll, ``id = ANY(:ids)`` every 20 ms, cost PostgreSQL
    # 1.4 ms a poll for 1,000 ids: ~7 % of the PostgreSQL CPU per step it reported).
    live = f"SELECT count(*) FROM {schema}.runs WHERE {LIVE_STATUS_SQL}"
    await wait_for_count(engine, live, 0, timeout=300, interval=0.05, at_most=True)
    cpu_w, pg1 = sum(w.cpu_seconds() for w in workers) - cpu_w0, pg.seconds()
    done = f"SELECT count(*) FROM {schema}.runs WHERE status = 'done' AND id = ANY(:ids)"
    finished = await count_rows(engine, done, {"ids": ids})
    if finished != runs:
        raise RuntimeError(f"drain: {finished} of {runs} runs done (the others failed)")
    span = f"""
        SELECT extract(epoch FROM max(r.finished_at) - min(s.finished_at))
        FROM {schema}.runs AS r JOIN {schema}.steps AS s ON s.run_id = r.id AND s.position = 0
        WHERE r.id = ANY(:ids)"""
    async with engine.sqlalchemy_engine.connect() as conn:
        seconds = (await conn.execute(sa.text(span), {"ids": ids})).scalar()
    assert seconds is not None
    return {
        "seconds": float(seconds),
        "worker_cpu_s": cpu_w,
        "pg_cpu_s": None if pg0 is None or pg1 is None else pg1 - pg0,
    }


async def run(ctx: Context) -> Section:
    """One and two worker processes, and 50 runs on one, ``repeats`` times each, with the raw
    INSERT rate on the same server."""
    sizes = ctx.sizes
    section = Section(
        "concurrency",
        f"5. Throughput: {sizes.concurrent_runs} concurrent {sizes.concurrent_steps}-step runs "
        "(worker --concurrency = the runs, unless named)",
    )
    pg = PgCpu(ctx.server.postmaster_pid())
    n = sizes.concurrent_runs
    few = max(n // 4, 1)  # 50 of the full 200: a shorter queue
    # processes, runs, --concurrency of each process, settings of the workers' engine
    cases: dict[str, tuple[int, int, int, dict[str, Any] | None]] = {
        "1 process": (1, n, n, None),
        "1 process, group commit off": (1, n, n, {"group_commit": False}),
        "2 processes": (2, n, max(n // 2, 1), None),
        f"1 process, {few} runs": (1, few, few, None),
        f"1 process, --concurrency {sizes.worker_concurrency}": (
            1,
            n,
            sizes.worker_concurrency,
            None,
        ),
    }
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    raw: list[float] = []
    for _ in range(sizes.repeats):
        with ctx.server.database("conc_raw") as url:
            rates = await limits.measure(url, sizes.paired_insert_rows, sizes.concurrent_seconds)
            raw.append(rates["raw_asyncpg_8"])
        for name, (processes, runs, concurrency, settings) in cases.items():
            with ctx.server.database("conc") as url:
                results[name].append(
                    await _once(ctx, url, processes, pg, runs, concurrency, settings)
                )
    raw8 = statistics.median(raw)
    section.add("raw asyncpg INSERT+COMMIT/s, 8 connections (same server)", raw8, "/s")
    drained: dict[str, float] = {}
    for name, rs in results.items():
        rate = spread([r["drain_steps_per_s"] for r in rs])
        drained[name] = rate["median"]
        note = f"min-max {rate['min']:,.0f}-{rate['max']:,.0f}" if rate["n"] > 1 else ""
        section.add(f"steps/s draining a queue, {name}", rate["median"], "/s", note=note)
        worker_ms = statistics.median(r["drain_worker_cpu_ms_per_step"] for r in rs)
        pg_ms = [r["drain_pg_cpu_ms_per_step"] for r in rs if r["drain_pg_cpu_ms_per_step"]]
        section.add(f"worker CPU per step draining, {name}", worker_ms, "ms")
        if pg_ms:
            section.add(
                f"PostgreSQL CPU per step draining, {name}",
                statistics.median(pg_ms),
                "ms",
                note=f"{os.cpu_count()} cores: at most "
                f"{(os.cpu_count() or 1) * 1000 / (statistics.median(pg_ms) + worker_ms):,.0f}"
                " steps/s at this CPU per step",
            )
        section.add(
            f"steps/s end to end (starts from one client included), {name}",
            statistics.median(r["steps_per_s"] for r in rs),
            "/s",
            note=f"starting all took {statistics.median(r['start_seconds'] for r in rs):.2f} s",
        )
        section.add(
            f"CPU busy end to end (client+workers+PostgreSQL), {name}",
            statistics.median(r["cpu_utilisation"] for r in rs) * 100,
            "%",
            note="of all cores; near 100% = CPU-bound",
        )
    section.add(
        "speed-up, two processes vs one (draining)",
        drained["2 processes"] / drained["1 process"],
        "x",
    )
    section.add(
        "speed-up, group commit on vs off (draining, 1 process)",
        drained["1 process"] / drained["1 process, group commit off"],
        "x",
    )
    for name in ("1 process", f"1 process, {few} runs"):
        section.add(
            f"steps/s / raw 8-connection INSERT+COMMIT/s, {name}",
            drained[name] / raw8,
            "",
            target=Target(">=", 0.5, ">= 0.5"),
        )
    section.raw = {"samples": results, "raw_asyncpg_8": raw}
    return section
