"""An attempt woken by a procrastinate job ends that job in its own last write (finish, suspend,
park): the job and the run never disagree, and procrastinate's ``finish_job`` (a commit and a
round trip per attempt) is skipped for it. When the attempt's end is not known to have
committed, procrastinate's ``finish_job`` runs and a job already gone is not an error."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from procrastinate import App, PsycopgConnector, jobs, manager
from pydantic import BaseModel

from iterflow import Engine, FlowContext
from iterflow.core.decisions import AttemptOutcome
from iterflow.core.models import RunStatus
from iterflow.runtime.host import _settling_jobs
from iterflow.store.outbox import TASK_NAME
from iterflow.store.postgres import PostgresStore
from iterflow.store.urls import libpq_url
from tests.integration.flows import eventually, jobs_of, sql


class Go(BaseModel):
    ok: bool = True


async def test_queued_attempts_end_their_own_jobs_and_procrastinate_does_not_finish_them(
    engine: Engine, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished: list[int] = []  # the wake-ups procrastinate itself finished
    original = manager.JobManager.finish_job

    async def spy(self: manager.JobManager, job: Any, status: Any, delete_job: bool) -> None:
        if job.task_name == TASK_NAME:
            finished.append(job.id)
        await original(self, job=job, status=status, delete_job=delete_job)

    monkeypatch.setattr(manager.JobManager, "finish_job", spy)

    @engine.flow("gated-end", input=Go, output=bool, signals={"go": Go})
    async def gated(ctx: FlowContext, x: Go) -> bool:
        await ctx.step("before", lambda: 1)
        return (await ctx.signal("go", Go, timeout="1h")).ok

    run = await gated.start(Go())  # no worker in this process yet: queued as a job
    assert [s for _, s in jobs_of(database_url, run.run_id)] == ["todo"]
    await engine.listen()

    async def suspended() -> bool:
        return (await engine.status(run.run_id)).run.status is RunStatus.AWAITING_SIGNAL

    await eventually(suspended, what="the run to wait for its signal")
    # the start's job was deleted by the suspension's transaction; the timeout's job is queued
    assert [status for _, status in jobs_of(database_url, run.run_id)] == ["todo"]
    await engine.signal(run.run_id, "go", Go())
    assert await gated.result(run.run_id, timeout=15) is True
    assert jobs_of(database_url, run.run_id) == []
    assert finished == []  # procrastinate's finish_job ran for neither of the run's wake-ups


async def test_a_wake_up_whose_attempt_is_skipped_is_finished_by_procrastinate(
    engine: Engine, database_url: str
) -> None:
    @engine.flow("skip-end", input=Go, output=bool)
    async def quick(ctx: FlowContext, x: Go) -> bool:
        return x.ok

    run = await quick.start(Go())
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.DONE  # no job id given
    assert [s for _, s in jobs_of(database_url, run.run_id)] == ["todo"]  # untouched
    await engine.listen()  # its wake-up finds the run done: skipped, procrastinate deletes it

    async def gone() -> bool:
        return jobs_of(database_url, run.run_id) == []

    await eventually(gone, what="the skipped wake-up to be finished")


async def test_finishing_a_job_the_attempt_already_deleted_is_not_an_error(
    engine: Engine,
) -> None:
    app = App(connector=PsycopgConnector(conninfo=libpq_url(engine.database_url)))
    async with app.open_async():
        settled: set[int] = {7}
        jm = _settling_jobs(app.connector, settled)
        job = jobs.Job(id=123456789, queue="q", lock=None, queueing_lock=None, task_name="t")
        await jm.finish_job(job=job, status=jobs.Status.SUCCEEDED, delete_job=True)  # gone: ok
        settled_job = jobs.Job(id=7, queue="q", lock=None, queueing_lock=None, task_name="t")
        await jm.finish_job(job=settled_job, status=jobs.Status.SUCCEEDED, delete_job=True)
        assert settled == set()  # skipped, and forgotten


async def test_the_worker_fetches_its_wake_ups_on_the_store_hot_path_not_through_psycopg(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """procrastinate's fetch runs on the store's asyncpg connections (``fetch_job``), never on
    procrastinate's psycopg connector: the same SQL function, without psycopg's pool checkout,
    transaction and cursor per fetch."""
    fetched: list[Any] = []
    through_psycopg: list[str] = []
    original_fetch = PostgresStore.fetch_job

    async def spy_fetch(self: PostgresStore, queues: Any, worker_id: int) -> Any:
        row = await original_fetch(self, queues, worker_id)
        fetched.append(row)
        return row

    original_one = PsycopgConnector.execute_query_one_async

    async def spy_one(self: PsycopgConnector, query: str, **arguments: Any) -> Any:
        if "procrastinate_fetch_job" in query:
            through_psycopg.append(query)
        return await original_one(self, query, **arguments)

    monkeypatch.setattr(PostgresStore, "fetch_job", spy_fetch)
    monkeypatch.setattr(PsycopgConnector, "execute_query_one_async", spy_one)

    @engine.flow("fetched", input=Go, output=bool)
    async def fetched_flow(ctx: FlowContext, x: Go) -> bool:
        return await ctx.step("one", lambda: x.ok)

    run = await fetched_flow.start(Go())  # no worker in this process yet: queued as a job
    [(job_id, _)] = jobs_of(engine.database_url, run.run_id)
    await engine.listen()
    assert await fetched_flow.result(run.run_id, timeout=15) is True
    woke = [row for row in fetched if row is not None and row["task_name"] == TASK_NAME]
    assert [(row["id"], row["task_name"], row["args"]) for row in woke] == [
        (job_id, TASK_NAME, {"run_id": str(run.run_id)})
    ]
    assert woke[0]["status"] == "doing" and woke[0]["worker_id"] is not None
    assert through_psycopg == []


async def test_fetch_job_marks_the_first_due_job_doing_or_returns_none(engine: Engine) -> None:
    """The store's ``fetch_job`` is procrastinate's fetch: nothing due gives None; a due job of
    the asked queues comes back ``doing`` for the worker; a job in another queue stays."""
    url = engine.database_url
    store = cast(PostgresStore, engine.store)
    [(worker_id,)] = sql(url, "INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id")
    assert await store.fetch_job(["nothing-here"], worker_id) is None

    @engine.flow("fetch-direct", input=Go, output=bool)
    async def direct(ctx: FlowContext, x: Go) -> bool:
        return x.ok

    run = await direct.start(Go())
    [(job_id, queue)] = sql(
        url, "SELECT id, queue_name FROM procrastinate_jobs WHERE lock = %s", str(run.run_id)
    )
    assert await store.fetch_job(["another-queue"], worker_id) is None
    row = await store.fetch_job([queue], worker_id)
    assert row is not None
    assert (row["id"], row["status"], row["worker_id"], row["queue_name"]) == (
        job_id,
        "doing",
        worker_id,
        queue,
    )
    job = jobs.Job.from_row(dict(row))  # what procrastinate's worker gets
    assert job.task_kwargs == {"run_id": str(run.run_id)} and job.task_name == TASK_NAME
    assert jobs_of(url, run.run_id) == [(job_id, "doing")]
    assert await store.fetch_job([queue], worker_id) is None  # nothing else is due


async def test_an_attempt_cut_short_by_shutdown_leaves_no_job_behind(
    database_url: str,
) -> None:
    """A worker stopping while an attempt runs past the graceful timeout cancels it; procrastinate
    then records the job ``aborted`` and keeps that row for good. The run is recovered from its
    lease (its own new wake-up); the aborted wake-up must not stay in procrastinate's table."""
    entered = asyncio.Event()

    async def forever() -> int:
        entered.set()
        await asyncio.sleep(3600)
        return 0

    async with Engine(database_url, pool_size=2) as client:

        @client.flow("cut-short", input=Go, output=int)
        async def cut(ctx: FlowContext, x: Go) -> int:
            return await ctx.step("forever", forever)

        run = await cut.start(Go())  # queued: this process hosts no worker
        async with Engine(database_url, pool_size=2) as host:
            host.register(cut.definition)
            await host.listen(concurrency=2)
            await asyncio.wait_for(entered.wait(), 30)
        # host closed: its procrastinate worker waited 5 s, then cancelled the attempt
    left = [status for _, status in jobs_of(database_url, run.run_id)]
    assert "aborted" not in left and "failed" not in left, left
