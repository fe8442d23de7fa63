"""Child flows (ctx.invoke), deterministic parallelism (ctx.gather) and caps.

The tests that need no wall-clock time run on both stores through the test kit's
``iterflow_any_engine`` fixture (``t``: every call returns once the runs it woke wait or end).
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from pydantic import BaseModel

from iterflow import Engine, FlowContext, FlowError
from iterflow.core.models import RunStatus
from iterflow.testing import TestEngine
from tests.integration.flows import sql


class Num(BaseModel):
    n: int


@pytest.fixture
def t(iterflow_any_engine: TestEngine) -> TestEngine:
    """The kit's engine, in memory and then on PostgreSQL (a fresh schema)."""
    return iterflow_any_engine


async def children_of(t: TestEngine, run_id: object) -> list[tuple[str | None, str, object]]:
    """``(parent_cursor_key, status, output)`` of the run's children, by cursor key."""
    runs = (await t.engine.list_runs(parent=str(run_id))).runs
    rows = [(r.parent_cursor_key, r.status.value, r.output) for r in runs]
    return sorted(rows, key=lambda row: str(row[0]))


async def test_invoke_returns_the_child_output_and_links_the_runs(t: TestEngine) -> None:
    @t.engine.flow("square", input=Num, output=int)
    async def square(ctx: FlowContext, x: Num) -> int:
        return await ctx.step("mul", lambda: x.n * x.n)

    @t.engine.flow("sum-of-squares", input=Num, output=int)
    async def parent(ctx: FlowContext, x: Num) -> int:
        a = await ctx.invoke(square, Num(n=x.n))
        b = await ctx.invoke(square, {"n": x.n + 1})
        return a + b

    run_id = await t.start(parent, Num(n=3))
    assert await t.result(run_id) == 9 + 16
    detail = await t.status(run_id)
    assert [s.cursor_key for s in detail.steps] == ["invoke:square@1", "invoke:square@1#1"]
    assert await children_of(t, run_id) == [
        ("invoke:square@1", "done", 9),
        ("invoke:square@1#1", "done", 16),
    ]
    assert t.steps_run == {"mul": 2}


async def test_child_failure_raises_in_the_parent_with_the_child_code(t: TestEngine) -> None:
    @t.engine.flow("refuser", input=Num, output=int)
    async def refuser(ctx: FlowContext, x: Num) -> int:
        raise FlowError("no stock", code="OUT_OF_STOCK")

    @t.engine.flow("orderer", input=Num, output=str)
    async def orderer(ctx: FlowContext, x: Num) -> str:
        try:
            await ctx.invoke(refuser, x)
        except FlowError as exc:
            return exc.error_code
        return "ok"

    run_id = await t.start(orderer, Num(n=1))
    assert await t.result(run_id) == "OUT_OF_STOCK"


async def test_retry_of_a_parent_retries_its_failed_child(t: TestEngine) -> None:
    broken = {"value": True}

    @t.engine.flow("fragile", input=Num, output=int)
    async def fragile(ctx: FlowContext, x: Num) -> int:
        def work() -> int:
            if broken["value"]:
                raise RuntimeError("bug")
            return x.n

        return await ctx.step("work", work)

    @t.engine.flow("boss", input=Num, output=int)
    async def boss(ctx: FlowContext, x: Num) -> int:
        return await ctx.invoke(fragile, x) + 1

    run_id = await t.start(boss, Num(n=41))
    with pytest.raises(FlowError) as info:
        await t.result(run_id)
    assert info.value.error_code == "STEP_FAILED"
    broken["value"] = False
    assert (await t.retry(run_id)).kind == "queued"
    assert await t.result(run_id) == 42
    assert await children_of(t, run_id) == [("invoke:fragile@1", "done", 41)]


async def test_gather_keys_follow_call_order_whatever_finishes_first(engine: Engine) -> None:
    finished: list[str] = []

    @engine.flow("fan", input=Num, output=list[int])
    async def fan(ctx: FlowContext, x: Num) -> list[int]:
        async def slow() -> int:
            await asyncio.sleep(0.2)
            finished.append("slow")
            return 1

        async def fast() -> int:
            finished.append("fast")
            return 2

        a, b = await ctx.gather(ctx.step("slow", slow), ctx.step("fast", fast))
        await ctx.sleep("100ms")  # forces a replay of the gathered steps
        return [a, b]

    await engine.listen(concurrency=1)
    started = await fan.start(Num(n=0))
    assert await fan.result(started.run_id, timeout=20) == [1, 2]
    assert finished == ["fast", "slow"]  # completion order differs from call order...
    steps = (await engine.status(started.run_id)).steps
    assert [(s.position, s.cursor_key) for s in steps] == [(0, "slow"), (1, "fast"), (2, "sleep")]


async def test_gather_of_children_suspends_once_and_collects_all(engine: Engine) -> None:
    @engine.flow("double", input=Num, output=int)
    async def double(ctx: FlowContext, x: Num) -> int:
        await ctx.sleep("50ms")
        return x.n * 2

    @engine.flow("fan-out", input=Num, output=list[int])
    async def fan_out(ctx: FlowContext, x: Num) -> list[int]:
        results = await ctx.gather(*(ctx.invoke(double, Num(n=i)) for i in range(x.n)))
        return list(results)

    await engine.listen(concurrency=4)
    started = await fan_out.start(Num(n=5))
    assert await fan_out.result(started.run_id, timeout=30) == [0, 2, 4, 6, 8]


