"""Crash injection: the attempt dies right after (or before) a step's checkpoint; the next
attempt, after the dead worker's lease expires, replays the memo (after) or runs it again
(before). On the in-memory engine and on PostgreSQL."""

from __future__ import annotations

from iterflow.testing import Crash, TestEngine
from tests.kit import flows
from tests.kit.flows import Order


async def test_crash_after_the_checkpoint_does_not_run_the_step_again(
    iterflow_any_engine: TestEngine,
) -> None:
    t = iterflow_any_engine
    t.crash_after("charge")
    run = await t.start(flows.order, Order(id="X-1", amount=5))
    assert t.crashes == [Crash(run, "charge", "after")]
    crashed = t.history(run)
    assert crashed.run.status == "running"  # the dead worker still holds the lease
    assert [s.cursor_key for s in crashed.steps] == ["charge"]  # committed before the crash
    await t.recover()
    assert t.history(run).run.status == "sleeping"  # resumed past the step
    assert t.steps_run == {"charge": 1}
    assert any(e.type == "recovered" for e in t.history(run).events)


async def test_crash_before_the_checkpoint_runs_the_step_again(
    iterflow_any_engine: TestEngine,
) -> None:
    t = iterflow_any_engine
    t.crash_before("charge")
    run = await t.start(flows.order, Order(id="X-2", amount=5))
    assert t.history(run).steps == ()  # the step ran, its result was never committed
    await t.recover()
    assert t.steps_run == {"charge": 2}  # at-least-once before the checkpoint
    # the re-run is attempt 2 (step_attempt() said so): the lost attempt counts
    assert [(s.cursor_key, s.attempts) for s in t.history(run).steps] == [("charge", 2)]
    assert t.history(run).run.status == "sleeping"


async def test_each_attempt_lost_before_the_checkpoint_counts(
    iterflow_any_engine: TestEngine,
) -> None:
    t = iterflow_any_engine
    t.crash_before("charge", times=2)
    run = await t.start(flows.order, Order(id="X-4", amount=5))
    await t.recover()
    await t.recover()
    assert t.steps_run == {"charge": 3}
    assert [(s.cursor_key, s.attempts) for s in t.history(run).steps] == [("charge", 3)]


async def test_a_cursor_key_targets_one_occurrence_and_nothing_is_written_after_a_crash() -> None:
    async with TestEngine(flows.ticks) as t:
        t.crash_after("sleep:", times=1)  # no such label: never fires
        t.crash_after("ctx.now")  # not a label either
        run = await t.start(flows.ticks, Order(id="T", amount=0))
        await t.advance("2d")
        assert t.crashes == []
        assert t.history(run).run.status == "done"
    async with TestEngine(flows.order) as t:
        t.crash_after("signal:approve")
        run = await t.start(flows.order, Order(id="X-3", amount=5))
        await t.advance("3d")
        await t.signal(run, "approve", {"by": "ana"})
        assert t.crashes == [Crash(run, "signal:approve", "after")]
        assert t.history(run).run.status == "running"  # the finish was never written
        await t.recover()
        assert await t.result(run) == "ch_X-3 approved by ana"
