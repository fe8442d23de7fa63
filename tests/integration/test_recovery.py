"""The reconciler, the no-progress claim cap, and the signal inbox.

Attempts are driven with ``engine.worker.advance`` (the worker's own attempt code, without
procrastinate) so each test controls exactly when a run moves; lost wake-ups are simulated by
deleting the run's job row, which is what a purged queue or a failover looks like.
"""

from __future__ import annotations

import uuid

import pytest
from pydantic import BaseModel

from iterflow import Engine, FlowContext, FlowError
from iterflow.core.decisions import AttemptOutcome
from iterflow.core.models import RunStatus
from iterflow.store.outbox import reconcile_task_name
from tests.integration.flows import eventually, sql


class Num(BaseModel):
    n: int


class Tick(BaseModel):
    i: int


def jobs_for(url: str, run_id: uuid.UUID) -> int:
    return sql(
        url,
        "SELECT count(*) FROM procrastinate_jobs WHERE lock = %s AND status = 'todo'",
        str(run_id),
    )[0][0]


def lose_jobs(url: str) -> None:
    sql(url, "DELETE FROM procrastinate_jobs")


async def test_pending_run_without_job_is_rewoken_but_a_delay_is_never_cut_short(
    engine: Engine, database_url: str
) -> None:
    @engine.flow("noop", input=Num, output=int)
    async def noop(ctx: FlowContext, x: Num) -> int:
        return x.n

    now_run = await noop.start(Num(n=1))
    later_run = await noop.start(Num(n=2), delay="1h")
    lose_jobs(database_url)
    report = await engine.reconcile()
    assert report.rewoken == 1
    assert jobs_for(database_url, now_run.run_id) == 1
    assert jobs_for(database_url, later_run.run_id) == 0
    # A delayed run whose job exists is left alone too (its scheduled_at is not moved).
    delayed = await noop.start(Num(n=3), delay="1h")
    before = sql(
        database_url,
        "SELECT scheduled_at FROM procrastinate_jobs WHERE lock = %s",
        str(delayed.run_id),
    )
    assert (await engine.reconcile()).rewoken == 0
    after = sql(
        database_url,
        "SELECT scheduled_at FROM procrastinate_jobs WHERE lock = %s",
        str(delayed.run_id),
    )
    assert before == after


async def test_due_timer_and_buffered_signal_and_finished_child_are_rewoken(
    engine: Engine, database_url: str
) -> None:
    @engine.flow("napper", input=Num, output=int)
    async def napper(ctx: FlowContext, x: Num) -> int:
        await ctx.sleep("50ms")
        return x.n

    @engine.flow("listener", input=Num, output=int, signals={"tick": Tick})
    async def listener(ctx: FlowContext, x: Num) -> int:
        return (await ctx.signal("tick", Tick)).i

    @engine.flow("child", input=Num, output=int)
    async def child(ctx: FlowContext, x: Num) -> int:
        return x.n * 10

    @engine.flow("parent", input=Num, output=int)
    async def parent(ctx: FlowContext, x: Num) -> int:
        return await ctx.invoke(child, x)

    sleeper = await napper.start(Num(n=1))
    waiter = await listener.start(Num(n=2))
    boss = await parent.start(Num(n=3))
    for run in (sleeper, waiter, boss):
        assert await engine.worker.advance(run.run_id) == AttemptOutcome.SUSPENDED
    child_id = sql(
        database_url, "SELECT id FROM iterflow.runs WHERE parent_run_id = %s", boss.run_id
    )[0][0]
    assert await engine.worker.advance(child_id) == AttemptOutcome.DONE
    await engine.signal(waiter.run_id, "tick", {"i": 7})
    lose_jobs(database_url)  # every wake-up is gone

    async def all_rewoken() -> bool:
        await engine.reconcile()
        return all(jobs_for(database_url, r.run_id) for r in (sleeper, waiter, boss))

    await eventually(all_rewoken, what="timer due, signal and child wake-ups re-enqueued")
    for run in (sleeper, waiter, boss):
        assert await engine.worker.advance(run.run_id) == AttemptOutcome.DONE
    assert await parent.result(boss.run_id, timeout=5) == 30
    assert await listener.result(waiter.run_id, timeout=5) == 7
    events = sql(database_url, "SELECT count(*) FROM iterflow.events WHERE type = 'rewoken'")
    assert events == [(3,)]


