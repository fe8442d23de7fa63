"""Honest ctx calls (issue 15): a forgotten ``await`` fails the attempt (``CTX_NOT_AWAITED``)
instead of skipping a step, a ``ctx`` call inside a step function is refused (``CTX_NESTED``),
and an unannotated step's result that plain JSON would not give back as itself is refused
(``STEP_RESULT_UNTYPED``) instead of coming back as a dict, a string or a list.

Each case runs on real PostgreSQL (with a procrastinate worker) and on the in-memory store,
through the test kit's ``iterflow_any_engine`` fixture (:class:`iterflow.testing.TestEngine`:
every call returns once the run waits or ends). Counters live outside the flows, so "the step
body ran" (or did not) is asserted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel

from iterflow import FlowContext, FlowError
from iterflow.core.errors import CtxNested, CtxNotAwaited
from iterflow.core.models import RunDetail, RunStatus, StepStatus
from iterflow.testing import TestEngine


@pytest.fixture
def t(iterflow_any_engine: TestEngine) -> TestEngine:
    """The kit's engine, in memory and then on PostgreSQL."""
    return iterflow_any_engine


class In(BaseModel):
    n: int = 0


class Money(BaseModel):
    cents: int


@dataclasses.dataclass
class Point:
    x: int


class Color(enum.Enum):
    RED = "red"


def error_of(detail: RunDetail) -> dict[str, Any]:
    assert detail.run.status is RunStatus.FAILED, detail.run
    assert detail.run.error is not None
    return detail.run.error


# --- CTX_NOT_AWAITED -----------------------------------------------------------------------------

#: The bug under test also makes Python warn that a coroutine was never awaited.
never_awaited = pytest.mark.filterwarnings(
    "ignore:coroutine .* was never awaited:RuntimeWarning",
    "ignore::pytest.PytestUnraisableExceptionWarning",
)


@never_awaited
async def test_a_dropped_step_fails_at_the_next_ctx_call_and_never_runs(t: TestEngine) -> None:
    calls: Counter[str] = Counter()

    def charge(n: int) -> int:
        calls["charge"] += 1
        return n

    @t.engine.flow("forgot-await", input=In, output=int)
    async def body(ctx: FlowContext, inp: In) -> int:
        ctx.step("charge", charge, inp.n)  # type: ignore[unused-coroutine]  # the bug under test
        await ctx.sleep("1h")  # would suspend the run for an hour with the charge skipped
        return 1

    run_id = await t.start(body, In(n=5))
    detail = await t.status(run_id)
    error = error_of(detail)
    assert error["code"] == "CTX_NOT_AWAITED"
    assert "ctx.step('charge') was never awaited" in error["message"]
    assert error["details"]["calls"] == [{"call": "ctx.step('charge')", "position": 0}]
    assert calls["charge"] == 0
    assert detail.steps == ()  # neither the skipped step nor the sleep wrote anything
    assert detail.timers == ()
    with pytest.raises(CtxNotAwaited):
        await t.engine.wait(run_id, timeout=5)


@never_awaited
async def test_an_unawaited_call_kept_in_a_variable_fails_when_the_body_returns(
    t: TestEngine,
) -> None:
    @t.engine.flow("kept-unawaited", input=In, output=int)
    async def body(ctx: FlowContext, _: In) -> int:
        pending = ctx.now()
        assert pending is not None
        return 1

    run_id = await t.start(body, In())
    error = error_of(await t.status(run_id))
    assert error["code"] == "CTX_NOT_AWAITED"
    assert "ctx.now()" in error["message"]


@never_awaited
async def test_an_unawaited_patched_is_not_truthy_by_accident(t: TestEngine) -> None:
    @t.engine.flow("patched-unawaited", input=In, output=int)
    async def body(ctx: FlowContext, _: In) -> int:
        if ctx.patched("new-path"):  # type: ignore[truthy-bool]  # a coroutine is always true
            return 2
        return 1

    run_id = await t.start(body, In())
    error = error_of(await t.status(run_id))
    assert error["code"] == "CTX_NOT_AWAITED"
    assert "ctx.patched('new-path')" in error["message"]


@never_awaited
async def test_a_swallowed_not_awaited_error_is_raised_again(t: TestEngine) -> None:
    calls: Counter[str] = Counter()

    def work() -> int:
        calls["work"] += 1
        return 1

    @t.engine.flow("swallowed", input=In, output=int)
    async def body(ctx: FlowContext, _: In) -> int:
        ctx.random()  # type: ignore[unused-coroutine]  # the bug under test
        with contextlib.suppress(FlowError):  # swallows CTX_NOT_AWAITED
            await ctx.step("work", work)
        return 1

    run_id = await t.start(body, In())
    assert error_of(await t.status(run_id))["code"] == "CTX_NOT_AWAITED"
    assert calls["work"] == 0


