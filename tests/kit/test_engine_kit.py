"""``TestEngine``: start, time skipping in due order, signals, results, history, step counts, on
the in-memory engine and (``iterflow_any_engine``) the same tests on PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from iterflow import Engine, ResultTimeout
from iterflow.core.errors import ConfigInvalid
from iterflow.testing import FakeClock, TestEngine
from tests.kit import flows
from tests.kit.flows import Order


async def test_a_three_day_sleep_and_a_signal_timeout_take_no_time() -> None:
    began = time.monotonic()
    async with TestEngine(flows.order) as t:
        approved = await t.start(flows.order, Order(id="A-1", amount=10))
        timed_out = await t.start(flows.order, {"id": "A-2", "amount": 20})
        assert t.history(approved).run.status == "sleeping"
        await t.advance("3d")
        assert t.history(approved).run.status == "awaiting_signal"
        assert t.history(approved).run.waiting_for == "signal:approve"
        assert (await t.signal(approved, "approve", {"by": "ana"})).kind == "delivered"
        assert await t.result(approved) == "ch_A-1 approved by ana"
        await t.advance("1d")  # the other run's signal timeout fires
        assert await t.result(timed_out) == "ch_A-2 unapproved"
        assert t.steps_run == {"charge": 2}  # replays of the memo do not count
        keys = [s.cursor_key for s in t.history(approved).steps]
        assert keys == ["charge", "sleep:cool-off", "signal:approve"]
        events = [e.type for e in t.history(timed_out).events]
        assert events[0] == "started" and events[-1] == "completed"
    assert time.monotonic() - began < 1.0


async def test_advance_stops_at_every_due_time_in_order() -> None:
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    async with TestEngine(flows.ticks, clock=clock) as t:
        run = await t.start(flows.ticks, Order(id="T", amount=0))
        assert await t.advance("2d") == datetime(2030, 1, 3, tzinfo=UTC)
        woke = flows.Times.model_validate(t.history(run).run.output).woke
        start = datetime(2030, 1, 1, tzinfo=UTC)
        # each wake-up ran at its own due time, not at the end of the jump
        assert woke == [
            start + timedelta(hours=1),
            start + timedelta(hours=3),
            start + timedelta(days=1, hours=3),
        ]


async def test_retry_backoffs_fire_while_advancing() -> None:
    flows.FLAKY_CALLS.clear()
    async with TestEngine(flows.flaky_flow) as t:
        run = await t.start(flows.flaky_flow, 3)
        assert t.history(run).run.status == "retrying"  # the 1-minute backoff suspends the run
        with pytest.raises(ResultTimeout, match="still retrying"):
            await t.result(run)
        await t.advance("66s")  # 1 minute plus at most 10 % of jitter
        assert t.steps_run == {"flaky": 2}
        await t.advance("132s")  # the second backoff doubles
        assert await t.result(run) == 3
        assert t.steps_run == {"flaky": 3}


async def test_schedules_fire_while_advancing() -> None:
    async with TestEngine(flows.label, clock=FakeClock(datetime(2030, 1, 1, tzinfo=UTC))) as t:
        schedule = await t.schedule(
            flows.label, cron="0 9 * * *", input={"id": "daily", "amount": 0}
        )
        assert schedule.spec.flow == "label"
        await t.advance("2d")
        runs = (await t.engine.list_runs(name="label")).runs
        assert sorted(r.created_at for r in runs) == [
            datetime(2030, 1, 1, 9, tzinfo=UTC),
            datetime(2030, 1, 2, 9, tzinfo=UTC),
        ]
        assert all(r.status == "done" for r in runs)


async def test_schedules_declared_in_code_come_with_their_flow() -> None:
    async with TestEngine(flows.daily, clock=FakeClock(datetime(2030, 1, 1, tzinfo=UTC))) as t:
        await t.advance("2d")
        runs = (await t.engine.list_runs(name="daily")).runs
        # 09:00 in Paris is 08:00 UTC in winter
        assert sorted(r.output for r in runs) == [
            "2030-01-01T08:00:00+00:00",
            "2030-01-02T08:00:00+00:00",
        ]


async def test_a_handle_brings_the_children_of_its_engine_and_built_flows_run() -> None:
    async with TestEngine(flows.ship, flows.built) as t:
        shipped = await t.start(flows.ship, Order(id="S", amount=1))
        assert await t.result(shipped) == "shipped with label-S"
        assert t.steps_run == {"print": 1}
        doubled = await t.start(flows.built, 21)
        await t.advance("1d")
        assert await t.result(doubled) == 42


async def test_result_of_a_waiting_run_says_what_it_waits_for() -> None:
    async with TestEngine(flows.order) as t:
        run = await t.start(flows.order, Order(id="W", amount=1))
        await t.advance("3d")
        with pytest.raises(ResultTimeout, match="waiting for signal:approve"):
            await t.result(run)


async def test_advance_on_postgresql_is_refused_and_settings_go_to_the_engine() -> None:
    with pytest.raises(ConfigInvalid, match="pass settings to the Engine"):
        TestEngine(engine=Engine.in_memory(), lease_seconds=3)
    t = TestEngine()
    with pytest.raises(ConfigInvalid, match="expected a flow"):
        t.register("order")  # type: ignore[arg-type]


async def test_advance_needs_the_fake_clock(iterflow_pg_engine: TestEngine) -> None:
    with pytest.raises(ConfigInvalid, match="PostgreSQL's now"):
        await iterflow_pg_engine.advance("1d")


async def test_the_same_test_runs_on_both_stores(iterflow_any_engine: TestEngine) -> None:
    t = iterflow_any_engine
    run = await t.start(flows.ship, Order(id="B", amount=1))
    assert await t.result(run) == "shipped with label-B"
    assert t.steps_run == {"print": 1}
    parked = await t.start(flows.order, Order(id="C", amount=1), idempotency_key="C")
    assert t.history(parked).run.status == "sleeping"
    assert await t.start(flows.order, Order(id="C", amount=1), idempotency_key="C") == parked
    assert (await t.cancel(parked)).kind == "canceled"
    assert t.history(parked).run.status == "canceled"


async def test_a_delayed_start_fires_on_advance_on_a_given_in_memory_engine() -> None:
    clock = FakeClock(datetime(2030, 6, 1, tzinfo=UTC))
    async with TestEngine(flows.label, engine=Engine.in_memory(clock=clock)) as t:
        assert t.clock is clock  # the store's fake clock is the one advance moves
        run = await t.start(flows.label, Order(id="L", amount=0), delay="2h")
        assert t.history(run).run.status == "pending"
        await t.advance("1h")
        assert t.history(run).run.status == "pending"
        await t.advance("1h")
        assert await t.result(run) == "label-L"
        assert t.history(run).run.finished_at == datetime(2030, 6, 1, 2, tzinfo=UTC)
