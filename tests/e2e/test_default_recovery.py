"""Recovery at the **default** settings, driven by the periodic reconciler of real workers.

The other fault-injection tests shorten the lease and run the reconciler every second; at those
settings a cron that only ticked in every fifth minute (``*/5 * * * * *``: procrastinate's seconds
field is the *sixth*) still looked fine. Here the workers run ``defaults_app:engine``
(``Settings()``: ``lease_seconds=20``, ``reconcile_every_seconds=5``, ``worker_poll_interval=0.5``)
and each reconciler repair path must complete within its documented bound, whatever the
wall-clock minute:

* a worker SIGKILLed mid-step: the run finishes within ``lease_seconds + reconcile_every_seconds``
  (+ slack) of the kill;
* a lost wake-up job (a ``pending`` run and a ``sleeping`` one): re-enqueued within
  ``reconcile_every_seconds`` (+ slack) of being due;
* a wake-up job left ``doing`` by a dead worker, holding the run's job lock: released within
  ``reconcile_every_seconds`` (+ slack).

Faults are injected only after the worker's first sweep (procrastinate defers the latest past
tick when its periodic deferrer starts), so only the cron's later ticks can repair them. Counters
are files outside the workers; waits poll with deadlines.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from iterflow import Engine, FlowError
from iterflow.core.settings import Settings
from iterflow.store.outbox import TASK_NAME, reconcile_task_name
from iterflow.store.urls import asyncpg_url
from tests.e2e.chaos_app import HoldJob, LoadJob, expected_load, hold, load
from tests.e2e.defaults_app import engine as defaults_app
from tests.e2e.harness import describe_run, read_executions, until
from tests.e2e.kill_app import Job, four_steps
from tests.e2e.workers import kill, start_worker, stop
from tests.integration.flows import sql

pytestmark = pytest.mark.slow

APP = "defaults_app:engine"
DEFAULTS = Settings()
LEASE = DEFAULTS.lease_seconds
EVERY = DEFAULTS.reconcile_every_seconds
#: Worker scheduling, an attempt and procrastinate's 0.5 s periodic margin, on a busy 2-core box.
SLACK = 10.0
SWEEP = reconcile_task_name(DEFAULTS.db_schema)


def test_the_app_runs_at_the_default_settings() -> None:
    assert defaults_app.settings == Settings()
    assert (LEASE, EVERY, DEFAULTS.worker_poll_interval) == (20.0, 5, 0.5)


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes started by a test; stopped (or reaped) at teardown."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        stop(proc)


def spawn(
    procs: list[subprocess.Popen[bytes]], database_url: str, tmp_path: Path
) -> subprocess.Popen[bytes]:
    proc = start_worker(APP, database_url, tmp_path / f"worker{len(procs) + 1}.log")
    procs.append(proc)
    return proc


def workers_registered(database_url: str) -> int:
    return int(sql(database_url, "SELECT count(*) FROM procrastinate_workers")[0][0])


def first_sweep_done(database_url: str) -> bool:
    """A sweep was deferred (the deferrer started) and none is queued or running any more."""
    deferred = sql(
        database_url,
        "SELECT count(*) FROM procrastinate_periodic_defers WHERE task_name = %s",
        SWEEP,
    )[0][0]
    busy = sql(
        database_url,
        "SELECT count(*) FROM procrastinate_jobs WHERE task_name = %s "
        "AND status IN ('todo', 'doing')",
        SWEEP,
    )[0][0]
    return bool(deferred) and not busy


async def wait_ready(database_url: str, procs: list[subprocess.Popen[bytes]]) -> None:
    """The worker is up and its start-up sweep is over: only the cron's ticks sweep from now."""
    await until(lambda: workers_registered(database_url) >= len(procs), timeout=60, what="worker")
    await until(lambda: first_sweep_done(database_url), timeout=60, what="the start-up sweep")


def event_time(database_url: str, run_id: uuid.UUID, kind: str) -> float:
    rows = sql(
        database_url,
        "SELECT extract(epoch FROM at)::float8 FROM iterflow.events "
        "WHERE run_id = %s AND type = %s ORDER BY id",
        run_id,
        kind,
    )
    assert rows, f"no {kind!r} event:\n{describe_run(database_url, str(run_id))}"
    return float(rows[0][0])


def finished_at(database_url: str, run_id: uuid.UUID) -> float:
    """When the run's terminal transaction (status ``done``) committed, give or take its length."""
    return event_time(database_url, run_id, "completed")


