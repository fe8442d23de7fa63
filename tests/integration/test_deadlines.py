"""Run deadlines and idempotency conflicts through the engine.

The deadline tests run a real worker at the default settings (only the deadline is short): the
deadline fires by the run's wake-up job like any timer, a running attempt is stopped at it, and
the run's live children are canceled unless detached.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from pydantic import BaseModel

from iterflow import Engine, FlowContext
from iterflow.core.errors import FlowError
from iterflow.core.models import RunStatus
from iterflow.core.settings import Settings
from tests.integration.flows import eventually


class Job(BaseModel):
    n: int = 0


class Go(BaseModel):
    ok: bool = True


def _defaults(engine: Engine) -> None:
    defaults = Settings()
    for name in ("worker_poll_interval", "lease_seconds", "reconcile_every_seconds"):
        assert getattr(engine.settings, name) == getattr(defaults, name), name


async def _fails_with_deadline(engine: Engine, run_id: object, *, within: float) -> float:
    """Wait for the run's RUN_DEADLINE_EXCEEDED; return how long it took."""
    began = time.monotonic()
    with pytest.raises(FlowError) as failed:
        await engine.result(str(run_id), timeout=within)
    assert failed.value.error_code == "RUN_DEADLINE_EXCEEDED"
    return time.monotonic() - began


async def test_a_sleeping_run_fails_at_its_deadline_by_its_wake_up(engine: Engine) -> None:
    _defaults(engine)

    @engine.flow("nap", input=Job, output=Job)
    async def nap(ctx: FlowContext, job: Job) -> Job:
        await ctx.sleep("1h")
        return job

    await engine.listen(concurrency=2)
    started = await nap.start(Job(), deadline="2s")
    record = await engine.store.get_run(started.run_id)
    assert record is not None and record.deadline_at is not None
    assert record.deadline_at - record.created_at == timedelta(seconds=2)

    async def sleeping() -> bool:
        run = await engine.store.get_run(started.run_id)
        return run is not None and run.status is RunStatus.SLEEPING

    await eventually(sleeping, what="the run to sleep")
    wake = await engine.store.pending_wake(started.run_id)
    assert wake is not None and wake.scheduled_at == record.deadline_at  # not in an hour

    await _fails_with_deadline(engine, started.run_id, within=15)
    detail = await engine.status(started.run_id)
    assert detail.run.status is RunStatus.FAILED
    assert detail.run.finished_at is not None
    assert detail.run.finished_at >= record.deadline_at
    assert detail.run.finished_at - record.deadline_at < timedelta(seconds=5)
    assert [e.type for e in detail.events][-2:] == ["suspended", "failed"]


async def test_a_running_attempt_stops_at_its_deadline(engine: Engine) -> None:
    _defaults(engine)
    stopped = asyncio.Event()

    async def slow() -> int:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return 1

    @engine.flow("slow", input=Job, output=Job, deadline="2s")  # the flow's own deadline
    async def slow_flow(ctx: FlowContext, job: Job) -> Job:
        return Job(n=await ctx.step("slow", slow))

    await engine.listen(concurrency=2)
    started = await slow_flow.start(Job())
    took = await _fails_with_deadline(engine, started.run_id, within=20)
    assert took < 10 and stopped.is_set()
    detail = await engine.status(started.run_id)
    assert detail.steps == ()  # the step was stopped before its checkpoint


