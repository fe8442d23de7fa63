"""Schedules across real workers at the **default** settings: exactly one run per tick.

Two ``flowctl worker schedules_app:engine`` processes (``Engine()``: the schedule sweep is
procrastinate's periodic task every second) serve API schedules of the ``minutely`` flow whose
ticks are already due (a catch-up window over the last minutes, ``overlap="allow"``: every due
tick starts). Nothing here calls the sweep: only the workers' periodic task does.

A sweep is caught in the middle deterministically: the test holds, uncommitted, a run with the
idempotency key of one due tick. The sweep's start statement for that tick (``INSERT ... ON
CONFLICT DO NOTHING`` on ``(name, idempotency_key)``) waits for the test's transaction, after
the same transaction has already started the runs of the other due ticks. (Holding a row lock
on a ``schedules`` row would not do: the sweep reads ``FOR UPDATE SKIP LOCKED`` and skips it.)
The worker running that sweep is SIGKILLed, the held run rolled back; the survivor's sweeps
start every tick. Executions are counted in a file outside the workers.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from iterflow import Engine, Tick
from iterflow.core.schedule import tick_idempotency_key
from iterflow.core.settings import Settings
from iterflow.runtime.host import stale_worker_seconds
from iterflow.store.outbox import schedule_task_name
from iterflow.store.urls import asyncpg_url, libpq_url
from tests.e2e.harness import drained, read_executions, undrained, until
from tests.e2e.schedules_app import COUNTER_ENV, minutely
from tests.e2e.schedules_app import engine as schedules_app
from tests.e2e.workers import kill, start_worker, stop
from tests.integration.flows import sql

pytestmark = pytest.mark.slow

APP = "schedules_app:engine"
DEFAULTS = Settings()
SWEEP = schedule_task_name(DEFAULTS.db_schema)
MINUTE = timedelta(minutes=1)
SCHEDULES = 12
TICKS = 4
"""Due ticks per schedule (the held schedule has one fewer: it sorts last in the sweep)."""


def test_the_app_runs_at_the_default_settings() -> None:
    assert schedules_app.settings == Settings()


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        stop(proc)


def worker_ids(database_url: str) -> set[int]:
    return {w for (w,) in sql(database_url, "SELECT id FROM procrastinate_workers")}


async def spawn(
    procs: list[subprocess.Popen[bytes]], database_url: str, tmp_path: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a worker; return it with its procrastinate worker id (the row it registered)."""
    before = worker_ids(database_url)
    proc = start_worker(APP, database_url, tmp_path / f"worker{len(procs) + 1}.log")
    procs.append(proc)
    new = await until(
        lambda: worker_ids(database_url) - before, timeout=60, what="the worker to register"
    )
    (worker_id,) = new
    return proc, worker_id


def runs_by_tick(database_url: str, prefix: str) -> Counter[tuple[str, str]]:
    """Runs per (schedule, tick) of the schedules whose id starts with ``prefix``, read from the
    runs' idempotency keys (``schedule:<id>@<tick>``), checked against their ``meta``."""
    rows = sql(
        database_url,
        "SELECT idempotency_key, meta ->> 'schedule_id', meta ->> 'scheduled_at' "
        "FROM iterflow.runs WHERE name = 'minutely' AND meta ->> 'schedule_id' LIKE %s",
        prefix + "%",
    )
    out: Counter[tuple[str, str]] = Counter()
    for key, schedule_id, tick in rows:
        assert key == tick_idempotency_key(schedule_id, datetime.fromisoformat(tick)), key
        out[(schedule_id, key.rpartition("@")[2])] += 1
    return out


def due_grid(first: datetime, last: datetime) -> list[datetime]:
    """The minute ticks in ``(first, last]``."""
    ticks, t = [], first + MINUTE
    while t <= last:
        ticks.append(t)
        t += MINUTE
    return ticks


