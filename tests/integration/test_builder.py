"""Built flows on real PostgreSQL: end to end, the same business flow written both ways, and
``flowctl graph``."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from typing import Any

import pytest
from pydantic import BaseModel

from iterflow import Engine, FlowContext, StepContext, flow
from iterflow.core.decisions import AttemptOutcome
from iterflow.core.describe import describe
from iterflow.core.models import RunStatus
from iterflow.core.progress import graph_from_history, overlay
from tests.integration.flows import Approval, OrderIn, Receipt, eventually


class Signup(BaseModel):
    email: str


class Account(BaseModel):
    email: str
    checks: int = 0
    verified: bool = False
    plan: str = "free"
    mailed: bool = False


class Activation(BaseModel):
    plan: str


async def wait_status(engine: Engine, run_id: uuid.UUID, status: RunStatus) -> None:
    async def check() -> bool:
        return (await engine.status(run_id)).run.status is status

    await eventually(check, what=f"run {run_id} to be {status.value}")


async def test_a_built_flow_runs_end_to_end(engine: Engine) -> None:
    calls: Counter[str] = Counter()
    seen: list[tuple[str, int]] = []

    def create_account(signup: Signup, step: StepContext[Signup]) -> Account:
        calls["create"] += 1
        seen.append((step.input.email, step.attempt))
        if step.attempt == 1:
            raise ConnectionError("directory unavailable")
        return Account(email=signup.email)

    async def check_email(account: Account) -> Account:
        calls["check"] += 1
        checks = account.checks + 1
        return account.model_copy(update={"checks": checks, "verified": checks >= 2})

    def choose_plan(account: Account, activation: Activation) -> Account:
        return account.model_copy(update={"plan": activation.plan})

    async def provision(account: Account) -> Account:
        calls[f"provision-{account.plan}"] += 1
        return account

    async def send_mail(account: Account) -> Account:
        calls["mail"] += 1
        return account.model_copy(update={"mailed": True})

    def summary(account: Account) -> str:
        return f"{account.email} {account.plan} checks={account.checks} mailed={account.mailed}"

    mailer = engine.register(flow("welcome-mail").input(Account).step("send", send_mail).build())
    onboard = engine.register(
        flow("onboard-e2e")
        .input(Signup)
        .step("create-account", create_account, retries=2, backoff="10ms")
        .loop(
            until=lambda a: a.verified,
            body=lambda b: b.step("check-email", check_email).sleep("50ms", label="recheck"),
        )
        .signal("activate", Activation, merge=choose_plan)
        .branch(
            on=lambda a: a.plan,
            cases={"pro": lambda b: b.step("provision-pro", provision)},
            default=lambda b: b.step("provision-free", provision),
            label="plan",
        )
        .invoke(mailer)
        .output(summary)
        .build()
    )
    await engine.listen(concurrency=2)
    started = await onboard.start(Signup(email="ana@example.com"))
    await wait_status(engine, started.run_id, RunStatus.AWAITING_SIGNAL)
    assert (await engine.signal(started.run_id, "activate", {"plan": "pro"})).kind == "delivered"

    result = await onboard.result(started.run_id, timeout=20)
    assert result == "ana@example.com pro checks=2 mailed=True"
    assert calls == Counter(create=2, check=2, mail=1, **{"provision-pro": 1})
    assert seen == [("ana@example.com", 1), ("ana@example.com", 2)]
    detail = await engine.status(started.run_id)
    assert [(s.cursor_key, s.attempts) for s in detail.steps] == [
        ("create-account", 2),
        ("check-email", 1),
        ("sleep:recheck", 1),
        ("check-email#1", 1),
        ("sleep:recheck#1", 1),
        ("signal:activate", 1),
        ("provision-pro", 1),
        ("invoke:welcome-mail@1", 1),
    ]
    graph = onboard.definition.graph  # type: ignore[attr-defined]
    ov = overlay(graph, detail)
    assert ov.states == {
        "create-account": "done",
        "loop": "done",
        "check-email": "done",
        "sleep:recheck": "done",
        "signal:activate": "done",
        "branch:plan": "done",
        "provision-pro": "done",
        "invoke:welcome-mail@1": "done",
        "output": "done",
    }
    assert ov.counts["check-email"] == 2 and "provision-free" not in ov.states


# --- the same business flow, written both ways -------------------------------------------------


class Charged(BaseModel):
    order_id: str
    cents: int


def reserve(order: OrderIn) -> OrderIn:
    return order


async def charge(order: OrderIn) -> Charged:
    return Charged(order_id=order.order_id, cents=order.amount * 100)


def approve(charged: Charged, approval: Approval) -> Receipt:
    return Receipt(order_id=charged.order_id, charged=charged.cents, approved_by=approval.by)


BUILT_ORDER = (
    flow("order-built")
    .input(OrderIn)
    .step("reserve", reserve)
    .step("charge", charge, retries=1)
    .sleep("200ms", label="cool-off")
    .signal("approve", Approval, merge=approve)
    .build()
)


def register_raw_order(engine: Engine) -> Any:
    @engine.flow("order-raw", input=OrderIn, output=Receipt, signals={"approve": Approval})
    async def order(ctx: FlowContext, order: OrderIn) -> Receipt:
        reserved = await ctx.step("reserve", reserve, order)
        charged = await ctx.step("charge", charge, reserved, retries=1)
        await ctx.sleep("200ms", label="cool-off")
        approval = await ctx.signal("approve", Approval)
        return approve(charged, approval)

    return order


def rows(detail: Any) -> list[tuple[Any, ...]]:
    """Memo rows as stored, except a sleep's fire time (a clock reading of each run)."""
    return [
        (
            s.position,
            s.cursor_key,
            s.kind,
            s.label,
            s.status,
            sorted(s.output) if s.kind == "sleep" else s.output,
            s.error,
            s.attempts,
        )
        for s in detail.steps
    ]


