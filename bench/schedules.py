"""(7) Schedules: 10,000 cron schedules, one worker process at the default settings.

The fleet is written with one ``COPY`` (each row's watermark and first tick from
:func:`iterflow.core.scheduling.first_state`). A 5-field cron ticks on minute boundaries only,
so "spread" means over the hour: schedule ``i`` is ``<i % 60> * * * *``, and each minute
boundary makes ~1/60 of the fleet due at once (167 of 10,000) while the rest are not due. The
worker's periodic sweep (procrastinate, every second) is what starts them; nothing here calls
the sweep while the worker runs. Measured:

* **lateness**, tick -> run created (``runs.created_at``: the sweep transaction's start) and
  tick -> first attempt (``runs.started_at``: the worker claimed it), over ``schedule_boundaries``
  real minute boundaries (``--quick``: one simulated boundary, a minute's ticks made due by moving
  their watermark, lateness counted from that commit);
* **idle cost**, between boundaries, with the worker sweeping every second: seq scans and rows
  read on ``schedules`` (``pg_stat_user_tables`` deltas), transactions per second of the whole
  database, an idle sweep's time in-process, and ``EXPLAIN (ANALYZE, BUFFERS)`` of the sweep's
  due-schedule query;
* **sweep time per due schedule**: the worker stopped, ``sweep_due`` more schedules made due at
  once and swept in-process (``engine.sweep_schedules()``: batches of 100, one transaction each),
  next to the raw single-row INSERT+COMMIT of the same database.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, cast

import psycopg

from iterflow import Engine
from iterflow.core.scheduling import first_state, schedule_spec
from iterflow.store.base import ScheduleStore
from iterflow.store.schedule_queries import ScheduleStatements
from iterflow.store.schema import quote_identifier
from iterflow.store.urls import libpq_url

from . import limits
from .config import Context
from .flows import register
from .measure import wait_for_count
from .report import Section, Target, percentiles
from .steps import wait_worker_ready
from .workers import WorkerProcess

__all__ = ["run"]

FLOW = "bench.tick"
MINUTE = timedelta(minutes=1)
IDLE_SWEEPS = 30


def _fleet(n: int, now: datetime) -> Iterator[tuple[Any, ...]]:
    """COPY rows: ``(id, flow, cron, tz, source, last_tick, next_tick)``."""
    for i in range(n):
        spec = schedule_spec(id=f"b{i:05d}", flow=FLOW, cron=f"{i % 60} * * * *")
        last, nxt = first_state(spec, now)
        yield (spec.id, FLOW, spec.cron, spec.tz, "api", last, nxt)


def _copy(url: str, schema: str, rows: Iterator[tuple[Any, ...]]) -> None:
    s = quote_identifier(schema)
    with psycopg.connect(libpq_url(url)) as conn, conn.cursor() as cur:
        columns = "id, flow, cron, tz, source, last_tick, next_tick"
        with cur.copy(f"COPY {s}.schedules ({columns}) FROM STDIN".encode()) as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(f"ANALYZE {s}.schedules".encode())


def _one(url: str, query: str, *params: Any) -> tuple[Any, ...]:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        row = conn.execute(query.encode(), params).fetchone()
        assert row is not None
        return tuple(row)


def _table_stats(url: str, schema: str) -> dict[str, float]:
    """Counters of ``schedules`` and of the database (a fresh connection: a fresh snapshot)."""
    table = _one(
        url,
        "SELECT seq_scan, coalesce(seq_tup_read, 0), coalesce(idx_scan, 0), "
        "coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables "
        "WHERE schemaname = %s AND relname = 'schedules'",
        schema,
    )
    db = _one(
        url,
        "SELECT xact_commit, blks_hit + blks_read FROM pg_stat_database "
        "WHERE datname = current_database()",
    )
    keys = ("seq_scan", "seq_tup_read", "idx_scan", "idx_tup_fetch", "xact_commit", "blocks")
    return dict(zip(keys, (float(v) for v in (*table, *db)), strict=True))


def _explain(url: str, schema: str) -> dict[str, Any]:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of the sweep's due query at the database's ``now()``
    (in a transaction rolled back: it locks what it finds)."""
    query = ScheduleStatements(schema).due.text
    query = query.replace("CAST(:now AS timestamptz)", "now()").replace(":limit", "100")
    with psycopg.connect(libpq_url(url)) as conn:
        (plan,) = conn.execute(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {query}".encode()
        ).fetchone() or (None,)
        text = [
            r[0] for r in conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {query}".encode()).fetchall()
        ]
        conn.rollback()
    if isinstance(plan, str):
        plan = json.loads(plan)
    top = plan[0]
    nodes: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        nodes.append(node)
        for child in node.get("Plans", []):
            walk(child)

    walk(top["Plan"])
    on_schedules = [n for n in nodes if n.get("Relation Name") == "schedules"]
    return {
        "execution_ms": top["Execution Time"],
        "buffers": top["Plan"].get("Shared Hit Blocks", 0)
        + top["Plan"].get("Shared Read Blocks", 0),
        "rows_read": sum(n.get("Actual Rows", 0) for n in on_schedules),
        "seq_scans": sum(n["Node Type"] == "Seq Scan" for n in on_schedules),
        "index_nodes": sorted(
            {f"{n['Node Type']} on {n['Index Name']}" for n in nodes if "Index Name" in n}
        ),
        "text": text,
    }


