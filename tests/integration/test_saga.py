"""Sagas through the public API, on PostgreSQL (with a live worker) and on the in-memory engine:
``ctx.step(..., compensate=)`` and the builder's ``.step(..., compensate=)``; compensations run
in reverse order, once each, as durable steps, when the run fails or is canceled with
``compensate=True``; a compensation that fails for good ends the run ``compensation_failed``,
which ``engine.retry`` resumes from that compensation. Side effects are counted per call."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from iterflow import Engine, FlowContext, flow
from iterflow.cli import main
from iterflow.core.decisions import child_run_id
from iterflow.core.errors import FlowDefinitionError, FlowError, StepFailed
from iterflow.core.models import RunStatus, StepKind, StepStatus
from tests.integration.flows import Approval, eventually, settle

ROOT = Path(__file__).resolve().parents[2]


class Trip(BaseModel):
    fail_at: str = ""


class Charge(BaseModel):
    charge_id: str
    cents: int


def _booker(calls: list[str]) -> tuple[Any, Any]:
    def book(what: str) -> str:
        calls.append(f"book {what}")
        return f"{what}-1"

    def cancel(booking: str) -> None:
        calls.append(f"cancel {booking}")

    return book, cancel


async def _reach(engine: Engine, run_id: uuid.UUID, status: RunStatus) -> None:
    async def check() -> bool:
        if engine.database_url == "memory://":
            await engine.drain()
        return (await engine.status(run_id)).run.status is status

    await eventually(check, what=f"run {run_id} to be {status.value}")


def _record(error: dict[str, Any] | None) -> dict[str, Any]:
    assert error is not None
    record = error["details"]["compensation"]
    assert isinstance(record, dict)
    return record


async def test_a_failed_run_compensates_its_completed_steps_in_reverse_once(eng: Engine) -> None:
    calls: list[str] = []
    book, cancel = _booker(calls)

    def pay(trip: Trip) -> None:
        calls.append("pay")
        raise ValueError("card declined")

    @eng.flow("trip", input=Trip, output=str)
    async def trip(ctx: FlowContext, t: Trip) -> str:
        await ctx.step("flight", book, "flight", compensate=cancel)
        await ctx.step("note", book, "note")  # no compensation: never undone
        await ctx.step("hotel", book, "hotel", compensate=cancel)
        await ctx.step("pay", pay, t)  # fails: not completed, not compensated
        return "booked"

    run_id = (await trip.start(Trip())).run_id
    detail = await settle(eng, run_id)

    assert calls == [
        "book flight",
        "book note",
        "book hotel",
        "pay",
        "cancel hotel-1",
        "cancel flight-1",
    ]
    run = detail.run
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error["code"] == "STEP_FAILED"
    assert "card declined" in run.error["message"]
    assert _record(run.error) == {
        "status": "compensated",
        "steps": ["compensate:hotel", "compensate:flight"],
    }
    rows = [(s.position, s.cursor_key, s.kind, s.label, s.status) for s in detail.steps][4:]
    assert rows == [
        (4, "compensate:hotel", StepKind.COMPENSATE, "hotel", StepStatus.OK),
        (5, "compensate:flight", StepKind.COMPENSATE, "flight", StepStatus.OK),
    ]
    failed = [e for e in detail.events if e.type == "failed"]
    assert [e.data for e in failed] == [{"code": "STEP_FAILED", "compensation": _record(run.error)}]
    with pytest.raises(StepFailed) as raised:
        await trip.result(run_id, timeout=5)
    assert raised.value.details["compensation"]["status"] == "compensated"


async def test_a_run_without_compensations_fails_as_before(eng: Engine) -> None:
    def boom() -> None:
        raise ValueError("x")

    @eng.flow("plain", input=int, output=int)
    async def plain(ctx: FlowContext, n: int) -> int:
        await ctx.step("boom", boom)
        return n

    detail = await settle(eng, (await plain.start(1)).run_id)
    assert detail.run.status is RunStatus.FAILED and detail.run.error is not None
    assert "details" not in detail.run.error
    assert [e.data for e in detail.events if e.type == "failed"] == [{"code": "STEP_FAILED"}]


async def test_each_compensation_has_its_own_retries_and_receives_the_typed_result(
    eng: Engine,
) -> None:
    refunds: list[Charge] = []
    tries = Counter[str]()

    def charge(cents: int) -> Charge:
        return Charge(charge_id="ch-1", cents=cents)

    async def refund(c: Charge) -> str:
        tries["refund"] += 1
        if tries["refund"] < 3:
            raise ConnectionError("gateway down")
        refunds.append(c)
        return f"re-{c.charge_id}"

    def ship(cents: int) -> None:
        raise ValueError("no stock")

    @eng.flow("order", input=int, output=int)
    async def order(ctx: FlowContext, cents: int) -> int:
        await ctx.step("charge", charge, cents, compensate=refund, retries=2, backoff=0.01)
        await ctx.step("ship", ship, cents)
        return cents

    detail = await settle(eng, (await order.start(250)).run_id)

    assert refunds == [Charge(charge_id="ch-1", cents=250)]
    comp = detail.steps[-1]
    assert (comp.cursor_key, comp.status, comp.attempts) == ("compensate:charge", "ok", 3)
    assert comp.output == "re-ch-1"
    assert detail.run.status is RunStatus.FAILED
    assert _record(detail.run.error)["steps"] == ["compensate:charge"]


async def test_a_failing_compensation_ends_compensation_failed_and_retry_resumes_it(
    eng: Engine,
) -> None:
    calls: list[str] = []
    broken = {"refund": True}

    def step(name: str) -> str:
        calls.append(name)
        return name

    def undo(name: str) -> None:
        calls.append(f"undo {name}")
        if name == "b" and broken["refund"]:
            raise RuntimeError("refund API down")

    def fail() -> None:
        calls.append("fail")
        raise ValueError("boom")

    @eng.flow("fragile", input=int, output=int)
    async def fragile(ctx: FlowContext, n: int) -> int:
        await ctx.step("a", step, "a", compensate=undo)
        await ctx.step("b", step, "b", compensate=undo, retries=1, backoff=0.01)
        await ctx.step("c", step, "c", compensate=undo)
        await ctx.step("fail", fail)
        return n

    run_id = (await fragile.start(1)).run_id
    detail = await settle(eng, run_id)

    assert detail.run.status is RunStatus.COMPENSATION_FAILED
    assert calls == ["a", "b", "c", "fail", "undo c", "undo b", "undo b"]
    record = _record(detail.run.error)
    assert detail.run.error is not None and detail.run.error["code"] == "STEP_FAILED"
    assert record["status"] == "failed" and record["steps"] == ["compensate:c"]
    assert record["failed"]["step"] == "compensate:b"
    assert "refund API down" in record["failed"]["error"]["message"]
    ended = [e for e in detail.events if e.type == "compensation_failed"]
    assert [e.data for e in ended] == [{"code": "STEP_FAILED", "compensation": record}]
    with pytest.raises(FlowError, match="boom"):
        await fragile.result(run_id, timeout=5)
    # a terminal status: a cancel does not touch it
    assert (await eng.cancel(run_id)).kind == "already_terminal"
    why = await eng.explain(run_id)
    assert why.state == "terminal" and "(STEP_FAILED); compensations run: compensate:c;" in (
        why.summary
    )
    assert "compensate:b failed ([STEP_FAILED] " in why.summary
    assert why.summary.endswith("engine.retry resumes it")

    broken["refund"] = False
    calls.clear()
    assert (await eng.retry(run_id)).kind == "queued"
    detail = await settle(eng, run_id)

    # the body replays its memos (nothing runs again), "undo c" is not repeated
    assert calls == ["undo b", "undo a"]
    assert detail.run.status is RunStatus.FAILED
    assert _record(detail.run.error) == {
        "status": "compensated",
        "steps": ["compensate:c", "compensate:b", "compensate:a"],
    }


async def test_retry_of_a_compensated_run_redoes_the_undone_steps(eng: Engine) -> None:
    calls: list[str] = []
    flaky = {"fail": True}

    def step(name: str) -> str:
        calls.append(name)
        if name == "pay" and flaky["fail"]:
            raise ValueError("declined")
        return name

    def undo(name: str) -> None:
        calls.append(f"undo {name}")

    @eng.flow("redo", input=int, output=str)
    async def redo(ctx: FlowContext, n: int) -> str:
        await ctx.step("lookup", step, "lookup")  # before the first compensated step: kept
        await ctx.step("reserve", step, "reserve", compensate=undo)
        return await ctx.step("pay", step, "pay")

    run_id = (await redo.start(1)).run_id
    await settle(eng, run_id)
    assert calls == ["lookup", "reserve", "pay", "undo reserve"]

    flaky["fail"] = False
    calls.clear()
    assert (await eng.retry(run_id)).kind == "queued"
    detail = await settle(eng, run_id)

    assert detail.run.status is RunStatus.DONE and detail.run.output == "pay"
    assert calls == ["reserve", "pay"]
    assert [s.cursor_key for s in detail.steps] == ["lookup", "reserve", "pay"]
    retried = [e.data for e in detail.events if e.type == "retried"]
    assert retried == [{"from": 1}]


async def test_cancel_with_compensate_undoes_the_completed_steps_and_cancels(
    eng: Engine,
) -> None:
    calls: list[str] = []
    book, cancel = _booker(calls)

    @eng.flow("child_wait", input=int, output=int, signals={"go": Approval})
    async def child(ctx: FlowContext, n: int) -> int:
        await ctx.step("child-book", book, "child", compensate=cancel)
        await ctx.signal("go", Approval)
        return n

    @eng.flow("waits", input=int, output=str, signals={"go": Approval})
    async def waits(ctx: FlowContext, n: int) -> str:
        await ctx.step("flight", book, "flight", compensate=cancel)
        await ctx.step("hotel", book, "hotel", compensate=cancel)
        if n:
            await ctx.invoke(child, n)
        else:
            await ctx.signal("go", Approval)
        await ctx.step("car", book, "car", compensate=cancel)
        return "ok"

    run_id = (await waits.start(0)).run_id
    await _reach(eng, run_id, RunStatus.AWAITING_SIGNAL)

    result = await eng.cancel(run_id, reason="customer changed plans", compensate=True)

    assert (result.kind, result.status) == ("canceling", RunStatus.PENDING)
    detail = await settle(eng, run_id)
    assert calls == ["book flight", "book hotel", "cancel hotel-1", "cancel flight-1"]
    run = detail.run
    assert run.status is RunStatus.CANCELED and run.error is not None
    assert (run.error["code"], run.error["message"]) == ("RUN_CANCELED", "customer changed plans")
    record = {"status": "compensated", "steps": ["compensate:hotel", "compensate:flight"]}
    assert _record(run.error) == record
    types = [e.type for e in detail.events]
    assert types[-2:] == ["cancel_requested", "canceled"]
    assert detail.events[-1].data == {
        "reason": "customer changed plans",
        "root": str(run_id),
        "compensation": record,
    }
    # the signal wait the run stopped at has no memo; the compensations follow it
    assert [s.cursor_key for s in detail.steps] == [
        "flight",
        "hotel",
        "compensate:hotel",
        "compensate:flight",
    ]
    # its completed steps were undone: there is nothing to resume
    resumed = await eng.retry(run_id, resume=True)
    assert (resumed.kind, resumed.status) == ("not_failed", RunStatus.CANCELED)

    # with a child: the child is canceled (without its own compensations), the parent undone
    calls.clear()
    parent = (await waits.start(1)).run_id
    await _reach(eng, parent, RunStatus.AWAITING_CHILD)
    kid = child_run_id(parent, "invoke:child_wait@1")
    await _reach(eng, kid, RunStatus.AWAITING_SIGNAL)
    assert (await eng.cancel(parent, compensate=True)).kind == "canceling"
    detail = await settle(eng, parent)
    assert detail.run.status is RunStatus.CANCELED
    assert (await eng.status(kid)).run.status is RunStatus.CANCELED
    assert calls == ["book flight", "book hotel", "book child", "cancel hotel-1", "cancel flight-1"]


async def test_cancel_with_compensate_of_a_run_with_nothing_done_just_cancels(
    eng: Engine,
) -> None:
    @eng.flow("idle", input=int, output=int, signals={"go": Approval})
    async def idle(ctx: FlowContext, n: int) -> int:
        await ctx.signal("go", Approval)
        return n

    run_id = (await idle.start(1)).run_id
    await _reach(eng, run_id, RunStatus.AWAITING_SIGNAL)
    assert (await eng.cancel(run_id, compensate=True)).kind == "canceling"
    detail = await settle(eng, run_id)
    assert detail.run.status is RunStatus.CANCELED
    assert _record(detail.run.error) == {"status": "compensated", "steps": []}
    assert (await eng.cancel(run_id, compensate=True)).kind == "already_terminal"


async def test_steps_of_a_gather_are_undone_in_reverse_argument_order(eng: Engine) -> None:
    calls: list[str] = []
    book, cancel = _booker(calls)

    def fail() -> None:
        raise ValueError("x")

    @eng.flow("fan", input=int, output=int)
    async def fan(ctx: FlowContext, n: int) -> int:
        await ctx.gather(
            ctx.step("a", book, "a", compensate=cancel),
            ctx.step("b", book, "b", compensate=cancel),
            ctx.step("c", book, "c", compensate=cancel),
        )
        await ctx.step("fail", fail)
        return n

    detail = await settle(eng, (await fan.start(1)).run_id)
    assert calls[3:] == ["cancel c-1", "cancel b-1", "cancel a-1"]
    assert _record(detail.run.error)["steps"] == [
        "compensate:c",
        "compensate:b",
        "compensate:a",
    ]


async def test_the_builder_step_takes_compensate_and_shows_it(eng: Engine) -> None:
    calls: list[str] = []

    def reserve(n: int) -> int:
        calls.append(f"reserve {n}")
        return n * 10

    def release(held: int) -> None:
        calls.append(f"release {held}")

    def ship(held: int) -> int:
        raise ValueError("no truck")

    built = (
        flow("built_saga")
        .input(int)
        .step("reserve", reserve, compensate=release)
        .step("ship", ship)
        .build()
    )
    handle = eng.register(built)
    node = next(n for n in built.graph.nodes if n.label == "reserve")
    assert "compensate=" in node.detail and "release" in node.detail

    detail = await settle(eng, (await handle.start(4)).run_id)

    assert calls == ["reserve 4", "release 40"]
    assert detail.run.status is RunStatus.FAILED
    assert _record(detail.run.error)["steps"] == ["compensate:reserve"]


async def test_bad_compensate_values_are_definition_errors(eng: Engine) -> None:
    with pytest.raises(FlowDefinitionError, match="compensate must be callable"):
        flow("bad_saga").input(int).step("s", lambda n: n, compensate=42)  # type: ignore[arg-type]

    def one() -> int:
        return 1

    @eng.flow("bad_comp", input=int, output=int)
    async def bad_comp(ctx: FlowContext, n: int) -> int:
        return await ctx.step("s", one, compensate="nope")  # type: ignore[arg-type]

    detail = await settle(eng, (await bad_comp.start(1)).run_id)
    assert detail.run.error is not None and detail.run.error["code"] == "FLOW_DEFINITION_INVALID"
    with pytest.raises(Exception, match="compensate must be True or False"):
        await eng.cancel(detail.run.id, compensate="yes")  # type: ignore[arg-type]


async def test_the_docs_example_runs() -> None:
    spec = importlib.util.spec_from_file_location(
        "saga_example", ROOT / "docs" / "examples" / "saga.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cancelled, record, canceled = await module.main()
    assert cancelled == ["HO-Oslo", "FL-Oslo", "HO-Rome", "FL-Rome"]
    assert record == {"status": "compensated", "steps": ["compensate:hotel", "compensate:flight"]}
    assert canceled == "canceled"


def test_the_docs_section_shows_the_example() -> None:
    page = (ROOT / "docs" / "flow-control.md").read_text()
    section = page.split("## Compensation (sagas)", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert (ROOT / "docs" / "examples" / "saga.py").read_text() in blocks


def test_flowctl_cancels_with_compensate_and_shows_and_explains_the_record(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[str] = []
    book, cancel = _booker(calls)

    def define(engine: Engine) -> Any:
        @engine.flow("cli_saga", input=int, output=int, signals={"go": Approval})
        async def cli_saga(ctx: FlowContext, n: int) -> int:
            await ctx.step("flight", book, "flight", compensate=cancel)
            await ctx.signal("go", Approval)
            return n

        return cli_saga

    async def until(run_id: uuid.UUID | None, status: RunStatus) -> uuid.UUID:
        async with Engine(database_url, pool_size=2) as engine:
            handle = define(engine)
            await engine.listen(concurrency=1)
            rid = run_id or (await handle.start(1)).run_id
            await _reach(engine, rid, status)
            return rid

    run_id = asyncio.run(until(None, RunStatus.AWAITING_SIGNAL))
    url = ["--database-url", database_url]
    assert main([*url, "cancel", str(run_id), "--compensate", "--reason", "ops"]) == 0
    assert capsys.readouterr().out.strip() == "canceling"
    asyncio.run(until(run_id, RunStatus.CANCELED))
    assert calls == ["book flight", "cancel flight-1"]

    by_filter = asyncio.run(until(None, RunStatus.AWAITING_SIGNAL))  # the filter's form
    assert main([*url, "cancel", "--flow", "cli_saga", "--compensate"]) == 0
    out = capsys.readouterr().out.strip()  # the first run is already canceled
    assert out == "2 run(s) matched; cancel: 1 (already_terminal 1, canceling 1)"
    asyncio.run(until(by_filter, RunStatus.CANCELED))
    assert calls == ["book flight", "cancel flight-1", "book flight", "cancel flight-1"]
    assert main([*url, "show", str(run_id)]) == 0
    shown = capsys.readouterr().out
    assert "status=canceled" in shown and "compensate:flight" in shown
    assert main([*url, "explain", str(run_id)]) == 0
    assert "(RUN_CANCELED); compensations run: compensate:flight" in capsys.readouterr().out