async def test_the_same_flow_both_ways_has_the_same_graph_history_and_result(
    engine: Engine,
) -> None:
    built = engine.register(BUILT_ORDER)
    raw = register_raw_order(engine)
    described = await describe(raw, {"order_id": "o", "amount": 1})
    assert BUILT_ORDER.graph.nodes == described.nodes
    assert BUILT_ORDER.graph.edges == described.edges
    assert [n.id for n in described.nodes] == [
        "reserve",
        "charge",
        "sleep:cool-off",
        "signal:approve",
        "output",
    ]

    await engine.listen(concurrency=2)
    order = OrderIn(order_id="o-7", amount=5)
    runs = [(await h.start(order)).run_id for h in (built, raw)]
    for run_id in runs:
        await wait_status(engine, run_id, RunStatus.AWAITING_SIGNAL)
        await engine.signal(run_id, "approve", {"approved": True, "by": "ana"})
    results = [await h.result(r, timeout=20) for h, r in zip((built, raw), runs, strict=True)]
    assert results[0] == results[1] == Receipt(order_id="o-7", charged=500, approved_by="ana")
    details = [await engine.status(r) for r in runs]
    assert rows(details[0]) == rows(details[1])
    histories = [graph_from_history(d) for d in details]
    assert histories[0].nodes == histories[1].nodes == BUILT_ORDER.graph.nodes
    assert histories[0].edges == histories[1].edges == BUILT_ORDER.graph.edges


# --- flowctl graph ------------------------------------------------------------------------------


def test_flowctl_graph_prints_flows_and_overlays_runs(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from iterflow.cli import main
    from tests.integration import graph_app
    from tests.replay.flows import ONBOARD

    monkeypatch.setattr(graph_app.engine, "_settings", graph_app.engine.settings)  # restored after
    assert main(["graph", "tests.integration.graph_app:engine:replay-onboard"]) == 0
    mermaid = capsys.readouterr().out
    assert "flowchart TD" in mermaid and '{{"loop"}}' in mermaid

    app = "tests.integration.graph_app:engine"
    sample = '{"order_id": "x", "amount": 1}'
    assert main(["graph", f"{app}:replay-order", "--format", "json", "--input", sample]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["source"] == "describe"
    assert [n["id"] for n in described["nodes"]] == [
        "reserve",
        "charge",
        "sleep:cool-off",
        "signal:approve",
        "output",
    ]
    assert main(["graph", f"{app}:nope"]) == 2
    assert "not registered" in capsys.readouterr().err

    async def mid_loop() -> str:
        async with Engine(database_url) as eng:
            handle = eng.register(ONBOARD)
            run_id = (await handle.start({"email": "c@example.com"})).run_id
            assert await eng.worker.advance(run_id) == AttemptOutcome.SUSPENDED
            await asyncio.sleep(0.15)  # the 100 ms recheck is due
            assert await eng.worker.advance(run_id) == AttemptOutcome.SUSPENDED
            return str(run_id)

    run_id = asyncio.run(mid_loop())
    args = ["--database-url", database_url, "graph", "--run", run_id, "--format", "json"]
    assert main([*args, app]) == 0
    data = json.loads(capsys.readouterr().out)
    states = {n["id"]: (n["state"], n["count"]) for n in data["nodes"]}
    assert states["check"] == ("done", 2)
    assert states["sleep:recheck"] == ("waiting", 1)
    assert states["loop"] == ("waiting", 0)
    assert states["signal:activate"] == (None, 0)
    assert data["run"]["status"] == "sleeping"

    assert main(["--database-url", database_url, "graph", "--run", run_id]) == 0  # no engine
    history = capsys.readouterr().out
    assert "(history)" in history and "class" in history
