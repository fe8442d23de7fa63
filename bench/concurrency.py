"""(5) Throughput with concurrency: 200 concurrent 10-step runs, one worker process, then two;
then 50 concurrent runs on one process.

The worker processes are started and warmed up first; the clock starts before the first
``handle.start`` (all 200 are started concurrently from one client) and stops when the last run
is ``done``. Each repetition uses a fresh database.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

from iterflow import Engine

from .config import Context
from .flows import Steps, register
from .measure import wait_for_count
from .report import Section, spread
from .stats import PgCpu
from .steps import wait_worker_ready
from .workers import WorkerProcess

__all__ = ["run"]

WARMUP = 5


async def _once(
    ctx: Context, url: str, processes: int, pg: PgCpu, runs: int | None = None
) -> dict[str, Any]:
    sizes = ctx.sizes
    runs = runs or sizes.concurrent_runs
    workers = [
        WorkerProcess(
            url, ctx.log_dir, name=f"conc{processes}-{i}", concurrency=sizes.worker_concurrency
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
    finally:
        for w in workers:
            w.stop()
    pg_cpu = None if pg0 is None or pg1 is None else pg1 - pg0
    busy = cpu_w + cpu_c + (pg_cpu or 0.0)
    return {
        "seconds": elapsed,
        "start_seconds": t_started - t0,
        "runs_per_s": runs / elapsed,
        "steps_per_s": runs * sizes.concurrent_steps / elapsed,
        "worker_cpu_s": cpu_w,
        "client_cpu_s": cpu_c,
        "pg_cpu_s": pg_cpu,
        "cpu_utilisation": busy / (elapsed * (os.cpu_count() or 1)),
    }


async def run(ctx: Context) -> Section:
    """One and two worker processes, ``repeats`` times each."""
    sizes = ctx.sizes
    section = Section(
        "concurrency",
        f"5. Throughput: {sizes.concurrent_runs} concurrent {sizes.concurrent_steps}-step runs "
        f"(worker --concurrency {sizes.worker_concurrency})",
    )
    pg = PgCpu(ctx.server.postmaster_pid())
    results: dict[int, list[dict[str, Any]]] = {}
    for processes in (1, 2):
        for _ in range(sizes.repeats):
            with ctx.server.database(f"conc{processes}") as url:
                results.setdefault(processes, []).append(await _once(ctx, url, processes, pg))
    for processes, rs in results.items():
        steps = spread([r["steps_per_s"] for r in rs])
        runs = spread([r["runs_per_s"] for r in rs])
        note = f"min-max {steps['min']:,.0f}-{steps['max']:,.0f}" if steps["n"] > 1 else ""
        section.add(f"steps/s, {processes} worker process(es)", steps["median"], "/s", note=note)
        section.add(f"runs/s, {processes} worker process(es)", runs["median"], "/s")
        section.add(
            f"time to finish all, {processes} worker process(es)",
            statistics.median(r["seconds"] for r in rs),
            "s",
            note=f"starting all took {statistics.median(r['start_seconds'] for r in rs):.2f} s",
        )
        utilisation = statistics.median(r["cpu_utilisation"] for r in rs)
        section.add(
            f"CPU busy (client+workers+PostgreSQL), {processes} process(es)",
            utilisation * 100,
            "%",
            note="of all cores; near 100% = CPU-bound",
        )
    one = statistics.median(r["steps_per_s"] for r in results[1])
    two = statistics.median(r["steps_per_s"] for r in results[2])
    section.add("speed-up, two processes vs one", two / one, "x")
    few = max(sizes.concurrent_runs // 4, 1)  # 50 of the full 200: a shorter queue
    fewer = []
    for _ in range(sizes.repeats):
        with ctx.server.database("conc_few") as url:
            fewer.append(await _once(ctx, url, 1, pg, few))
    section.add(
        f"steps/s, {few} concurrent runs, 1 worker process",
        statistics.median(r["steps_per_s"] for r in fewer),
        "/s",
    )
    section.raw = {"samples": results, f"{few}_runs": fewer}
    return section
