"""``python -m bench --only scale`` at a small size, and the rows its COPY load writes.

The load writes runs without the engine (``COPY``), so the first test checks that what it wrote
is what the engine would have left: the engine reads the loaded runs, resumes a waiting one with
a signal, and finds each sleeping run's wake-up queued on its flow's queue. The second runs the
whole section on a few hundred runs; its timings are reported, never asserted (1,000,000 runs is
the benchmark's size, not the suite's).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from bench import scale
from bench.config import Context, Sizes
from bench.server import BenchServer

from iterflow import Engine
from iterflow.core.settings import Settings
from iterflow.store.outbox import flow_queue
from iterflow.store.urls import libpq_url

N = 300


async def test_the_copied_runs_are_runs_the_engine_reads_and_resumes(database_url: str) -> None:
    queue = Settings().queue_name
    now = datetime.now(UTC)
    loaded = await asyncio.to_thread(scale.load, database_url, N, queue, now)
    assert loaded["runs"] == N
    with psycopg.connect(libpq_url(database_url)) as conn:
        jobs = conn.execute(
            b"SELECT queue_name, count(*), min(scheduled_at) > now() FROM procrastinate_jobs "
            b"WHERE status = 'todo' GROUP BY queue_name"
        ).fetchall()
    sleeping = N * scale.MIX["sleeping"] // 100
    assert jobs == [(flow_queue(queue, scale.FLOW, 1), sleeping, True)]
    engine = Engine(database_url, pool_size=2)
    flows = scale.register(engine)
    async with engine:
        counts = await engine.count_runs()
        assert {s.value: n for s, n in counts.items()} == {
            status: N * share // 100 for status, share in scale.MIX.items()
        }
        done = (await engine.list_runs(status="done", limit=1)).runs[0]
        detail = await engine.status(done.id)
        assert [s.cursor_key for s in detail.steps] == [f"s{i}" for i in range(10)]
        assert done.output == 10

        sleeper = (await engine.list_runs(status="sleeping", limit=1)).runs[0]
        detail = await engine.status(sleeper.id)
        assert [t.fire_at for t in detail.timers] == [sleeper.wake_at]
        assert sleeper.wake_at is not None and sleeper.wake_at > now

        waiter = (await engine.list_runs(status="awaiting_signal", limit=1)).runs[0]
        assert (await engine.signal(waiter.id, "go", {"by": "test"})).kind == "delivered"
        await engine.worker.advance(waiter.id)  # replays the 3 memoized steps, takes the signal
        assert await flows.order.result(waiter.id, timeout=10) == 3


async def test_the_scale_section_runs_at_a_small_size(server_url: str, tmp_path: Path) -> None:
    server = BenchServer(url=server_url)
    await asyncio.to_thread(server.start)
    try:
        sizes = Sizes(scale_runs=N, scale_samples=2, scale_vacuum_seconds=1.0, insert_rows=50)
        ctx = Context(server=server, sizes=sizes, quick=True, results_dir=tmp_path)
        section = await scale.run(ctx)
    finally:
        await asyncio.to_thread(server.stop)
    rows = {row.metric: row for row in section.rows}
    assert rows["runs loaded with COPY"].value == N
    compared = [r for r in section.rows if r.target is not None and "p50" in r.metric]
    labels = {r.metric.split(":")[0] for r in compared}
    assert {
        "start, claim and a 10-step run (in-process)",
        "timer firing (advance of a due sleeping run)",
        "signal delivery (engine.signal)",
        "reconciler sweep (nothing to repair)",
        "status (run, steps, signals, timers, events)",
        "list_runs first page, status=awaiting_signal",
        "list_runs first page, schedule",
    } <= labels
    for row in compared:
        assert row.value is not None and row.value > 0
        assert row.status in ("PASS", "MISS")
    plans = section.raw["plans"]
    assert "claim" in plans and "list_runs, tag=vip" in plans
    assert not [label for label, plan in plans.items() if plan.startswith("(not explained")]
    assert set(section.raw["sizes"]) >= {"runs", "steps", "events", "timers", "signals"}