async def test_live_children_are_canceled_at_the_deadline_unless_detached(engine: Engine) -> None:
    _defaults(engine)

    @engine.flow("waiter", input=Job, output=Job, signals={"go": Go})
    async def waiter(ctx: FlowContext, job: Job) -> Job:
        await ctx.signal("go", Go)
        return job

    @engine.flow("parent", input=Job, output=Job)
    async def parent(ctx: FlowContext, job: Job) -> Job:
        await ctx.gather(ctx.invoke(waiter, Job(n=1)), ctx.invoke(waiter, Job(n=2), detached=True))
        return job

    await engine.listen(concurrency=2)
    started = await parent.start(Job(), deadline="2s")
    await _fails_with_deadline(engine, started.run_id, within=20)
    children = (await engine.list_runs(name="waiter", limit=10)).runs
    by_input = {c.input["n"]: c for c in children}
    assert by_input[1].status is RunStatus.CANCELED
    assert by_input[1].error is not None and by_input[1].error["code"] == "RUN_CANCELED"
    assert by_input[2].status is RunStatus.AWAITING_SIGNAL  # detached: it goes on
    await engine.signal(by_input[2].id, "go", Go())
    assert await waiter.result(by_input[2].id, timeout=15) == Job(n=2)


async def test_retry_replays_an_expired_run_without_its_deadline(engine: Engine) -> None:
    calls = 0

    async def count() -> int:
        nonlocal calls
        calls += 1
        return calls

    @engine.flow("later", input=Job, output=Job)
    async def later(ctx: FlowContext, job: Job) -> Job:
        n = await ctx.step("count", count)
        await ctx.sleep("3s")
        return Job(n=n)

    await engine.listen(concurrency=2)
    started = await later.start(Job(), deadline="1s")
    await _fails_with_deadline(engine, started.run_id, within=15)
    assert (await engine.retry(started.run_id)).kind == "queued"
    assert await later.result(started.run_id, timeout=15) == Job(n=1)
    assert calls == 1


@pytest.mark.parametrize("bad", ["soon", -1, 0, True, [1]])
async def test_a_bad_deadline_is_refused_before_anything_is_written(
    eng: Engine, bad: object
) -> None:
    @eng.flow("f", input=Job, output=Job)
    async def f(ctx: FlowContext, job: Job) -> Job:
        return job

    with pytest.raises(FlowError) as refused:
        await f.start(Job(), deadline=bad)  # type: ignore[arg-type]
    assert refused.value.error_code in {"DURATION_INVALID", "INPUT_INVALID"}
    with pytest.raises(FlowError):
        eng.flow("g", input=Job, output=Job, deadline=bad)  # type: ignore[arg-type]
    assert (await eng.list_runs(limit=10)).runs == ()


async def test_a_reused_idempotency_key_with_another_input_conflicts(eng: Engine) -> None:
    @eng.flow("pay", input=dict[str, int], output=int)
    async def pay(ctx: FlowContext, amounts: dict[str, int]) -> int:
        return sum(amounts.values())

    first = await pay.start({"a": 1, "b": 2}, idempotency_key="pay-1")
    same = await pay.start({"b": 2, "a": 1}, idempotency_key="pay-1")  # the same JSON value
    assert (same.created, same.run_id) == (False, first.run_id)
    with pytest.raises(FlowError) as conflict:
        await eng.start("pay", {"a": 1, "b": 3}, idempotency_key="pay-1")
    assert conflict.value.error_code == "IDEMPOTENCY_CONFLICT"
    assert "pay-1" in conflict.value.message
    assert len((await eng.list_runs(name="pay", limit=10)).runs) == 1


async def test_a_flows_deadline_applies_to_its_runs_started_as_children(engine: Engine) -> None:
    @engine.flow("slow_child", input=Job, output=Job, signals={"go": Go}, deadline="1s")
    async def slow_child(ctx: FlowContext, job: Job) -> Job:
        await ctx.signal("go", Go)
        return job

    @engine.flow("caller", input=Job, output=str)
    async def caller(ctx: FlowContext, job: Job) -> str:
        try:
            await ctx.invoke(slow_child, job)
        except FlowError as exc:
            return exc.error_code
        return "done"

    await engine.listen(concurrency=2)
    started = await caller.start(Job())
    assert await caller.result(started.run_id, timeout=20) == "RUN_DEADLINE_EXCEEDED"
    (child,) = (await engine.list_runs(name="slow_child", limit=5)).runs
    assert child.deadline_at is not None and child.status is RunStatus.FAILED
