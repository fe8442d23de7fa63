"""(6) Waiting costs nothing: N runs parked (half at a sleep, half at a signal), one worker.

The worker process reports its RSS and its number of asyncio tasks every half second
(``BENCH_MONITOR``). Figures are taken with the worker warmed up and idle, then with all N runs
parked and the worker idle again. Then the sleepers are woken by their common due time and the
others by N/2 signals, and the time until all of them are ``done`` is measured.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from iterflow import Engine

from .config import Context
from .flows import Park, register
from .measure import count_rows, wait_for_count
from .report import Section, Target
from .steps import wait_worker_ready
from .workers import WorkerProcess

__all__ = ["run"]

WARMUP = 40
MB = 1024 * 1024


async def _fan_out(count: int, op: Callable[[int], Awaitable[Any]], width: int = 10) -> None:
    gate = asyncio.Semaphore(width)

    async def one(i: int) -> None:
        async with gate:
            await op(i)

    await asyncio.gather(*(one(i) for i in range(count)))


async def _idle_sample(worker: WorkerProcess, seconds: float = 3.0) -> dict[str, float]:
    """Median RSS (MB) and task count reported by the worker over ``seconds`` of idleness."""
    since = time.time()
    await asyncio.sleep(seconds)
    lines = [line for line in worker.monitor() if line["t"] >= since]
    if not lines:
        raise RuntimeError(f"worker monitor wrote nothing:\n{worker.tail()}")
    return {
        "rss_mb": statistics.median(line["rss"] for line in lines) / MB,
        "tasks": statistics.median(line["tasks"] for line in lines),
        "rss_outside_mb": worker.rss() / MB,
    }


async def run(ctx: Context) -> Section:
    """Park N runs, measure the worker, wake them all."""
    n = ctx.sizes.waiting_runs
    half = n // 2
    section = Section("waiting", f"6. Waiting costs nothing: {n:,} parked runs, one worker")
    raw: dict[str, Any] = {}
    with ctx.server.database("waiting") as url:
        worker = WorkerProcess(
            url,
            ctx.log_dir,
            name="waiting",
            concurrency=ctx.sizes.worker_concurrency,
            monitor=True,
        ).start()
        try:
            engine = Engine(url, pool_size=10)
            flows = register(engine)
            schema = engine.settings.db_schema
            async with engine:
                await wait_worker_ready(engine, [worker], 60)

                def count_sql(status: str) -> str:
                    return f"SELECT count(*) FROM {schema}.runs WHERE status = '{status}'"

                # warm-up: both kinds of waits, all the way through
                soon = datetime.now(UTC) + timedelta(seconds=1)
                warm = [
                    await flows.park.start(Park(due=soon if i % 2 else None)) for i in range(WARMUP)
                ]
                await wait_for_count(engine, count_sql("awaiting_signal"), WARMUP // 2, timeout=60)
                for i, w in enumerate(warm):
                    if not i % 2:
                        await engine.signal(w.run_id, "go", {})
                await wait_for_count(engine, count_sql("done"), WARMUP, timeout=60)
                before = await _idle_sample(worker, ctx.sizes.idle_sample_seconds)

                # calibrate: park a tenth of the signal half and time it, so that the sleeps
                # can be made due just after the rest is parked
                signal_runs: list[Any] = [None] * half
                calib = min(max(half // 10, 20), half)

                async def start_signal(i: int) -> None:
                    signal_runs[i] = (await flows.park.start(Park())).run_id

                t0 = time.perf_counter()
                await _fan_out(calib, start_signal)
                await wait_for_count(
                    engine, count_sql("awaiting_signal"), calib, timeout=600, interval=0.05
                )
                rate = calib / (time.perf_counter() - t0)
                rest = n - calib
                due = datetime.now(UTC) + timedelta(
                    seconds=2.5 * rest / rate + ctx.sizes.waiting_min_delay
                )

                # park the rest: the other signal waits and the sleeps, interleaved
                plan: list[int | None] = []  # an index into signal_runs, or None for a sleep
                slots, sleeps = deque(range(calib, half)), n - half
                while slots or sleeps:
                    if slots and len(slots) >= sleeps:
                        plan.append(slots.popleft())
                    else:
                        plan.append(None)
                        sleeps -= 1

                async def start_one(i: int) -> None:
                    slot = plan[i]
                    if slot is None:
                        await flows.park.start(Park(due=due))
                    else:
                        await start_signal(slot)

                t1 = time.perf_counter()
                await _fan_out(rest, start_one)
                settled = (
                    f"SELECT count(*) FROM {schema}.runs "
                    "WHERE status IN ('awaiting_signal', 'sleeping', 'done')"
                )  # 'done' too: if the sleeps fell due early, this must not wait forever
                await wait_for_count(engine, settled, WARMUP + n, timeout=900, interval=0.1)
                park_rest_s = time.perf_counter() - t1
                parked_in_time = datetime.now(UTC) < due
                jobs = await count_rows(
                    engine, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'"
                )
                parked = (
                    await _idle_sample(worker, ctx.sizes.idle_sample_seconds)
                    if parked_in_time
                    else None
                )

                # wake the sleepers: their wake-up jobs all become due at `due`
                await asyncio.sleep(max((due - datetime.now(UTC)).total_seconds(), 0))
                t_due = time.perf_counter()
                t_slept = await wait_for_count(
                    engine, count_sql("done"), WARMUP + n - half, timeout=900, interval=0.05
                )
                wake_sleep_s = t_slept - t_due

                # wake the others: one signal each
                t_sig = time.perf_counter()

                async def send(i: int) -> None:
                    await engine.signal(signal_runs[i], "go", {})

                await _fan_out(half, send)
                t_sent = time.perf_counter()
                t_signalled = await wait_for_count(
                    engine, count_sql("done"), WARMUP + n, timeout=900, interval=0.05
                )
                wake_signal_s = t_signalled - t_sig
                after = await _idle_sample(worker, ctx.sizes.idle_sample_seconds)
        finally:
            worker.stop()

    section.add(
        "runs parked at a signal / at a sleep",
        n,
        "runs",
        note=f"{half:,} + {n - half:,}; {jobs:,} wake-up jobs queued (sleeps only)",
    )
    section.add(
        "parking rate (start + first attempt until parked)",
        rest / park_rest_s,
        "runs/s",
        note=f"calibration on the first {calib:,}: {rate:,.0f} runs/s",
    )
    section.add("worker RSS, warmed up and idle", before["rss_mb"], "MB")
    if parked is not None:
        section.add("worker RSS with all runs parked", parked["rss_mb"], "MB")
        section.add(
            "worker RSS added by the parked runs",
            parked["rss_mb"] - before["rss_mb"],
            "MB",
            Target("<=", 50, "< 50 MB"),
        )
        section.add("asyncio tasks in the worker, idle", before["tasks"], "tasks")
        section.add(
            "asyncio tasks added by the parked runs",
            parked["tasks"] - before["tasks"],
            "tasks",
            Target("<=", 0, "0"),
        )
    else:
        section.add(
            "worker RSS with all runs parked",
            None,
            note="the sleeps fell due before all runs were parked; rerun on an idler machine",
        )
    section.add(
        f"time to wake and finish {n - half:,} sleepers after their due time",
        wake_sleep_s,
        "s",
        note=f"{(n - half) / wake_sleep_s:,.0f} runs/s",
    )
    section.add(
        f"time to resume and finish {half:,} signalled runs",
        wake_signal_s,
        "s",
        note=f"from the first signal; sending all took {t_sent - t_sig:.1f} s; "
        f"{half / wake_signal_s:,.0f} runs/s",
    )
    section.add("worker RSS after all woke (idle)", after["rss_mb"], "MB")
    raw.update(
        before=before,
        parked=parked,
        after=after,
        calibration_runs=calib,
        calibration_rate=rate,
        park_rest_s=park_rest_s,
        due_in_s_after_calibration=2.5 * rest / rate + ctx.sizes.waiting_min_delay,
        wake_sleep_s=wake_sleep_s,
        wake_signal_s=wake_signal_s,
        signals_sent_s=t_sent - t_sig,
        queued_jobs=jobs,
        monitor=worker.monitor()[:: max(1, len(worker.monitor()) // 200)],
    )
    section.raw = raw
    return section