async def test_exactly_one_run_per_tick_when_a_worker_is_killed_mid_sweep(
    database_url: str,
    tmp_path: Path,
    workers: list[subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counter = tmp_path / "executions.txt"
    counter.touch()
    monkeypatch.setenv(COUNTER_ENV, str(counter))  # inherited by the workers
    t_start = time.monotonic()
    ids = [f"e2e-{i:02d}" for i in range(SCHEDULES)]
    held_id = ids[-1]
    async with Engine(database_url, pool_size=2) as client:
        handle = client.register(minutely.definition)
        for sid in ids:
            await client.schedule(handle, cron="* * * * *", id=sid, catchup="10m", overlap="allow")
        # Paused until the watermarks are rewound below, in the same transaction. Else a minute
        # turning before then lets a worker start tick m0 early (the schedules created before
        # it turned), and the rewound sweep finds that run and records a second ``started``.
        sql(database_url, "UPDATE iterflow.schedules SET paused = true WHERE id = ANY(%s)", ids)
        first, first_id = await spawn(workers, database_url, tmp_path)
        second, second_id = await spawn(workers, database_url, tmp_path)
        by_worker = {first_id: first, second_id: second}

        (m0,) = sql(database_url, "SELECT date_trunc('minute', now())")[0]
        initial = {sid: m0 - TICKS * MINUTE for sid in ids}
        initial[held_id] = m0 - (TICKS - 1) * MINUTE  # its first tick is later: it sorts last
        held_tick = m0

        # Hold the held schedule's newest tick: an uncommitted run with that tick's key.
        app_db = create_async_engine(asyncpg_url(database_url))
        holder = await app_db.connect()
        tx = await holder.begin()
        await handle.start(
            Tick(scheduled_at=held_tick, schedule_id=held_id),
            idempotency_key=tick_idempotency_key(held_id, held_tick),
            conn=holder,
        )
        holder_pid = (await holder.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
        # Make every tick due at once (one transaction): the workers' next sweep takes them.
        with psycopg.connect(libpq_url(database_url)) as conn:
            for sid, last in initial.items():
                conn.execute(
                    "UPDATE iterflow.schedules SET last_tick = %s, next_tick = %s, paused = false "
                    "WHERE id = %s",
                    (last, last + MINUTE, sid),
                )

        def blocked_sweep() -> list[tuple[Any, ...]]:
            """The doing sweep job(s) while a statement waits on the held run, with whether
            the waiting transaction has written already (``backend_xid``)."""
            waiting = sql(
                database_url,
                "SELECT backend_xid IS NOT NULL FROM pg_stat_activity "
                "WHERE %s = ANY(pg_blocking_pids(pid))",
                holder_pid,
            )
            doing = sql(
                database_url,
                "SELECT id, worker_id FROM procrastinate_jobs "
                "WHERE task_name = %s AND status = 'doing'",
                SWEEP,
            )
            return [(*job, wrote) for job in doing for (wrote,) in waiting] if waiting else []

        try:
            blocked = await until(blocked_sweep, timeout=30, what="a sweep to block on the tick")
            assert len(blocked) == 1, blocked
            ((job_id, worker_id, wrote),) = blocked
            assert wrote, "the sweep had started no run before blocking"
            victim = by_worker[worker_id]
            survivor = second if victim is first else first
            kill(victim)  # SIGKILL in the middle of the sweep's transaction
            killed_at = time.time()
        finally:
            await tx.rollback()
            await holder.close()
            await app_db.dispose()
        print(
            f"\ninjected: SIGKILL worker pid {victim.pid} (procrastinate worker {worker_id}) "
            f"during sweep job {job_id}, blocked on {held_id}@{held_tick.isoformat()}"
        )

        def settled() -> dict[str, Any]:
            """Every e2e schedule's watermark past m0, each of its ticks up to the watermark
            with one run, every such run done; else {}."""
            marks = dict(
                sql(
                    database_url,
                    "SELECT id, last_tick FROM iterflow.schedules WHERE id = ANY(%s)",
                    ids,
                )
            )
            if any(marks[sid] < m0 for sid in ids):
                return {}
            counts = runs_by_tick(database_url, "e2e-")
            expected = {
                (sid, tick_idempotency_key(sid, t).rpartition("@")[2])
                for sid in ids
                for t in due_grid(initial[sid], marks[sid])
            }
            if not expected <= set(counts):
                return {}
            live = sql(
                database_url,
                "SELECT count(*) FROM iterflow.runs WHERE name = 'minutely' AND status <> 'done' "
                "AND meta ->> 'schedule_id' LIKE 'e2e-%%'",
            )[0][0]
            if live:
                return {}
            return {"marks": marks, "counts": counts, "expected": expected}

        state = await until(settled, timeout=30, what="every due tick to run")
        started_after = time.time() - killed_at

        released = await until(
            lambda: (
                sql(
                    database_url,
                    "SELECT status::text FROM procrastinate_jobs WHERE id = %s",
                    job_id,
                )
                != [("doing",)]
            ),
            timeout=stale_worker_seconds(DEFAULTS) + DEFAULTS.reconcile_every_seconds + 15,
            what="the killed worker's sweep job to be released",
            explain=lambda: undrained(database_url, killed_at=killed_at),
        )
        released_after = time.time() - killed_at
        await until(
            lambda: drained(database_url, killed_at=killed_at),
            timeout=30,
            what="no job left doing",
            explain=lambda: undrained(database_url, killed_at=killed_at),
        )
        assert survivor.poll() is None

    # read again now that the killed sweep's job is over (a minute may have ticked since)
    state = await until(settled, timeout=30, what="every due tick to run")
    counts, expected, marks = state["counts"], state["expected"], state["marks"]
    assert all(marks[sid] >= m0 for sid in ids)
    assert len(expected) >= SCHEDULES * TICKS - 1, len(expected)
    duplicates = {k: n for k, n in counts.items() if n != 1}
    assert not duplicates, f"ticks with more than one run: {duplicates}"
    # no tick lost; a run beyond the watermark read is a newer sweep's, none before or off-grid
    for sid, tick in set(counts) - expected:
        assert datetime.fromisoformat(tick) > marks[sid], (sid, tick)
    checked = {(sid, tick) for sid, tick in counts if datetime.fromisoformat(tick) <= marks[sid]}
    assert checked == expected
    status = sql(database_url, "SELECT status::text FROM procrastinate_jobs WHERE id = %s", job_id)
    assert released and status == [], status  # released by deleting it
    # one ``started`` decision per tick (the killed sweep's rolled back with its runs)
    events = Counter(
        (sid, tick_idempotency_key(sid, tick).rpartition("@")[2])
        for sid, tick in sql(
            database_url,
            "SELECT schedule_id, tick FROM iterflow.schedule_events "
            "WHERE type = 'started' AND schedule_id LIKE 'e2e-%%'",
        )
        if tick <= marks[sid]
    )
    assert events == dict.fromkeys(expected, 1), events
    # the survivor ran each of those ticks' step, once
    executions = [e for e in read_executions(counter) if e.key.startswith("e2e-")]
    ran = Counter(tuple(e.key.split("@", 1)) for e in executions)
    for sid, tick in expected:
        assert ran[(sid, tick)] == 1, (sid, tick, ran[(sid, tick)])
    assert set(ran.values()) == {1}, ran
    assert {e.pid for e in executions} == {survivor.pid}
    print(
        f"verified: {len(expected)} ticks of {SCHEDULES} schedules, one run each "
        f"(started and done {started_after:.1f} s after the kill), watermarks at "
        f"{min(marks.values()).isoformat()} or later; the killed sweep job released "
        f"{released_after:.1f} s after the kill; "
        f"test took {time.monotonic() - t_start:.0f} s"
    )
