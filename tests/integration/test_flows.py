"""Raw-body flows end to end on real PostgreSQL with a procrastinate worker.

The tests that need neither wall-clock time nor a look at the tables run on both stores through
the test kit's ``iterflow_any_engine`` fixture (``t``: every call returns once the runs it woke
wait or end).
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest

from iterflow import Engine, FlowContext, FlowError
from iterflow.core.models import RunStatus
from iterflow.testing import TestEngine
from tests.integration.flows import Approval, OrderIn, Receipt, counts, eventually, sql


def order_flow(engine: Engine, calls: Counter[str], *, timeout: str | None = "30s") -> Any:
    @engine.flow("order", input=OrderIn, output=Receipt, signals={"approve": Approval})
    async def order(ctx: FlowContext, order: OrderIn) -> Receipt:
        def reserve(order_id: str) -> str:
            calls["reserve"] += 1
            return order_id

        async def charge(amount: int) -> int:
            calls["charge"] += 1
            return amount * 100

        await ctx.step("reserve", reserve, order.order_id)
        charged = await ctx.step("charge", charge, order.amount)
        await ctx.sleep("300ms", label="cool-off")
        approval = await ctx.signal("approve", Approval, timeout=timeout)
        return Receipt(order_id=order.order_id, charged=charged, approved_by=approval.by)

    return order


@pytest.fixture
def t(iterflow_any_engine: TestEngine) -> TestEngine:
    """The kit's engine, in memory and then on PostgreSQL (a fresh schema)."""
    return iterflow_any_engine


async def wait_status(engine: Engine, run_id: uuid.UUID, status: RunStatus) -> None:
    async def check() -> bool:
        return (await engine.status(run_id)).run.status is status

    await eventually(check, what=f"run {run_id} to be {status.value}")


async def test_steps_sleep_signal_and_result(engine: Engine) -> None:
    calls: Counter[str] = Counter()
    handle = order_flow(engine, calls)
    await engine.listen(concurrency=2)
    started = await handle.start(OrderIn(order_id="o-1", amount=7))
    assert started.created and started.status is RunStatus.RUNNING  # claimed in its commit
    await wait_status(engine, started.run_id, RunStatus.AWAITING_SIGNAL)

    result = await engine.signal(started.run_id, "approve", {"approved": True, "by": "ana"})
    assert result.kind == "delivered"
    receipt = await handle.result(started.run_id, timeout=20)

    assert receipt == Receipt(order_id="o-1", charged=700, approved_by="ana")
    assert calls == Counter(reserve=1, charge=1)  # replays after sleep and signal reused memos
    detail = await engine.status(started.run_id)
    assert [s.cursor_key for s in detail.steps] == [
        "reserve",
        "charge",
        "sleep:cool-off",
        "signal:approve",
    ]
    assert detail.run.status is RunStatus.DONE and detail.run.claims >= 3
    assert detail.events[0].type == "started"
    assert [e.type for e in detail.events][-1] == "completed"
    assert detail.timers[0].fired_at is not None


async def test_signal_buffered_before_wait_duplicate_and_closed(
    engine: Engine, database_url: str
) -> None:
    calls: Counter[str] = Counter()
    handle = order_flow(engine, calls)
    started = await handle.start(OrderIn(order_id="o-2", amount=1))
    # No worker yet: the run is pending, so the signal is buffered in its inbox.
    first = await engine.signal(started.run_id, "approve", {"approved": True}, idempotency_key="e1")
    again = await engine.signal(started.run_id, "approve", {"approved": True}, idempotency_key="e1")
    assert (first.kind, again.kind) == ("buffered", "duplicate")
    assert sql(database_url, "SELECT count(*) FROM iterflow.signals")[0][0] == 1

    await engine.listen(concurrency=1)
    receipt = await handle.result(started.run_id, timeout=20)
    assert receipt.approved_by == "ops"
    consumed = sql(database_url, "SELECT consumed_by FROM iterflow.signals")
    assert consumed == [("signal:approve",)]

    late = await engine.signal(started.run_id, "approve", {"approved": True})
    repeat_after_consumption = await engine.signal(
        started.run_id, "approve", {"approved": True}, idempotency_key="e1"
    )
    # A webhook retried after the run finished: its key was delivered, so it is a duplicate
    # (keys are remembered for the life of the run's rows); a new delivery is closed.
    assert late.kind == "closed" and repeat_after_consumption.kind == "duplicate"
    missing = await engine.signal(uuid.uuid4(), "approve", {"approved": True})
    assert missing.kind == "not_found"