async def test_expired_lease_is_recovered_and_the_dead_job_released(
    engine: Engine, database_url: str
) -> None:
    @engine.flow("noop2", input=Num, output=int)
    async def noop2(ctx: FlowContext, x: Num) -> int:
        return x.n

    run = await noop2.start(Num(n=5))
    # A worker claimed it (job doing) and died: its lease is already expired.
    sql(database_url, "UPDATE procrastinate_jobs SET status = 'doing'")
    claim = await engine.store.claim(run.run_id, "dead-worker", 0.001)
    assert claim is not None

    async def recovered() -> bool:
        return (await engine.reconcile()).expired_leases == 1

    await eventually(recovered, what="expired lease recovery")
    # the dead worker's job is deleted (no failed row left), a new wake-up queued
    status = sql(database_url, "SELECT status FROM procrastinate_jobs ORDER BY id")
    assert status == [("todo",)]
    detail = await engine.status(run.run_id)
    assert detail.run.status is RunStatus.RETRYING and detail.run.lease_owner is None
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.DONE


async def test_jobs_left_doing_by_a_dead_worker_are_released(
    engine: Engine, database_url: str
) -> None:
    @engine.flow("noop3", input=Num, output=int)
    async def noop3(ctx: FlowContext, x: Num) -> int:
        return x.n

    run = await noop3.start(Num(n=1))
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.DONE
    stale = sql(
        database_url,
        "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '1 hour') "
        "RETURNING id",
    )[0][0]
    # The worker died between finishing the run and recording its job as finished.
    sql(database_url, "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s", stale)
    job_id = sql(database_url, "SELECT id FROM procrastinate_jobs")[0][0]
    events = "SELECT count(*) FROM procrastinate_events WHERE job_id = %s"
    assert sql(database_url, events, job_id)[0][0] > 0
    assert (await engine.reconcile()).orphaned_jobs == 1
    # released by deleting it, and its procrastinate events with it: nothing accumulates
    assert sql(database_url, "SELECT status FROM procrastinate_jobs") == []
    assert sql(database_url, events, job_id) == [(0,)]


async def test_runs_claimed_without_progress_fail_after_the_cap(database_url: str) -> None:
    async with Engine(database_url, max_stalled_claims=3) as engine:

        @engine.flow("poison", input=Num, output=int)
        async def poison(ctx: FlowContext, x: Num) -> int:
            return x.n

        run = await poison.start(Num(n=1))
        for _ in range(4):  # each claim "crashes": its lease simply expires
            assert await engine.store.claim(run.run_id, "crashy", 0.001) is not None
            await eventually(
                lambda: _lease_expired(engine, run.run_id), what="lease expiry", timeout=5
            )
        assert await engine.worker.advance(run.run_id) == AttemptOutcome.FAILED
        with pytest.raises(FlowError) as info:
            await poison.result(run.run_id, timeout=5)
        assert info.value.error_code == "RUN_ATTEMPTS_EXHAUSTED"


async def _lease_expired(engine: Engine, run_id: uuid.UUID) -> bool:
    run = (await engine.status(run_id)).run
    rows = sql(
        engine.database_url,
        "SELECT lease_expires_at < now() FROM iterflow.runs WHERE id = %s",
        run_id,
    )
    return run.status is RunStatus.RUNNING and bool(rows[0][0])


async def test_normal_resumes_never_count_against_the_cap(database_url: str) -> None:
    async with Engine(database_url, max_stalled_claims=2) as engine:

        @engine.flow("ticker", input=Num, output=int, signals={"tick": Tick})
        async def ticker(ctx: FlowContext, x: Num) -> int:
            total = 0
            for _ in range(x.n):
                total += (await ctx.signal("tick", Tick)).i
            return total

        run = await ticker.start(Num(n=200))
        for i in range(200):
            assert await engine.worker.advance(run.run_id) == AttemptOutcome.SUSPENDED
            assert (await engine.signal(run.run_id, "tick", {"i": i})).kind == "delivered"
        assert await engine.worker.advance(run.run_id) == AttemptOutcome.DONE
        assert await ticker.result(run.run_id, timeout=5) == sum(range(200))
        assert (await engine.status(run.run_id)).run.claims == 201


