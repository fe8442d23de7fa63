"""A worker SIGKILLed mid-attempt: checkpointed steps never run again, the run completes."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import psycopg

from iterflow import Engine
from iterflow.store.outbox import reconcile_task_name, retention_task_name
from iterflow.store.urls import libpq_url
from tests.e2e.chaos_app import engine as chaos_app
from tests.e2e.harness import drained, undrained, until
from tests.e2e.kill_app import Burst, Job, burst, four_steps
from tests.e2e.workers import kill, start_worker, stop
from tests.integration.flows import eventually, sql


async def test_sigkill_after_step_two_of_four(database_url: str, tmp_path: Path) -> None:
    counter = tmp_path / "counts.txt"
    release = tmp_path / "release"
    attempts = tmp_path / "attempts.txt"
    counter.touch()
    async with Engine(database_url, pool_size=2) as client:
        handle = client.register(four_steps.definition)
        job = Job(counter_file=str(counter), release_file=str(release), attempts_file=str(attempts))
        run = await handle.start(job)

        first = start_worker("kill_app:engine", database_url, tmp_path / "worker1.log")
        try:

            async def step3_running() -> bool:
                return "s3" in counter.read_text().split()

            await eventually(step3_running, timeout=60, what="step 3 to start on worker 1")
            checkpointed = sql(
                database_url,
                "SELECT cursor_key FROM iterflow.steps WHERE run_id = %s ORDER BY position",
                run.run_id,
            )
            assert checkpointed == [("s1",), ("s2",)]
        finally:
            kill(first)  # SIGKILL: no cleanup, lease left to expire
        print(f"injected: SIGKILL worker pid {first.pid} during step s3 of run {run.run_id}")

        release.touch()
        second = start_worker("kill_app:engine", database_url, tmp_path / "worker2.log")
        try:
            result = await handle.result(run.run_id, timeout=60)
        finally:
            stop(second)

    assert result == ["s1", "s2", "s3", "s4"]
    runs = Counter(counter.read_text().split())
    assert runs == Counter(s1=1, s2=1, s3=2, s4=1), runs
    events = [e for (e,) in sql(database_url, "SELECT type FROM iterflow.events ORDER BY id")]
    assert "recovered" in events
    # s3's second execution knows it may be a duplicate: it is attempt 2, and so is its memo
    seen = attempts.read_text().splitlines()
    assert seen == ["s1 1", "s2 1", "s3 1", "s3 2", "s4 1"], seen
    memos = sql(
        database_url,
        "SELECT cursor_key, attempts FROM iterflow.steps WHERE run_id = %s ORDER BY position",
        run.run_id,
    )
    assert memos == [("s1", 1), ("s2", 1), ("s3", 2), ("s4", 1)], memos
    print(f"verified: step executions {dict(runs)}; s1/s2 not re-run after their checkpoint")


async def test_sigkill_during_a_reconciler_sweep(database_url: str, tmp_path: Path) -> None:
    """The periodic sweep's own job, left ``doing`` by a killed worker, is released by the next
    worker's sweep: nothing stays ``doing`` for ever."""
    settings = chaos_app.settings
    sweep_task = reconcile_task_name(settings.db_schema)
    async with Engine(database_url, pool_size=2):
        pass  # installs the tables
    # A retention sweep left doing by a worker long gone (procrastinate pruned its row), which
    # the reconciler's sweep will release: holding its row lock parks the first worker's sweep
    # inside ``release_orphaned_jobs``.
    bait = sql(
        database_url,
        "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status) "
        "VALUES (%s, %s, '{}', 'doing') RETURNING id",
        settings.queue_name,
        retention_task_name(settings.db_schema),
    )[0][0]
    holder = psycopg.connect(libpq_url(database_url))
    holder.execute("SELECT 1 FROM procrastinate_jobs WHERE id = %s FOR UPDATE", (bait,))
    holder_pid = holder.info.backend_pid

    def sweeps_doing() -> list[int]:
        return [
            job
            for (job,) in sql(
                database_url,
                "SELECT id FROM procrastinate_jobs WHERE task_name = %s AND status = 'doing'",
                sweep_task,
            )
        ]

    def sweep_blocked() -> bool:
        """A sweep is doing and a statement waits on the bait's row lock."""
        waiting = sql(
            database_url,
            "SELECT 1 FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
            holder_pid,
        )
        return bool(waiting and sweeps_doing())

    first = start_worker("chaos_app:engine", database_url, tmp_path / "worker1.log")
    try:
        await until(sweep_blocked, timeout=60, what="a sweep to block on the bait")
    finally:
        kill(first)
        killed_at = time.time()
        holder.rollback()
        holder.close()
    stuck = sweeps_doing()  # only the killed worker ever ran a sweep
    assert stuck
    print(f"injected: SIGKILL worker pid {first.pid} in the middle of sweep job(s) {stuck}")

    second = start_worker("chaos_app:engine", database_url, tmp_path / "worker2.log")
    try:

        def ended() -> bool:
            doing = sql(
                database_url,
                "SELECT id FROM procrastinate_jobs WHERE id = ANY(%s) AND status = 'doing'",
                [*stuck, bait],
            )
            return not doing

        await until(
            ended,
            timeout=60,
            what="the killed sweep's job to be released",
            explain=lambda: undrained(database_url),
        )
        await until(
            lambda: drained(database_url, killed_at=killed_at),
            timeout=60,
            what="no job left doing",
            explain=lambda: undrained(database_url, killed_at=killed_at),
        )
    finally:
        stop(second)
    # released by deleting them: no failed row is left behind
    left = sql(
        database_url,
        "SELECT id, status::text FROM procrastinate_jobs WHERE id = ANY(%s)",
        [*stuck, bait],
    )
    assert left == [], left
    print(f"verified: the killed sweep's job(s) {stuck} and the orphan {bait} were released")


