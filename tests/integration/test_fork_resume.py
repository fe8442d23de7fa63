"""``engine.fork``, ``engine.retry(resume=True)``, ``engine.bulk`` and ``engine.workers`` through
the public API, on PostgreSQL (with a live worker) and on the in-memory engine: what runs again
and what is reused, counted per step."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest

from iterflow import Engine, FlowContext
from iterflow.core.errors import FlowError, ForkStepUnknown, InputInvalid, RunNotFound
from iterflow.core.models import RunStatus
from tests.integration.flows import Approval, eventually, settle


def three_steps(engine: Engine, calls: Counter[str]) -> Any:
    @engine.flow("three", input=int, output=int, signals={"go": Approval})
    async def three(ctx: FlowContext, n: int) -> int:
        def step(name: str, value: int) -> int:
            calls[name] += 1
            return value + 1

        total = await ctx.step("a", step, "a", n)
        if n < 0:
            await ctx.signal("go", Approval)
        total = await ctx.step("b", step, "b", total)
        return await ctx.step("c", step, "c", total)

    return three


async def reach(engine: Engine, run_id: uuid.UUID, status: RunStatus) -> None:
    async def check() -> bool:
        if engine.database_url == "memory://":
            await engine.drain()
        return (await engine.status(run_id)).run.status is status

    await eventually(check, what=f"run {run_id} to be {status.value}")


async def test_fork_replays_from_the_key_and_reuses_what_came_before(eng: Engine) -> None:
    calls: Counter[str] = Counter()
    flow = three_steps(eng, calls)
    source = (await flow.start(1, tags=["src"])).run_id
    assert (await settle(eng, source)).run.output == 4

    forked = await eng.fork(source, from_step="b")

    assert forked.created and forked.status is RunStatus.PENDING and forked.run_id != source
    detail = await settle(eng, forked.run_id)
    assert detail.run.output == 4 and detail.run.tags == ("src",)
    assert calls == Counter(a=1, b=2, c=2)
    assert detail.run.meta == {"forked_from": str(source), "fork_step": "b"}
    assert [e.type for e in detail.events][:2] == ["started", "forked"]

    with pytest.raises(ForkStepUnknown, match="a, b, c"):
        await eng.fork(source, from_step="nope")
    with pytest.raises(FlowError) as refused:
        await eng.fork(source, from_step="b\x00")
    assert refused.value.error_code in {"PAYLOAD_INVALID", "INPUT_INVALID"}
    with pytest.raises(RunNotFound):
        await eng.fork(uuid.uuid4())
    page = await eng.list_runs(name="three")
    assert len(page.runs) == 2  # refused forks wrote nothing


async def test_resume_continues_a_canceled_run(eng: Engine) -> None:
    calls: Counter[str] = Counter()
    flow = three_steps(eng, calls)
    run_id = (await flow.start(-5)).run_id
    await reach(eng, run_id, RunStatus.AWAITING_SIGNAL)
    assert (await eng.cancel(run_id)).kind == "canceled"
    assert (await eng.retry(run_id)).kind == "not_failed"  # plain retry leaves it canceled

    resumed = await eng.retry(run_id, resume=True)

    assert (resumed.kind, resumed.status) == ("queued", RunStatus.PENDING)
    await reach(eng, run_id, RunStatus.AWAITING_SIGNAL)
    assert (await eng.signal(run_id, "go", {"approved": True})).kind == "delivered"
    assert (await settle(eng, run_id)).run.output == -2
    assert calls == Counter(a=1, b=1, c=1)
    assert (await eng.retry(run_id, resume=True)).kind == "not_failed"  # done stays done
    with pytest.raises(InputInvalid):
        await eng.retry(run_id, resume="yes")  # type: ignore[arg-type]


async def test_bulk_acts_on_what_the_filters_select(eng: Engine) -> None:
    calls: Counter[str] = Counter()
    flow = three_steps(eng, calls)
    waiting = [(await flow.start(-1, tags=["bulk"])).run_id for _ in range(3)]
    for run_id in waiting:
        await reach(eng, run_id, RunStatus.AWAITING_SIGNAL)
    other = (await flow.start(-1, tags=["other"])).run_id
    seen: list[tuple[int, int]] = []

    dry = await eng.bulk(
        "cancel", tags=["bulk"], dry_run=True, progress=lambda d, t: seen.append((d, t))
    )
    assert (dry.matched, dry.acted, dry.outcomes) == (3, 3, {"would_cancel": 3})
    assert dry.run_ids == tuple(waiting) and seen == [(1, 3), (2, 3), (3, 3)]
    assert (await eng.status(waiting[0])).run.status is RunStatus.AWAITING_SIGNAL

    done = await eng.bulk("cancel", tags=["bulk"], reason="ops")
    assert done.outcomes == {"canceled": 3} and not done.dry_run
    again = await eng.bulk("cancel", tags=["bulk"])
    assert again.outcomes == {"already_terminal": 3} and again.acted == 0
    resumed = await eng.bulk("retry", tags=["bulk"], status="canceled", resume=True)
    assert resumed.outcomes == {"queued": 3}
    for run_id in waiting:
        await reach(eng, run_id, RunStatus.AWAITING_SIGNAL)
    assert (await eng.status(other)).run.status is RunStatus.AWAITING_SIGNAL

    with pytest.raises(InputInvalid, match="at least one filter"):
        await eng.bulk("cancel")
    with pytest.raises(InputInvalid):
        await eng.bulk("delete", tags=["bulk"])  # type: ignore[arg-type]


async def test_workers_register_while_they_run() -> None:
    async with Engine.in_memory() as engine:
        three_steps(engine, Counter())
        assert await engine.workers() == []
        await engine.listen()

        async def registered() -> bool:
            return len(await engine.workers()) == 1

        await eventually(registered, what="the worker to register")
        [worker] = await engine.workers()
        assert worker.flows == ("three@1",) and not worker.stale
        assert worker.id == engine.worker.owner
        store = engine.store
    assert await store.list_workers(60) == []  # type: ignore[attr-defined]