async def _db_now(engine: Engine) -> datetime:
    return await cast(ScheduleStore, engine.store).schedule_now()


async def _boundary(
    engine: Engine, url: str, schema: str, n: int, *, simulate: bool, timeout: float
) -> dict[str, Any]:
    """Wait for the next minute boundary (or simulate one) and for the worker to start every
    tick of it; return the lateness samples."""
    s = quote_identifier(schema)
    now = await _db_now(engine)
    if simulate:  # this minute's ticks become due now: lateness from the commit
        tick = now.replace(second=0, microsecond=0)
        due_at = _one(
            url,
            f"UPDATE {s}.schedules SET last_tick = %s, next_tick = %s "
            "WHERE flow = %s AND cron = %s RETURNING clock_timestamp()",
            tick - MINUTE,
            tick,
            FLOW,
            f"{tick.minute} * * * *",
        )[0]
    else:
        tick = now.replace(second=0, microsecond=0) + MINUTE
        await asyncio.sleep((tick - now).total_seconds())
        due_at = tick
    expected = sum(1 for i in range(n) if i % 60 == tick.minute)
    query = (
        f"SELECT count(*) FROM {s}.runs WHERE name = :flow AND started_at IS NOT NULL "
        "AND CAST(meta ->> 'scheduled_at' AS timestamptz) = :tick"
    )
    await wait_for_count(
        engine, query, expected, timeout=timeout, interval=0.1, params={"flow": FLOW, "tick": tick}
    )
    rows = _rows(
        url,
        "SELECT extract(epoch FROM created_at - %s)::float8, "
        "extract(epoch FROM started_at - %s)::float8 "
        f"FROM {s}.runs WHERE name = %s AND CAST(meta ->> 'scheduled_at' AS timestamptz) = %s",
        due_at,
        due_at,
        FLOW,
        tick,
    )
    return {
        "tick": tick.isoformat(),
        "simulated": simulate,
        "due": expected,
        "created": [r[0] for r in rows],
        "first_attempt": [r[1] for r in rows],
    }