async def test_sigkill_while_concurrent_runs_commit_their_checkpoints_together(
    database_url: str, tmp_path: Path
) -> None:
    """A worker running many runs at once commits their plain checkpoints in shared
    statements (group commit), and is SIGKILLed mid-drain. Another worker finishes every run;
    no step whose memo was committed runs again, and each run re-runs at most the one step it
    was in when the worker died."""
    runs = 120
    counter = tmp_path / "counts.txt"
    counter.touch()
    async with Engine(database_url, pool_size=2) as client:
        handle = client.register(burst.definition)
        started = [await handle.start(Burst(counter_file=str(counter), n=n)) for n in range(runs)]
        first = start_worker(
            "kill_app:engine", database_url, tmp_path / "worker1.log", concurrency=40
        )
        try:

            async def some_memos() -> bool:
                [(memos,)] = sql(database_url, "SELECT count(*) FROM iterflow.steps")
                return bool(memos >= runs * 10 // 4)

            await eventually(some_memos, timeout=60, what="a quarter of the memos")
        finally:
            kill(first)
        [(done_before,)] = sql(
            database_url, "SELECT count(*) FROM iterflow.runs WHERE status = 'done'"
        )
        print(f"injected: SIGKILL worker pid {first.pid} with {done_before} of {runs} runs done")

        async def dead_worker_settled() -> bool:
            """A statement the dead worker left running in PostgreSQL has ended (so the
            memos below are every memo it wrote)."""
            [(active,)] = sql(
                database_url,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'active' AND pid <> pg_backend_pid()",
            )
            return bool(active == 0)

        await eventually(dead_worker_settled, what="the dead worker's statements to end")
        memos_before = {
            (str(run), key)
            for run, key in sql(database_url, "SELECT run_id, cursor_key FROM iterflow.steps")
        }
        shared = sql(
            database_url,
            "SELECT count(*) FROM (SELECT finished_at FROM iterflow.steps "
            "GROUP BY finished_at HAVING count(DISTINCT run_id) > 1) AS together",
        )[0][0]
        second = start_worker(
            "kill_app:engine", database_url, tmp_path / "worker2.log", concurrency=40
        )
        try:
            results = [await handle.result(run.run_id, timeout=90) for run in started]
        finally:
            stop(second)

    assert results == [10] * runs
    # memos of one transaction share its now(): several runs' memos in one commit
    assert shared > 0, "the first worker never committed two runs' checkpoints together"
    by_n = {n: str(run.run_id) for n, run in enumerate(started)}
    executions = Counter(
        (by_n[int(n)], key)
        for n, key in (line.split() for line in counter.read_text().split("\n") if line)
    )
    rerun = {k: c for k, c in executions.items() if c > 1}
    assert not set(rerun) & memos_before, "a step ran again after its memo was committed"
    assert all(c == 2 for c in rerun.values()), rerun
    assert len({run for run, _ in rerun}) == len(rerun), "a run re-ran more than one step"
    assert len(executions) == runs * 10 and all(c >= 1 for c in executions.values())
    print(
        f"verified: {shared} commits held several runs' memos; {len(memos_before)} memos "
        f"before the kill, none re-run; {len(rerun)} steps in flight at the kill ran twice"
    )