async def test_invalid_signal_payload_is_rejected_and_nothing_stored(
    engine: Engine, database_url: str
) -> None:
    handle = order_flow(engine, Counter())
    started = await handle.start(OrderIn(order_id="o-3", amount=1))
    before = counts(database_url)
    with pytest.raises(FlowError) as info:
        await engine.signal(started.run_id, "approve", {"approved": "not-a-bool"})
    assert info.value.error_code == "SIGNAL_PAYLOAD_INVALID"
    assert "approved" in info.value.message
    with pytest.raises(FlowError) as unknown:
        await engine.signal(started.run_id, "nope", {})
    assert unknown.value.error_code == "SIGNAL_UNKNOWN"
    assert counts(database_url) == before


async def test_signal_timeout_raises_inside_the_body(engine: Engine) -> None:
    @engine.flow("impatient", input=OrderIn, output=str, signals={"approve": Approval})
    async def impatient(ctx: FlowContext, order: OrderIn) -> str:
        try:
            await ctx.signal("approve", Approval, timeout="200ms")
        except FlowError as exc:
            return exc.error_code
        return "approved"

    await engine.listen(concurrency=1)
    started = await impatient.start(OrderIn(order_id="o-4", amount=1))
    assert await impatient.result(started.run_id, timeout=20) == "SIGNAL_TIMEOUT"
    detail = await engine.status(started.run_id)
    assert [(s.cursor_key, s.status.value) for s in detail.steps] == [("signal:approve", "failed")]


async def test_unhandled_signal_timeout_fails_the_run_with_its_code(engine: Engine) -> None:
    handle = order_flow(engine, Counter(), timeout="100ms")
    await engine.listen(concurrency=1)
    started = await handle.start(OrderIn(order_id="o-5", amount=1))
    with pytest.raises(FlowError) as info:
        await handle.result(started.run_id, timeout=20)
    assert info.value.error_code == "SIGNAL_TIMEOUT"


async def test_step_retries_are_durable_and_exhaust_to_step_failed(engine: Engine) -> None:
    attempts: list[int] = []

    @engine.flow("flaky", input=OrderIn, output=int)
    async def flaky(ctx: FlowContext, order: OrderIn) -> int:
        def call() -> int:
            attempts.append(1)
            raise ConnectionError("upstream down")

        return await ctx.step("call", call, retries=2, backoff="10ms")

    await engine.listen(concurrency=1)
    started = await flaky.start(OrderIn(order_id="o-6", amount=1))
    with pytest.raises(FlowError) as info:
        await flaky.result(started.run_id, timeout=20)
    assert info.value.error_code == "STEP_FAILED"
    assert "ConnectionError: upstream down" in info.value.message
    assert len(attempts) == 3
    step = (await engine.status(started.run_id)).steps[0]
    assert (step.status.value, step.attempts) == ("failed", 3)
    assert step.error is not None and step.error["cause"]["type"] == "ConnectionError"


async def test_retry_in_place_reruns_only_the_failed_step(t: TestEngine) -> None:
    calls: Counter[str] = Counter()
    broken = {"value": True}

    @t.engine.flow("fixable", input=OrderIn, output=str)
    async def fixable(ctx: FlowContext, order: OrderIn) -> str:
        def first() -> str:
            calls["first"] += 1
            return "a"

        def second() -> str:
            calls["second"] += 1
            if broken["value"]:
                raise ValueError("bad config")
            return "b"

        return await ctx.step("first", first) + await ctx.step("second", second)

    run_id = await t.start(fixable, OrderIn(order_id="o-7", amount=1))
    with pytest.raises(FlowError):
        await t.result(run_id)
    assert (await t.retry(uuid.uuid4())).kind == "missing"

    broken["value"] = False  # the "fix" changes what the step sees
    retried = await t.retry(run_id)
    assert retried.kind == "queued"
    assert await t.result(run_id) == "ab"
    assert calls == Counter(first=1, second=2) == t.steps_run
    assert (await t.retry(run_id)).kind == "not_failed"
    events = [e.type for e in t.history(run_id).events]
    assert events == ["started", "failed", "retried", "completed"]