def event_types(database_url: str, run_id: uuid.UUID) -> list[str]:
    return [
        e
        for (e,) in sql(
            database_url, "SELECT type FROM iterflow.events WHERE run_id = %s ORDER BY id", run_id
        )
    ]


async def test_a_worker_killed_mid_step_is_recovered_within_lease_plus_sweep(
    database_url: str, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    counter = tmp_path / "counts.txt"
    release = tmp_path / "release"
    attempts = tmp_path / "attempts.txt"
    counter.touch()
    async with Engine(database_url, pool_size=2) as client:
        handle = client.register(four_steps.definition)
        job = Job(counter_file=str(counter), release_file=str(release), attempts_file=str(attempts))
        run = await handle.start(job)

        first = spawn(workers, database_url, tmp_path)
        await until(
            lambda: "s3" in counter.read_text().split(), timeout=60, what="s3 to start on worker 1"
        )
        checkpointed = sql(
            database_url,
            "SELECT cursor_key FROM iterflow.steps WHERE run_id = %s ORDER BY position",
            run.run_id,
        )
        assert checkpointed == [("s1",), ("s2",)]
        # A surviving worker at the defaults is already up (its start-up sweep is over) when the
        # first one dies, so the recovery time is the reconciler's, not a process start's.
        spawn(workers, database_url, tmp_path)
        await wait_ready(database_url, workers)
        assert "s3" in counter.read_text().split() and first.poll() is None

        kill(first)  # SIGKILL: no cleanup; its lease (renewed every lease/3) is left to expire
        killed_at = time.time()
        release.touch()
        bound = LEASE + EVERY + SLACK
        try:
            result = await handle.result(run.run_id, timeout=bound)
        except FlowError as exc:
            raise AssertionError(
                f"{exc.error_code}: not finished {bound:.0f} s after the kill\n"
                + describe_run(database_url, str(run.run_id))
            ) from exc
        recovered = event_time(database_url, run.run_id, "recovered") - killed_at
        done = finished_at(database_url, run.run_id) - killed_at

    assert result == ["s1", "s2", "s3", "s4"]
    assert done <= bound, f"finished {done:.1f} s after the kill (bound {bound:.0f} s)"
    runs = Counter(counter.read_text().split())
    assert runs["s3"] <= 2 and runs == Counter(s1=1, s2=1, s3=runs["s3"], s4=1), runs
    # killed mid-s3 (s3 had begun, so it runs again): the re-run is attempt 2
    seen = attempts.read_text().splitlines()
    assert seen == ["s1 1", "s2 1", "s3 1", "s3 2", "s4 1"], seen
    print(
        f"\nkill -> recovered {recovered:.1f} s, kill -> finished {done:.1f} s "
        f"(bound {LEASE:.0f} + {EVERY} + {SLACK:.0f} s); step executions {dict(runs)}"
    )


async def test_lost_wake_ups_are_re_enqueued_by_the_next_sweep(
    database_url: str, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    counter = tmp_path / "counts.txt"
    release = tmp_path / "release"
    release.touch()
    bound = EVERY + SLACK
    async with Engine(database_url, pool_size=2) as client:
        napper = client.register(load.definition)
        holder = client.register(hold.definition)
        spawn(workers, database_url, tmp_path)
        await wait_ready(database_url, workers)

        # A sleeping run whose timer job is lost.
        nap = await napper.start(LoadJob(counter_file=str(counter), n=1, work_ms=0, sleep_ms=4000))
        await until(
            lambda: (
                sql(database_url, "SELECT status FROM iterflow.runs WHERE id = %s", nap.run_id)
                == [("sleeping",)]
            ),
            timeout=30,
            what="the run to sleep",
        )
        lost = sql(
            database_url,
            "DELETE FROM procrastinate_jobs WHERE lock = %s AND status = 'todo' RETURNING id",
            str(nap.run_id),
        )
        assert len(lost) == 1, "the timer job fired before it could be deleted"
        due = sql(
            database_url,
            "SELECT extract(epoch FROM fire_at)::float8 FROM iterflow.timers WHERE run_id = %s",
            nap.run_id,
        )[0][0]

        # A pending run whose start job is lost: written and deleted in one transaction, so no
        # worker ever sees the job.
        lost_at = time.time()
        app_db = create_async_engine(asyncpg_url(database_url))
        try:
            async with app_db.begin() as conn:
                pending = await holder.start(
                    HoldJob(counter_file=str(counter), release_file=str(release)), conn=conn
                )
                gone = await conn.execute(
                    text("DELETE FROM procrastinate_jobs WHERE lock = :lock"),
                    {"lock": str(pending.run_id)},
                )
                assert gone.rowcount == 1
        finally:
            await app_db.dispose()

        try:
            out = await napper.result(nap.run_id, timeout=max(due - time.time(), 0) + bound)
            assert await holder.result(pending.run_id, timeout=bound) is not None
        except FlowError as exc:
            raise AssertionError(
                f"{exc.error_code}\n"
                + describe_run(database_url, str(nap.run_id))
                + "\n"
                + describe_run(database_url, str(pending.run_id))
            ) from exc

    assert out == expected_load(1)
    nap_rewoken = event_time(database_url, nap.run_id, "rewoken") - due
    nap_done = finished_at(database_url, nap.run_id) - due
    pending_rewoken = event_time(database_url, pending.run_id, "rewoken") - lost_at
    pending_done = finished_at(database_url, pending.run_id) - lost_at
    assert nap_done <= bound, f"sleeping run finished {nap_done:.1f} s after its timer was due"
    assert pending_done <= bound, (
        f"pending run finished {pending_done:.1f} s after its job was lost"
    )
    executions = Counter((e.run_id, e.key) for e in read_executions(counter))
    assert executions == {
        (str(nap.run_id), "s0"): 1,
        (str(nap.run_id), "s1"): 1,
        (str(nap.run_id), "s2"): 1,
        (str(pending.run_id), "slow"): 1,
    }, executions
    print(
        f"\nsleeping run: due -> rewoken {nap_rewoken:.1f} s, -> finished {nap_done:.1f} s; "
        f"pending run: lost -> rewoken {pending_rewoken:.1f} s, -> finished {pending_done:.1f} s "
        f"(bound {EVERY} + {SLACK:.0f} s)"
    )


async def test_a_wake_up_left_doing_by_a_dead_worker_is_released_by_the_next_sweep(
    database_url: str, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    counter = tmp_path / "counts.txt"
    release = tmp_path / "release"
    release.touch()
    bound = EVERY + SLACK
    async with Engine(database_url, pool_size=2) as client:
        holder = client.register(hold.definition)
        spawn(workers, database_url, tmp_path)
        await wait_ready(database_url, workers)
        # A worker died (its last heartbeat an hour ago) between an attempt's commit and
        # procrastinate's finish_job: that wake-up stays doing and holds the run's job lock, so
        # the run's next wake-up (here its start job) cannot be fetched. All of it is written in
        # one transaction: no worker sees the run before its lock is held.
        orphaned_at = time.time()
        app_db = create_async_engine(asyncpg_url(database_url))
        try:
            async with app_db.begin() as conn:
                dead = (
                    await conn.execute(
                        text(
                            "INSERT INTO procrastinate_workers (last_heartbeat) "
                            "VALUES (now() - interval '1 hour') RETURNING id"
                        )
                    )
                ).scalar_one()
                run = await holder.start(
                    HoldJob(counter_file=str(counter), release_file=str(release)), conn=conn
                )
                orphan = (
                    await conn.execute(
                        text(
                            "INSERT INTO procrastinate_jobs "
                            "(queue_name, task_name, lock, args, status, worker_id) "
                            "VALUES (:queue, :task, :lock, CAST(:args AS jsonb), 'doing', :worker) "
                            "RETURNING id"
                        ),
                        {
                            "queue": DEFAULTS.queue_name,
                            "task": TASK_NAME,
                            "lock": str(run.run_id),
                            "args": json.dumps({"run_id": str(run.run_id)}),
                            "worker": dead,
                        },
                    )
                ).scalar_one()
        finally:
            await app_db.dispose()

        try:
            await holder.result(run.run_id, timeout=bound)
        except FlowError as exc:
            raise AssertionError(
                f"{exc.error_code}\n" + describe_run(database_url, str(run.run_id))
            ) from exc

    done = finished_at(database_url, run.run_id) - orphaned_at
    # released by deleting it: no failed row is left behind
    left = sql(database_url, "SELECT status::text FROM procrastinate_jobs WHERE id = %s", orphan)
    assert left == [], left
    assert done <= bound, f"finished {done:.1f} s after the job was orphaned (bound {bound:.0f} s)"
    # Neither a lease expiry nor a lost wake-up: only the orphan release unblocked it.
    repairs = {"recovered", "rewoken"} & set(event_types(database_url, run.run_id))
    assert not repairs, repairs
    executions = [e.key for e in read_executions(counter)]
    assert executions == ["slow"], executions
    print(f"\norphaned -> finished {done:.1f} s (bound {EVERY} + {SLACK:.0f} s)")