def _rows(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        return [tuple(r) for r in conn.execute(query.encode(), params).fetchall()]


async def _idle(engine: Engine, url: str, schema: str, seconds: float) -> dict[str, Any]:
    """Counters over ``seconds`` with nothing due and the worker sweeping every second, then
    the time of an idle sweep in-process and the due query's plan."""
    before = await asyncio.to_thread(_table_stats, url, schema)
    await asyncio.sleep(seconds)
    after = await asyncio.to_thread(_table_stats, url, schema)
    delta = {k: (after[k] - before[k]) for k in after}
    timings = []
    for _ in range(IDLE_SWEEPS):
        t0 = time.perf_counter()
        report = await engine.sweep_schedules()
        timings.append((time.perf_counter() - t0) * 1000)
        if report.schedules:
            raise RuntimeError(f"the idle sweep found due schedules: {report}")
    explain = await asyncio.to_thread(_explain, url, schema)
    return {
        "seconds": seconds,
        "delta": delta,
        "idle_sweep_ms": statistics.median(timings),
        "idle_sweep_ms_samples": timings,
        "explain": explain,
    }


async def _burst(engine: Engine, url: str, schema: str, due: int) -> dict[str, Any]:
    """``due`` more schedules due at once, swept in-process (no worker running)."""
    now = await _db_now(engine)
    tick = now.replace(second=0, microsecond=0)
    rows = (
        (f"burst{i:05d}", FLOW, "* * * * *", "UTC", "api", tick - MINUTE, tick) for i in range(due)
    )
    await asyncio.to_thread(_copy, url, schema, rows)
    t0 = time.perf_counter()
    report = await engine.sweep_schedules()
    seconds = time.perf_counter() - t0
    return {
        "schedules": report.schedules,
        "started": report.started,
        "seconds": seconds,
        "ms_per_schedule": seconds * 1000 / max(report.schedules, 1),
    }


async def run(ctx: Context) -> Section:
    """The fleet, one worker: lateness at minute boundaries, idle cost, sweep cost."""
    n = ctx.sizes.schedules
    section = Section("schedules", f"7. Schedules: {n:,} cron schedules, one worker (defaults)")
    raw: dict[str, Any] = {}
    with ctx.server.database("schedules") as url:
        limit = await limits.measure(url, ctx.sizes.insert_rows, 0.0, concurrent=False)
        insert_ms = 1000 / limit["raw_asyncpg_seq"]
        engine = Engine(url, pool_size=4)
        register(engine)
        schema = engine.settings.db_schema
        async with engine:
            t0 = time.perf_counter()
            await asyncio.to_thread(_copy, url, schema, _fleet(n, await _db_now(engine)))
            created_s = time.perf_counter() - t0
            worker = WorkerProcess(
                url, ctx.log_dir, name="schedules", concurrency=ctx.sizes.worker_concurrency
            ).start()
            boundaries: list[dict[str, Any]] = []
            idle: dict[str, Any] | None = None
            try:
                await wait_worker_ready(engine, [worker], 60)
                count = max(ctx.sizes.schedule_boundaries, 1)
                for i in range(count):
                    boundaries.append(
                        await _boundary(engine, url, schema, n, simulate=ctx.quick, timeout=120)
                    )
                    if i == 0:  # between two boundaries: nothing due
                        await asyncio.sleep(2.0)
                        idle = await _idle(engine, url, schema, ctx.sizes.idle_sample_seconds * 3)
            finally:
                worker.stop()
            burst = await _burst(engine, url, schema, ctx.sizes.sweep_due)
    assert idle is not None
    created = [x for b in boundaries for x in b["created"]]
    attempts = [x for b in boundaries for x in b["first_attempt"]]
    late_created, late_attempt = percentiles(created), percentiles(attempts)
    where = (
        "one simulated boundary (a minute's ticks made due at once), lateness from that commit"
        if ctx.quick
        else f"{len(boundaries)} minute boundaries, {len(attempts)} ticks"
    )
    section.add(
        "schedules written with COPY",
        n,
        "schedules",
        note=f"{created_s:.1f} s, ~{n // 60} per minute",
    )
    section.add(
        "tick -> run created by the sweep, p50",
        late_created["p50"],
        "s",
        note=f"{where}; runs.created_at (the sweep transaction's start)",
    )
    section.add(
        "tick -> run created by the sweep, p99",
        late_created["p99"],
        "s",
        Target("<=", 1.0, "< 1 s"),
        note=f"max {late_created['max']:.2f} s",
    )
    section.add(
        "tick -> first attempt started, p50",
        late_attempt["p50"],
        "s",
        note="runs.started_at (claimed by the worker)",
    )
    section.add(
        "tick -> first attempt started, p99",
        late_attempt["p99"],
        "s",
        Target("<=", 1.0, "< 1 s"),
        note=f"max {late_attempt['max']:.2f} s",
    )
    per_second = {k: v / idle["seconds"] for k, v in idle["delta"].items()}
    explain = idle["explain"]
    section.add(
        f"idle: seq scans of schedules ({n:,} not due)",
        idle["delta"]["seq_scan"],
        "scans",
        Target("<=", 0, "0"),
        note=f"over {idle['seconds']:.1f} s of the worker sweeping every second",
    )
    section.add(
        "idle: schedule rows read per second",
        per_second["seq_tup_read"] + per_second["idx_tup_fetch"],
        "rows/s",
        Target("<=", 1, "~0"),
        note=f"{per_second['idx_scan']:.1f} index scans/s (the due query: two partial indexes)",
    )
    section.add(
        "idle: transactions per second, whole database",
        per_second["xact_commit"],
        "tx/s",
        note="the worker's periodic sweep and reconciler, procrastinate's defers and fetches",
    )
    section.add(
        "idle sweep, in-process (nothing due)",
        idle["idle_sweep_ms"],
        "ms",
        Target("<=", 5.0, "< 5 ms"),
        note=f"median of {IDLE_SWEEPS}; one transaction: now() + the due query",
    )
    section.add(
        "due query with nothing due: buffers touched",
        explain["buffers"],
        "buffers",
        Target("<=", 10, "index: <= 10"),
        note=f"{explain['rows_read']} schedule rows, {explain['seq_scans']} seq scans; "
        f"{', '.join(explain['index_nodes'])}; {explain['execution_ms']:.3f} ms",
    )
    section.add(
        "sweep time per due schedule",
        burst["ms_per_schedule"],
        "ms",
        note=f"{burst['schedules']:,} due at once, {burst['started']:,} runs started in "
        f"{burst['seconds']:.2f} s (batches of 100, one transaction each); raw INSERT+COMMIT "
        f"{insert_ms:.2f} ms ({burst['ms_per_schedule'] / insert_ms:.1f}x)",
    )
    raw.update(
        boundaries=boundaries,
        lateness_created=late_created,
        lateness_first_attempt=late_attempt,
        idle=idle,
        burst=burst,
        raw_insert_commit_per_s=limit["raw_asyncpg_seq"],
        created_seconds=created_s,
    )
    section.raw = raw
    return section