async def test_idempotent_start_returns_the_existing_run(engine: Engine, database_url: str) -> None:
    handle = order_flow(engine, Counter())
    a = await handle.start(OrderIn(order_id="o-8", amount=1), idempotency_key="order-8")
    b = await handle.start({"order_id": "o-8", "amount": 1}, idempotency_key="order-8")
    assert a.run_id == b.run_id and a.created and not b.created
    assert counts(database_url)["iterflow.runs"] == 1
    assert counts(database_url)["procrastinate_jobs"] == 1


async def test_delayed_start_waits_for_its_delay(engine: Engine, database_url: str) -> None:
    handle = order_flow(engine, Counter())
    started = await handle.start(OrderIn(order_id="o-9", amount=1), delay="1h", tags=["vip"])
    run = (await engine.status(started.run_id)).run
    assert run.wake_at is not None and run.tags == ("vip",)
    scheduled = sql(database_url, "SELECT scheduled_at FROM procrastinate_jobs")[0][0]
    assert scheduled == run.wake_at


async def test_body_exception_fails_the_run_with_flow_failed(t: TestEngine) -> None:
    @t.engine.flow("crashy", input=OrderIn, output=int)
    async def crashy(ctx: FlowContext, order: OrderIn) -> int:
        raise KeyError("missing thing")

    run_id = await t.start(crashy, OrderIn(order_id="o-10", amount=1))
    with pytest.raises(FlowError) as info:
        await t.result(run_id)
    assert info.value.error_code == "FLOW_FAILED"
    assert "KeyError" in info.value.message


async def test_user_coded_errors_keep_their_code(engine: Engine) -> None:
    @engine.flow("declines", input=OrderIn, output=int)
    async def declines(ctx: FlowContext, order: OrderIn) -> int:
        def pay() -> int:
            raise FlowError("card declined", code="PAYMENT_DECLINED")

        return await ctx.step("pay", pay, retries=3, backoff="10ms")

    await engine.listen(concurrency=1)
    started = await declines.start(OrderIn(order_id="o-11", amount=1))
    with pytest.raises(FlowError) as info:
        await declines.result(started.run_id, timeout=20)
    assert info.value.error_code == "PAYMENT_DECLINED"


async def test_swallowed_suspension_still_parks_the_run(t: TestEngine) -> None:
    @t.engine.flow("swallower", input=OrderIn, output=str, signals={"approve": Approval})
    async def swallower(ctx: FlowContext, order: OrderIn) -> str:
        try:  # noqa: SIM105 - the footgun under test
            await ctx.signal("approve", Approval)
        except BaseException:
            pass
        return "continued"

    run_id = await t.start(swallower, OrderIn(order_id="o-12", amount=1))
    assert t.history(run_id).run.status is RunStatus.AWAITING_SIGNAL
    assert (await t.signal(run_id, "approve", {"approved": True})).kind == "delivered"
    assert await t.result(run_id) == "continued"


async def test_start_by_name_uses_the_newest_registered_version(t: TestEngine) -> None:
    @t.engine.flow("versioned", version=1, input=OrderIn, output=int)
    async def v1(ctx: FlowContext, order: OrderIn) -> int:
        return 1

    @t.engine.flow("versioned", version=2, input=OrderIn, output=int)
    async def v2(ctx: FlowContext, order: OrderIn) -> int:
        return 2

    run_id = await t.start("versioned", {"order_id": "v", "amount": 1})
    assert t.history(run_id).run.version == 2
    assert await t.result(run_id) == 2
    with pytest.raises(FlowError) as info:
        await t.start("nope", {})
    assert info.value.error_code == "FLOW_UNKNOWN"
