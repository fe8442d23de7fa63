"""Wake-up jobs: one per run, earliest due time kept, workers notified when it becomes due."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
from pydantic import BaseModel

from iterflow import Engine, FlowContext
from iterflow.core.decisions import AttemptOutcome
from iterflow.store.outbox import flow_queue
from iterflow.store.urls import libpq_url
from tests.integration.flows import sql


class Go(BaseModel):
    ok: bool = True


async def test_a_merged_wake_that_becomes_due_notifies_the_workers(
    engine: Engine, database_url: str
) -> None:
    @engine.flow("gated", input=Go, output=bool, signals={"go": Go})
    async def gated(ctx: FlowContext, x: Go) -> bool:
        return (await ctx.signal("go", Go, timeout="1h")).ok

    run = await gated.start(Go())
    sql(database_url, "DELETE FROM procrastinate_jobs")  # as if a worker consumed the start job
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.SUSPENDED
    # The suspension queued one job for the timeout, an hour from now.
    ((job_id, scheduled_at),) = sql(
        database_url, "SELECT id, scheduled_at FROM procrastinate_jobs WHERE status = 'todo'"
    )
    assert scheduled_at > datetime.now(UTC) + timedelta(minutes=59)

    # the channel of the flow version's queue, which its workers listen to
    channel = f"procrastinate_queue_v1#{flow_queue(engine.settings.queue_name, 'gated', 1)}"
    with psycopg.connect(libpq_url(database_url), autocommit=True) as listener:
        listener.execute(f'LISTEN "{channel}"')
        assert (await engine.signal(run.run_id, "go", {"ok": True})).kind == "delivered"
        notes = [json.loads(n.payload) for n in listener.notifies(timeout=5, stop_after=1)]
    assert notes == [{"type": "job_inserted", "job_id": job_id}]
    # Merged, not duplicated: still one queued job for the run, now due.
    rows = sql(
        database_url, "SELECT id, scheduled_at FROM procrastinate_jobs WHERE status = 'todo'"
    )
    assert rows == [(job_id, None)]


async def test_a_later_wake_never_postpones_an_earlier_one(
    engine: Engine, database_url: str
) -> None:
    @engine.flow("sleepy", input=Go, output=bool)
    async def sleepy(ctx: FlowContext, x: Go) -> bool:
        await ctx.sleep("1h")
        return True

    run = await sleepy.start(Go())  # queued now
    # adds a wake in 1h: merged
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.SUSPENDED
    rows = sql(database_url, "SELECT scheduled_at FROM procrastinate_jobs WHERE status = 'todo'")
    assert rows == [(None,)]


async def test_only_a_wake_up_due_now_wakes_the_workers(engine: Engine, database_url: str) -> None:
    """procrastinate NOTIFYs every job it inserts; revision 0013's trigger function NOTIFYs a
    job due now only. A start due now wakes the flow's workers; a sleep's wake-up, due in an
    hour, and a delayed start wake none (each worker would fetch and find nothing due)."""

    @engine.flow("napper", input=Go, output=bool)
    async def napper(ctx: FlowContext, x: Go) -> bool:
        await ctx.sleep("1h")
        return True

    channel = f"procrastinate_queue_v1#{flow_queue(engine.settings.queue_name, 'napper', 1)}"
    with psycopg.connect(libpq_url(database_url), autocommit=True) as listener:
        listener.execute(f'LISTEN "{channel}"')
        run = await napper.start(Go())
        ((now_job,),) = sql(database_url, "SELECT id FROM procrastinate_jobs WHERE status = 'todo'")
        sql(database_url, "DELETE FROM procrastinate_jobs")  # as if a worker had taken it
        assert await engine.worker.advance(run.run_id) == AttemptOutcome.SUSPENDED
        await napper.start(Go(), delay="1h")
        later = sql(database_url, "SELECT id FROM procrastinate_jobs WHERE status = 'todo'")
        assert len(later) == 2  # the sleep's wake-up and the delayed start's
        sql(database_url, f"SELECT pg_notify('{channel}', 'sentinel')")
        # notifications of committed transactions arrive in commit order: any of the two
        # inserts' would come before the sentinel
        payloads = [n.payload for n in listener.notifies(timeout=5, stop_after=2)]
    assert json.loads(payloads[0]) == {"type": "job_inserted", "job_id": now_job}
    assert payloads[1:] == ["sentinel"]
