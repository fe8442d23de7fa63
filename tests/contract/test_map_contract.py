"""The builder's ``.map`` on both stores (the kit's ``iterflow_any_engine``: in memory, then
PostgreSQL): results in the items' order whatever order they finish in, one memo (and its own
retries) per item with keys taken in item order, the concurrency bound measured, a crash in the
middle of a fan-out resumed without running memoized items again, a map over a child flow (one
child run per item, at most ``concurrency`` live), and ``over`` data refused with typed errors."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import pytest
from pydantic import BaseModel

from iterflow import NonRetryable, flow
from iterflow.core.errors import FlowError
from iterflow.core.models import RunStatus, StepStatus
from iterflow.pytest_plugin import iterflow_any_engine, iterflow_engine, iterflow_pg_engine
from iterflow.testing import TestEngine, replay

__all__ = ["iterflow_any_engine", "iterflow_engine", "iterflow_pg_engine"]

#: How long a test waits for the engine to start the items it expects (real seconds).
DEADLINE = 20.0


@pytest.fixture(scope="session")
def iterflow_database_url(server_url: str) -> str:
    """The kit's PostgreSQL is the suite's server."""
    return server_url


class Items(BaseModel):
    items: list[int]


class Go(BaseModel):
    factor: int


def key(base: str, index: int) -> str:
    return base if index == 0 else f"{base}#{index}"


async def poll(check: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def reverse_order_work(  # type: ignore[no-untyped-def]
    n: int, executions: Counter[int], finished: list[int], t: TestEngine | None = None
):
    """A step function whose items finish last-first: item i returns only once item i+1 has
    finished (in any attempt; the events outlive a crashed attempt) and, given the test engine
    ``t``, once a crash was injected (so no sibling's checkpoint is in flight when it is)."""
    done = {i: asyncio.Event() for i in range(n)}

    async def work(i: int) -> int:
        executions[i] += 1
        if i + 1 < n:
            await asyncio.wait_for(done[i + 1].wait(), DEADLINE)
            if t is not None:
                await poll(lambda: t.crashes, "the injected crash")
        finished.append(i)
        done[i].set()
        return i * i

    return work


async def test_results_come_in_item_order_when_items_finish_in_reverse(
    iterflow_any_engine: TestEngine,
) -> None:
    t = iterflow_any_engine
    n = 5
    executions: Counter[int] = Counter()
    finished: list[int] = []
    work = reverse_order_work(n, executions, finished)
    squares = flow("squares").input(Items).map("work", work, over=lambda x: x.items, concurrency=n)
    built = squares.build()
    run = await t.start(built, Items(items=list(range(n))))
    assert await t.result(run) == [0, 1, 4, 9, 16]
    assert finished == [4, 3, 2, 1, 0]  # the last item finished first
    steps = t.history(run).steps
    # one memo per item, its position and key taken in item order, not in finish order
    assert [(s.position, s.cursor_key, s.output) for s in steps] == [
        (i, key("work", i), i * i) for i in range(n)
    ]
    assert executions == {i: 1 for i in range(n)}
    replay(built, t.export(run)).check()  # a replay gives the same calls and the same list


async def test_at_most_concurrency_items_are_in_flight(iterflow_any_engine: TestEngine) -> None:
    t = iterflow_any_engine
    n, limit = 7, 3
    in_flight = peak = started = 0

    async def work(i: int) -> int:
        nonlocal in_flight, peak, started
        in_flight += 1
        started += 1
        peak = max(peak, in_flight)
        # hold the slot until every slot is taken (or no item is left to take one)
        await poll(lambda: in_flight >= limit or started == n, f"{limit} items in flight")
        in_flight -= 1
        return i + 100

    bounded = flow("bounded").input(Items).map("work", work, over=lambda x: x.items, concurrency=3)
    run = await t.start(bounded.build(), Items(items=list(range(n))))
    assert await t.result(run) == [i + 100 for i in range(n)]
    assert peak == limit  # the bound was reached and never exceeded
    assert [s.cursor_key for s in t.history(run).steps] == [key("work", i) for i in range(n)]


async def test_a_crash_mid_fan_out_resumes_without_running_memoized_items(
    iterflow_any_engine: TestEngine,
) -> None:
    t = iterflow_any_engine
    executions: Counter[int] = Counter()

    async def work(i: int) -> int:
        executions[i] += 1
        return -i

    seq = flow("seq").input(Items).map("work", work, over=lambda x: x.items, concurrency=1)
    built = seq.build()
    t.crash_after("work#1")  # items 0 and 1 are memoized when the attempt dies
    run = await t.start(built, Items(items=[0, 1, 2, 3]))
    assert [s.cursor_key for s in t.history(run).steps] == ["work", "work#1"]
    assert t.history(run).run.status is RunStatus.RUNNING  # held by the dead attempt
    await t.recover()
    assert await t.result(run) == [0, -1, -2, -3]
    assert executions == {0: 1, 1: 1, 2: 1, 3: 1}  # the memoized items did not run again
    assert [s.cursor_key for s in t.history(run).steps] == [key("work", i) for i in range(4)]
    replay(built, t.export(run)).check()


async def test_a_crash_after_the_first_item_to_finish_replays_in_item_order(
    iterflow_any_engine: TestEngine,
) -> None:
    t = iterflow_any_engine
    n = 4
    executions: Counter[int] = Counter()
    finished: list[int] = []
    work = reverse_order_work(n, executions, finished, t)
    built = flow("rev-crash").input(Items).map("work", work, over=lambda x: x.items).build()
    t.crash_after(key("work", n - 1))  # the last item finishes first; its memo is committed
    run = await t.start(built, Items(items=list(range(n))))
    assert [s.cursor_key for s in t.history(run).steps] == [key("work", n - 1)]
    await t.recover()
    assert await t.result(run) == [0, 1, 4, 9]
    assert executions[n - 1] == 1  # memoized before the crash: replayed, not run again
    steps = t.history(run).steps
    assert [(s.position, s.cursor_key) for s in steps] == [(i, key("work", i)) for i in range(n)]
    replay(built, t.export(run)).check()


async def test_no_items_give_an_empty_list_and_a_map_in_a_loop_continues_the_keys(
    iterflow_any_engine: TestEngine,
) -> None:
    t = iterflow_any_engine

    async def double(i: int) -> int:
        return 2 * i

    async def load(x: Items) -> list[int]:
        return x.items

    none = flow("none").input(Items).map("double", double, over=lambda x: x.items).build()
    run = await t.start(none, Items(items=[]))
    assert await t.result(run) == []
    assert t.history(run).steps == ()

    looped = (
        flow("doubling")
        .input(Items)
        .step("load", load)
        .loop(
            until=lambda xs: xs[0] >= 4,
            body=lambda b: b.map("double", double, over=lambda xs: xs, concurrency=2),
        )
        .build()
    )
    run = await t.start(looped, Items(items=[1, 2, 3]))
    assert await t.result(run) == [4, 8, 12]
    keys = [s.cursor_key for s in t.history(run).steps]
    assert keys == ["load", *(key("double", i) for i in range(6))]  # 2 iterations of 3 items
    replay(looped, t.export(run)).check()


async def test_each_item_has_its_own_retries(iterflow_any_engine: TestEngine) -> None:
    t = iterflow_any_engine
    executions: Counter[int] = Counter()

    async def work(i: int) -> int:
        executions[i] += 1
        if i == 1 and executions[i] == 1:
            raise ConnectionError("flaky")
        return i

    retried = flow("retried").input(Items)
    built = retried.map(
        "work", work, over=lambda x: x.items, concurrency=2, retries=2, backoff="10ms"
    )
    run = await t.start(built.build(), Items(items=[0, 1, 2, 3]))
    if t.clock is not None:  # in memory, the backoff suspends the run until the clock moves
        assert t.history(run).run.status is RunStatus.RETRYING
        await t.advance("1s")
    assert await t.result(run) == [0, 1, 2, 3]
    assert executions == {0: 1, 1: 2, 2: 1, 3: 1}
    attempts = {s.cursor_key: s.attempts for s in t.history(run).steps}
    assert attempts == {"work": 1, "work#1": 2, "work#2": 1, "work#3": 1}


async def test_a_failed_item_fails_the_run_after_the_other_items(
    iterflow_any_engine: TestEngine,
) -> None:
    t = iterflow_any_engine

    async def work(i: int) -> int:
        if i == 2:
            raise NonRetryable(f"item {i} is bad", code="BAD_ITEM")
        return i

    built = flow("one-bad").input(Items).map("work", work, over=lambda x: x.items).build()
    run = await t.start(built, Items(items=[0, 1, 2, 3]))
    with pytest.raises(FlowError) as info:
        await t.result(run)
    assert info.value.error_code == "BAD_ITEM"
    statuses = [(s.cursor_key, s.status) for s in t.history(run).steps]
    assert statuses == [
        ("work", StepStatus.OK),
        ("work#1", StepStatus.OK),
        ("work#2", StepStatus.FAILED),
        ("work#3", StepStatus.OK),
    ]


async def test_a_map_over_a_child_flow_keeps_at_most_concurrency_children_live(
    iterflow_any_engine: TestEngine,
) -> None:
    t = iterflow_any_engine
    child = flow("hold").input(int).signal("go", Go, merge=lambda i, go: i * go.factor).build()
    parent = flow("fan").input(Items).map(child, over=lambda x: x.items, concurrency=2).build()
    t.register(child)
    run = await t.start(parent, Items(items=[1, 2, 3, 4, 5]))
    seen: set[uuid.UUID] = set()
    peak = 0
    while (await t.status(run)).run.status is not RunStatus.DONE:
        page = await t.engine.list_runs(name="hold", parent=run, limit=100)
        live = [r for r in page.runs if not r.is_terminal]
        seen.update(r.id for r in page.runs)
        peak = max(peak, len(live))
        assert 1 <= len(live) <= 2, [r.status for r in page.runs]
        newest = max(live, key=lambda r: r.parent_cursor_key or "")
        await t.signal(newest.id, "go", {"factor": 10})  # the newest finishes first
    assert peak == 2 and len(seen) == 5
    assert await t.result(run) == [10, 20, 30, 40, 50]
    keys = [s.cursor_key for s in t.history(run).steps]
    assert sorted(keys) == sorted(key("invoke:hold@1", i) for i in range(5))
    assert [s.position for s in t.history(run).steps] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("items", "code"),
    [
        (["ok", "a\x00b"], "PAYLOAD_INVALID"),
        (["\udc80"], "PAYLOAD_INVALID"),
        ([1.5, float("nan")], "PAYLOAD_INVALID"),
        ({"a", "b"}, "MAP_ITEMS_INVALID"),
        ("abc", "MAP_ITEMS_INVALID"),
    ],
    ids=["nul", "lone-surrogate", "nan", "set", "str"],
)
async def test_hostile_items_fail_the_run_with_a_typed_error_before_any_item_runs(
    iterflow_any_engine: TestEngine, items: object, code: str
) -> None:
    t = iterflow_any_engine
    ran: list[object] = []

    async def work(item: str) -> str:
        ran.append(item)
        return "x"

    built = flow("hostile").input(Items).map("work", work, over=lambda x: items).build()
    run = await t.start(built, Items(items=[]))
    with pytest.raises(FlowError) as info:
        await t.result(run)
    assert info.value.error_code == code
    detail = t.history(run)
    assert detail.run.status is RunStatus.FAILED
    assert detail.run.error is not None and detail.run.error["code"] == code
    assert detail.steps == () and ran == []