async def test_signal_inbox_is_fifo_and_keys_survive_consumption(engine: Engine) -> None:
    @engine.flow("collector", input=Num, output=list[int], signals={"tick": Tick})
    async def collector(ctx: FlowContext, x: Num) -> list[int]:
        got = [(await ctx.signal("tick", Tick)).i for _ in range(x.n)]
        await ctx.signal("tick", Tick)  # keeps the run live after consuming the first N
        return got

    run = await collector.start(Num(n=3))
    for i in range(3):  # N signals before N waits: all buffered, none dropped
        result = await engine.signal(run.run_id, "tick", {"i": i}, idempotency_key=f"evt-{i}")
        assert result.kind == "buffered"
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.SUSPENDED
    detail = await engine.status(run.run_id)
    assert [s.output["i"] for s in detail.steps] == [0, 1, 2]
    assert all(s.consumed_by for s in detail.signals)
    # A webhook retried after its signal was consumed is still recognised.
    again = await engine.signal(run.run_id, "tick", {"i": 0}, idempotency_key="evt-0")
    assert again.kind == "duplicate"
    last = await engine.signal(run.run_id, "tick", {"i": 9}, idempotency_key="evt-9")
    assert last.kind == "delivered"
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.DONE
    assert await collector.result(run.run_id, timeout=5) == [0, 1, 2]


async def test_retry_after_signal_timeout_rearms_the_wait(engine: Engine) -> None:
    @engine.flow("approval", input=Num, output=int, signals={"tick": Tick})
    async def approval(ctx: FlowContext, x: Num) -> int:
        return (await ctx.signal("tick", Tick, timeout="100ms")).i

    run = await approval.start(Num(n=0))
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.SUSPENDED

    async def timed_out() -> bool:
        return await engine.worker.advance(run.run_id) == AttemptOutcome.FAILED

    await eventually(timed_out, what="signal timeout")
    with pytest.raises(FlowError) as info:
        await approval.result(run.run_id, timeout=5)
    assert info.value.error_code == "SIGNAL_TIMEOUT"

    assert (await engine.retry(run.run_id)).kind == "queued"
    # a fresh 100ms window
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.SUSPENDED
    await engine.signal(run.run_id, "tick", {"i": 4})
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.DONE
    assert await approval.result(run.run_id, timeout=5) == 4


async def test_a_database_error_during_a_checkpoint_aborts_the_attempt_not_the_run(
    engine: Engine, database_url: str
) -> None:
    calls: list[int] = []

    @engine.flow("sturdy", input=Num, output=int)
    async def sturdy(ctx: FlowContext, x: Num) -> int:
        def work() -> int:
            calls.append(1)
            return x.n

        try:
            return await ctx.step("work", work)
        except FlowError:  # user code that catches FlowError must not see storage failures
            return -1

    # Fault injection: the first memo INSERT fails inside PostgreSQL, later ones succeed.
    sql(database_url, "CREATE TABLE fault (armed boolean)")
    sql(database_url, "INSERT INTO fault VALUES (true)")
    sql(
        database_url,
        """CREATE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF (SELECT armed FROM fault) THEN
               UPDATE fault SET armed = false;
               RAISE EXCEPTION 'injected storage failure';
             END IF;
             RETURN NEW;
           END $$""",
    )
    sql(
        database_url,
        "CREATE TRIGGER inject BEFORE INSERT ON iterflow.steps "
        "FOR EACH ROW EXECUTE FUNCTION fail_once()",
    )
    run = await sturdy.start(Num(n=8))
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.ABORTED
    # The failed write rolled back (so the trigger's disarm did too); disarm it for real.
    sql(database_url, "UPDATE fault SET armed = false")
    detail = await engine.status(run.run_id)
    assert detail.run.status is RunStatus.RETRYING and detail.steps == ()
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.DONE
    assert await sturdy.result(run.run_id, timeout=5) == 8
    assert len(calls) == 2  # at-least-once before the checkpoint


async def test_a_loop_that_sleeps_200_times_completes(database_url: str) -> None:
    async with Engine(database_url, max_stalled_claims=2) as engine:

        @engine.flow("naps", input=Num, output=int)
        async def naps(ctx: FlowContext, x: Num) -> int:
            for _ in range(x.n):
                await ctx.sleep("1ms")
            return x.n

        run = await naps.start(Num(n=200))
        outcomes = []
        while (outcome := await engine.worker.advance(run.run_id)) == AttemptOutcome.SUSPENDED:
            outcomes.append(outcome)
        # 200 suspensions (one more if a claim ever came within 1 ms of a sleep's due time):
        # resumes that make progress never count towards max_stalled_claims=2.
        assert outcome is AttemptOutcome.DONE and len(outcomes) >= 200
        assert await naps.result(run.run_id, timeout=5) == 200
        detail = await engine.status(run.run_id)
        assert detail.run.claims == len(outcomes) + 1 and len(detail.steps) == 200