async def test_depth_and_fanout_caps_have_their_own_codes(database_url: str) -> None:
    async with Engine(database_url, max_invoke_depth=2, max_children_per_run=2) as engine:

        @engine.flow("nest", input=Num, output=int)
        async def nest(ctx: FlowContext, x: Num) -> int:
            if x.n == 0:
                return 0
            return await ctx.invoke(nest, Num(n=x.n - 1)) + 1

        @engine.flow("wide", input=Num, output=int)
        async def wide(ctx: FlowContext, x: Num) -> int:
            total = 0
            for _ in range(x.n):
                total += await ctx.invoke(nest, Num(n=0))
            return total

        await engine.listen(concurrency=2)
        deep = await nest.start(Num(n=5))
        with pytest.raises(FlowError) as depth:
            await nest.result(deep.run_id, timeout=20)
        assert depth.value.error_code == "INVOKE_DEPTH_EXCEEDED"
        many = await wide.start(Num(n=3))
        with pytest.raises(FlowError) as fanout:
            await wide.result(many.run_id, timeout=20)
        assert fanout.value.error_code == "INVOKE_FANOUT_EXCEEDED"


async def test_cancel_cascades_to_children_but_not_detached_ones(t: TestEngine) -> None:
    class Go(BaseModel):
        ok: bool = True

    @t.engine.flow("waiter", input=Num, output=int, signals={"go": Go})
    async def waiter(ctx: FlowContext, x: Num) -> int:
        await ctx.signal("go", Go)
        return x.n

    @t.engine.flow("family", input=Num, output=int)
    async def family(ctx: FlowContext, x: Num) -> int:
        a, b = await ctx.gather(
            ctx.invoke(waiter, Num(n=1)), ctx.invoke(waiter, Num(n=2), detached=True)
        )
        return a + b

    run_id = await t.start(family, Num(n=0))  # returns once both children wait

    async def statuses() -> dict[bool, str]:
        children = (await t.engine.list_runs(parent=str(run_id))).runs
        return {bool(r.meta.get("detached")): r.status.value for r in children}

    assert await statuses() == {False: "awaiting_signal", True: "awaiting_signal"}
    result = await t.cancel(run_id, reason="customer left")
    assert result.kind == "canceled"
    assert await statuses() == {False: "canceled", True: "awaiting_signal"}
    with pytest.raises(FlowError) as info:
        await t.result(run_id)
    assert info.value.error_code == "RUN_CANCELED" and "customer left" in info.value.message
    assert (await t.cancel(run_id)).kind == "already_terminal"
    assert t.history(run_id).run.status is RunStatus.CANCELED


async def test_cancel_stops_an_async_step_in_progress(engine: Engine) -> None:
    seen: Counter[str] = Counter()
    started_step = asyncio.Event()

    @engine.flow("long", input=Num, output=int)
    async def long(ctx: FlowContext, x: Num) -> int:
        async def forever() -> int:
            started_step.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                seen["cancelled"] += 1
                raise
            return 1

        await ctx.step("forever", forever)
        seen["after"] += 1
        return 0

    await engine.listen(concurrency=1)
    started = await long.start(Num(n=0))
    await asyncio.wait_for(started_step.wait(), 20)
    assert (await engine.cancel(started.run_id)).kind == "canceled"

    async def step_cancelled() -> bool:
        return seen["cancelled"] == 1

    from tests.integration.flows import eventually

    await eventually(step_cancelled, what="CancelledError in the step")
    detail = await engine.status(started.run_id)
    assert detail.run.status is RunStatus.CANCELED and detail.steps == ()
    assert seen["after"] == 0
    assert (await engine.cancel(started.run_id)).kind == "already_terminal"
    import uuid

    assert (await engine.cancel(uuid.uuid4())).kind == "not_found"


async def test_a_body_that_swallows_cancellation_cannot_write_afterwards(engine: Engine) -> None:
    entered = asyncio.Event()
    swallowed = asyncio.Event()

    @engine.flow("stubborn", input=Num, output=int)
    async def stubborn(ctx: FlowContext, x: Num) -> int:
        async def ignore_cancel() -> int:
            entered.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed.set()  # and carry on as if nothing happened
            return 7

        value = await ctx.step("ignore", ignore_cancel)
        return await ctx.step("after", lambda: value + 1)

    await engine.listen(concurrency=1)
    started = await stubborn.start(Num(n=0))
    await asyncio.wait_for(entered.wait(), 20)
    assert (await engine.cancel(started.run_id)).kind == "canceled"
    await asyncio.wait_for(swallowed.wait(), 20)

    async def attempt_over() -> bool:
        rows = sql(
            engine.database_url,
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'doing'",
        )
        return rows[0][0] == 0

    from tests.integration.flows import eventually

    await eventually(attempt_over, what="the canceled attempt to end")
    detail = await engine.status(started.run_id)
    assert detail.run.status is RunStatus.CANCELED and detail.steps == ()
