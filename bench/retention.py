"""Retention: purge ``retention_runs`` finished runs while a sequential workload runs.

``retention_runs`` (1,000,000 in the full benchmark, ``--retention-runs N`` to change it) old
``done`` runs are loaded with plain SQL (each with 3 memo rows and 2 events, the rows a small
run leaves), then the engine applies ``Settings(retention={"done": "30d"})`` exactly as a
worker's periodic task does (``engine.sweep_retention()``, the policy's default batch and
pace), in the same process and on the same pool as a sequential in-process workload of 10-step
runs (``start`` + ``worker.advance``). Measured:

* the workload's **steps/s** without the purge and while it runs, in alternating 10-second
  windows, and the cost in percent (target: under 10 %);
* the purge's own rate (runs deleted per second);
* **table sizes** (``runs``, ``steps``, ``events`` with their indexes and TOAST) after each of
  four cycles of load, purge and autovacuum (at its defaults; the later purges run flat out,
  unmeasured): the indexes keep the pages the first purge emptied, so the second load ends
  larger than the first, and the size then settles (indexes on growing keys one cycle later,
  when the next vacuum recycles their deleted pages): the tables do not grow without bound
  (target: the fourth load at most 5 % over the third).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import psycopg

from iterflow import Engine
from iterflow.core.settings import Retention, Settings
from iterflow.store.urls import libpq_url

from .config import Context
from .flows import Steps, register
from .report import Section, Target

__all__ = ["run"]

TABLES = ("runs", "steps", "events")
CHUNK = 50_000
STEPS_PER_RUN = 10
#: Length of one workload window (with the purge, or without), in seconds.
WINDOW = 10.0
#: Load, purge, autovacuum: the heap's space is reused from the second load on; an index page
#: a vacuum deletes is reused once the next vacuum has recycled it, so indexes on growing keys
#: (``seq``, event ids) settle a cycle later. The last cycle is compared with the one before.
CYCLES = 4

LOAD_SQL = """
WITH r AS (
    INSERT INTO iterflow.runs (id, name, version, status, input, output, claims, created_at,
        updated_at, started_at, finished_at)
    SELECT gen_random_uuid(), 'bench.old', 1, 'done', '{"n": 3}', '3', 1,
        now() - interval '41 days', now() - interval '40 days', now() - interval '41 days',
        now() - interval '40 days' + g * interval '1 millisecond'
    FROM generate_series(1, %(n)s) AS g
    RETURNING id
), s AS (
    INSERT INTO iterflow.steps (run_id, position, cursor_key, kind, label, status, output)
    SELECT r.id, p, 's' || p, 'step', 's' || p, 'ok', 'null' FROM r, generate_series(0, 2) AS p
), e AS (
    INSERT INTO iterflow.events (run_id, type, data)
    SELECT r.id, t, NULL FROM r, unnest(ARRAY['started', 'completed']) AS t
)
SELECT count(*) FROM r
"""

SIZE_SQL = "SELECT pg_total_relation_size(%s::regclass)"
#: Autovacuum has processed the table since ``%s``, and what dead rows remain are under its
#: own trigger (a vacuum started during the purge finishes after it, leaving the later deletes).
VACUUMED_SQL = """
SELECT coalesce(last_autovacuum > %s, false)
    AND n_dead_tup <= current_setting('autovacuum_vacuum_threshold')::int
        + current_setting('autovacuum_vacuum_scale_factor')::float * n_live_tup
FROM pg_stat_user_tables WHERE schemaname = 'iterflow' AND relname = %s
"""


def _load(url: str, n: int) -> float:
    """Insert ``n`` old finished runs (with their rows) in chunks; return the seconds taken."""
    t0 = time.perf_counter()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        left = n
        while left > 0:
            chunk = min(CHUNK, left)
            conn.execute(LOAD_SQL, {"n": chunk})
            left -= chunk
    return time.perf_counter() - t0


def _sizes(url: str) -> dict[str, int]:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        return {
            t: int(conn.execute(SIZE_SQL, (f"iterflow.{t}",)).fetchone()[0])  # type: ignore[index]
            for t in TABLES
        }


def _autovacuumed_since(url: str, since: Any) -> bool:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for table in TABLES:
            (done,) = conn.execute(VACUUMED_SQL, (since, table)).fetchone()  # type: ignore[misc]
            if not done:
                return False
    return True


def _old_runs(url: str) -> int:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM iterflow.runs WHERE name = 'bench.old'")
        return int(row.fetchone()[0])  # type: ignore[index]


def _db_now(url: str) -> Any:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        return conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]


async def _steps_per_second(
    engine: Engine, flows: Any, seconds: float, purge: asyncio.Task[Any] | None = None
) -> tuple[int, float]:
    """Run 10-step runs one after another for ``seconds`` (or until ``purge`` is done);
    return (steps, seconds taken)."""
    steps = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end and not (purge is not None and purge.done()):
        started = await flows.steps.start(Steps(n=STEPS_PER_RUN))
        await engine.worker.advance(started.run_id)
        steps += STEPS_PER_RUN
    return steps, time.perf_counter() - t0


def _mb(size: int) -> float:
    return round(size / 1_048_576, 1)


async def _autovacuum(url: str, since: Any, timeout: float) -> bool:
    """Wait until autovacuum (at its defaults) has processed every table since ``since``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(_autovacuumed_since, url, since):
            return True
        await asyncio.sleep(2)
    return False