async def test_calls_made_first_and_awaited_later_still_work(t: TestEngine) -> None:
    """Positions are taken at the call site: ``gather`` and awaits in another order are fine."""

    async def double(n: int) -> int:
        return 2 * n

    def square(n: int) -> int:
        return n * n

    @t.engine.flow("made-first", input=In, output=list[int])
    async def body(ctx: FlowContext, inp: In) -> list[int]:
        a, b = await ctx.gather(ctx.step("a", double, inp.n), ctx.step("b", square, inp.n))
        first = ctx.step("c", square, 2)
        second = ctx.step("d", double, 2)
        c, d = await ctx.gather(first, second)
        later, earlier = ctx.step("e", square, 3), ctx.step("f", double, 3)
        f = await earlier
        e = await later
        pending: list[Coroutine[Any, Any, int]] = [ctx.step(f"g{i}", square, i) for i in range(3)]
        g = await ctx.gather(*pending)
        return [a, b, c, d, e, f, *g]

    run_id = await t.start(body, In(n=3))
    detail = await t.status(run_id)
    assert detail.run.status is RunStatus.DONE, detail.run.error
    assert detail.run.output == [6, 9, 4, 4, 9, 6, 0, 1, 4]
    assert [s.position for s in detail.steps] == list(range(9))


# --- CTX_NESTED ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_ctx_call_inside_a_step_function_is_refused_without_retries(
    t: TestEngine, kind: str
) -> None:
    calls: Counter[str] = Counter()

    @t.engine.flow(f"nested-{kind}", input=In, output=int)
    async def body(ctx: FlowContext, _: In) -> int:
        async def inner_async() -> int:
            calls["step"] += 1
            return int(await ctx.random())

        def inner_sync() -> int:
            calls["step"] += 1
            ctx.uuid().close()  # refused at the call, from the step's thread
            return 1

        fn: Callable[[], Any] = inner_async if kind == "async" else inner_sync
        return int(await ctx.step("outer", fn, retries=3, backoff="10ms"))

    run_id = await t.start(body, In())
    detail = await t.status(run_id)
    error = error_of(detail)
    assert error["code"] == "CTX_NESTED"
    assert "ctx calls belong in the flow body, not inside a step function" in error["message"]
    assert calls["step"] == 1  # not retried: the same code would make the same call
    (step,) = detail.steps  # the nested call took no position
    assert step.label == "outer" and step.status is StepStatus.FAILED and step.attempts == 1
    with pytest.raises(CtxNested):
        await t.engine.wait(run_id, timeout=5)


# --- STEP_RESULT_UNTYPED -------------------------------------------------------------------------

RICH_RESULTS: dict[str, Callable[[], Any]] = {
    "model": lambda: Money(cents=1),
    "decimal": lambda: Decimal("1.10"),
    "uuid": lambda: uuid.UUID(int=1),
    "datetime": lambda: datetime(2026, 1, 1, tzinfo=UTC),
    "dataclass": lambda: Point(x=1),
    "enum": lambda: Color.RED,
    "bytes": lambda: b"abc",
    "set": lambda: {1, 2},
    "tuple": lambda: (1, 2),
    "int-keys": lambda: {1: "a"},
    "nested": lambda: {"items": [{"price": Decimal("2")}]},
}


@pytest.mark.parametrize("kind", sorted(RICH_RESULTS))
async def test_an_unannotated_step_returning_a_rich_value_is_refused(
    t: TestEngine, kind: str
) -> None:
    calls: Counter[str] = Counter()
    make = RICH_RESULTS[kind]

    @t.engine.flow("untyped", input=In, output=int)
    async def body(ctx: FlowContext, _: In) -> int:
        def produce():  # type: ignore[no-untyped-def]  # unannotated on purpose
            calls["step"] += 1
            return make()

        await ctx.step("produce", produce, retries=2, backoff="10ms")
        return 1

    run_id = await t.start(body, In())
    detail = await t.status(run_id)
    error = error_of(detail)
    assert error["code"] == "STEP_RESULT_UNTYPED"
    assert "annotate the step function's return type" in error["message"]
    assert calls["step"] == 1
    (step,) = detail.steps
    assert step.status is StepStatus.FAILED and step.attempts == 1


async def test_annotated_and_plain_results_come_back_as_their_types(t: TestEngine) -> None:
    def money() -> Money:
        return Money(cents=5)

    def total() -> Decimal:
        return Decimal("1.10")

    seen: list[list[str]] = []

    @t.engine.flow("typed-results", input=In, output=list[str], signals={"go": In})
    async def body(ctx: FlowContext, _: In) -> list[str]:
        m = await ctx.step("money", money)
        tot = await ctx.step("total", total)
        built = await ctx.step("class", Point, 7)  # a class returns an instance of itself
        plain = await ctx.step("plain", lambda: {"a": [1, 2.5, None, True, "x"]})
        seen.append([repr(m), repr(tot), repr(built), repr(plain)])
        await ctx.signal("go", In)  # the next attempt replays the memos: the same types again
        return seen[-1]

    run_id = await t.start(body, In())

    assert (await t.status(run_id)).run.status is RunStatus.AWAITING_SIGNAL
    await t.signal(run_id, "go", In())
    detail = await t.status(run_id)
    assert detail.run.status is RunStatus.DONE, detail.run.error
    expected = [
        "Money(cents=5)",
        "Decimal('1.10')",
        "Point(x=7)",
        "{'a': [1, 2.5, None, True, 'x']}",
    ]
    assert seen == [expected, expected]  # first run and replay agree
    assert detail.run.output == expected