async def test_a_wake_up_whose_finish_was_lost_under_a_live_worker_is_released(
    engine: Engine, database_url: str
) -> None:
    @engine.flow("noop4", input=Num, output=int)
    async def noop4(ctx: FlowContext, x: Num) -> int:
        await ctx.sleep("1ms")
        return x.n

    run = await noop4.start(Num(n=1))
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.SUSPENDED
    live = sql(
        database_url,
        "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now()) RETURNING id",
    )[0][0]
    # The attempt committed its suspension, then the worker's finish_job lost its connection: the
    # start job stays doing under a live worker and holds the run's lock.
    sql(
        database_url,
        "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s WHERE scheduled_at IS NULL",
        live,
    )
    assert (await engine.reconcile()).orphaned_jobs == 0  # it only just started
    sql(
        database_url,
        "UPDATE procrastinate_events SET at = now() - interval '1 hour' WHERE type = 'started'",
    )
    report = await engine.reconcile()
    assert report.orphaned_jobs == 1
    assert (
        sql(database_url, "SELECT status FROM procrastinate_jobs WHERE worker_id = %s", live) == []
    )


async def test_a_reconciler_sweep_left_doing_by_a_dead_worker_is_released(
    engine: Engine, database_url: str
) -> None:
    task = reconcile_task_name(engine.settings.db_schema)

    def sweep_doing_under(heartbeat: str) -> int:
        """A periodic sweep fetched (todo -> doing, so procrastinate logs it started) by a worker
        whose last heartbeat was at ``heartbeat``."""
        worker = sql(
            database_url,
            f"INSERT INTO procrastinate_workers (last_heartbeat) VALUES ({heartbeat}) RETURNING id",
        )[0][0]
        job = sql(
            database_url,
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args) "
            "VALUES (%s, %s, '{}') RETURNING id",
            engine.settings.queue_name,
            task,
        )[0][0]
        sql(
            database_url,
            "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s WHERE id = %s",
            worker,
            job,
        )
        return int(job)

    # One worker is sweeping right now; another was killed in the middle of a sweep: its job
    # stays doing, holding no lock, and no wake-up rule would ever end it.
    running = sweep_doing_under("now()")
    killed = sweep_doing_under("now() - interval '1 hour'")
    assert (await engine.reconcile()).orphaned_jobs == 1
    status = dict(sql(database_url, "SELECT id, status FROM procrastinate_jobs"))
    assert status == {running: "doing"}, killed  # the killed one's job deleted


async def test_a_storage_abort_wakes_the_run_after_the_attempt_not_after_its_claim(
    engine: Engine,
) -> None:
    """The outage backoff counts from when the attempt gave up: a long attempt that aborts is
    not woken at once (its wake time used to be computed from the claim time)."""
    import asyncio

    from iterflow.core.errors import DatabaseUnavailable
    from iterflow.core.models import StepRecord

    store = engine.store
    real = store.checkpoint
    failures = [DatabaseUnavailable("PostgreSQL error: the server is restarting")]

    async def once_down(lease: object, record: StepRecord, **kw: object) -> None:
        if failures:
            raise failures.pop()
        await real(lease, record, **kw)  # type: ignore[arg-type]

    store.checkpoint = once_down  # type: ignore[method-assign]

    @engine.flow("slow-abort", input=Num, output=int)
    async def body(ctx: FlowContext, num: Num) -> int:
        async def slow() -> int:
            await asyncio.sleep(1.0)
            return num.n

        return await ctx.step("slow", slow)

    run = await body.start(Num(n=1))
    assert await engine.worker.advance(run.run_id) is AttemptOutcome.ABORTED
    detail = await engine.status(run.run_id)
    assert detail.run.status is RunStatus.RETRYING and detail.run.waiting_for == "storage"
    assert detail.run.wake_at is not None and detail.run.started_at is not None
    # claimed at started_at, ran ~1 s, then the 2 s outage backoff
    assert (detail.run.wake_at - detail.run.started_at).total_seconds() >= 2.9