async def _purge_under_workload(url: str, policy: Retention) -> dict[str, Any]:
    """The measured purge: a worker's retention sweep beside a sequential workload, in
    alternating windows (sweep on, sweep off) so that a change of the machine's background load
    weighs on both sides alike. A window's sweep is canceled at its end (its open batch rolls
    back) and a new one starts with the next: each sweep picks up where the last stopped."""
    engine = Engine(url, settings=Settings(retention=policy))
    flows = register(engine)
    on = [0, 0.0]
    off = [0, 0.0]
    async with engine:
        for _ in range(3):  # warm up
            started = await flows.steps.start(Steps(n=STEPS_PER_RUN))
            await engine.worker.advance(started.run_id)
        while True:
            steps, seconds = await _steps_per_second(engine, flows, WINDOW)
            off[0] += steps
            off[1] += seconds
            purge = asyncio.create_task(engine.sweep_retention())
            steps, seconds = await _steps_per_second(engine, flows, WINDOW, purge)
            on[0] += steps
            on[1] += seconds
            if purge.done():
                await purge
                break
            purge.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purge
        # the workload's own runs go too, so that every cycle loads the same rows
        await engine.purge(older_than=0, flow=flows.steps)
    return {"off": off, "on": on}


async def _purge(url: str) -> None:
    """An unmeasured purge, flat out (the later cycles)."""
    async with Engine(url, retention=Retention(done="30d", pace=1.0)) as engine:
        await engine.sweep_retention()


async def run(ctx: Context) -> Section:
    """Three cycles of load, purge and autovacuum; the first purge under a workload."""
    n = ctx.sizes.retention_runs
    section = Section("retention", f"Retention: purging {n:,} finished runs under a workload")
    policy = Retention(done="30d")
    timeout = 180 if ctx.quick else 900
    loaded: list[dict[str, int]] = []
    purged: list[dict[str, int]] = []
    vacuumed: list[bool] = []
    with ctx.server.database("retention") as url:
        load_seconds = await asyncio.to_thread(_load, url, n)
        for cycle in range(CYCLES):
            if cycle:
                await asyncio.to_thread(_load, url, n)
            loaded.append(await asyncio.to_thread(_sizes, url))
            if cycle == 0:
                measured = await _purge_under_workload(url, policy)
                remaining = await asyncio.to_thread(_old_runs, url)
            else:
                await _purge(url)
            since = await asyncio.to_thread(_db_now, url)
            purged.append(await asyncio.to_thread(_sizes, url))
            vacuumed.append(await _autovacuum(url, since, timeout))

    off, on = measured["off"], measured["on"]
    base = off[0] / off[1]
    loaded_rate = on[0] / on[1] if on[1] else 0.0
    cost = (base - loaded_rate) / base * 100 if base else 0.0
    section.add("workload without purge", base, "steps/s", note="10-step runs, in-process")
    section.add("workload during purge", loaded_rate, "steps/s", note=f"{on[1]:.0f} s")
    section.add(
        "workload cost of the purge",
        cost,
        "%",
        Target("<=", 10.0, "under 10 % of steps/s"),
        note=f"batch {policy.batch}, pace {policy.pace}",
    )
    section.add("runs left after the purge", remaining, "runs", Target("<=", 0, "none"))
    section.add("purge rate", n / on[1], "runs/s", note=f"paced, {on[1]:.0f} s")
    section.add("load", n / load_seconds, "runs/s", note="plain SQL, 3 steps + 2 events each")
    totals = [sum(sizes.values()) for sizes in loaded]
    for cycle, sizes in enumerate(loaded):
        vac = "" if vacuumed[cycle] else "; autovacuum had not run after its purge"
        target = None
        if cycle == CYCLES - 1:
            bound = _mb(int(totals[-2] * 1.05))
            target = Target("<=", bound, "no growth from the cycle before (+5 %)")
        section.add(
            f"tables after load {cycle + 1}", _mb(totals[cycle]), "MB", target, _detail(sizes) + vac
        )
    section.add("tables after the last purge", _mb(sum(purged[-1].values())), "MB")
    section.raw = {
        "runs": n,
        "sizes": {"loaded": loaded, "purged": purged},
        "autovacuumed": vacuumed,
        "workload": measured,
    }
    return section


def _detail(sizes: dict[str, int]) -> str:
    return ", ".join(f"{t} {_mb(s)}" for t, s in sizes.items())
