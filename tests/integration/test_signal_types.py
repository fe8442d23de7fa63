"""Typed signals (issue 15) and signals from a web tier that registers other flow versions
(issue 12).

* A ``Signal`` descriptor is declared on a flow (``signals=[approve]``, the builder's
  ``.signal(approve)``), awaited (``ctx.signal(approve)`` returns the model at run time) and sent
  (``handle.signal``/``engine.signal`` with the descriptor); the name-and-model forms keep
  working and mismatches are refused with typed errors.
* ``engine.signal`` on a process that does not register the run's version validates against the
  descriptor's or the newest registered version's model, else stores the payload after the JSON
  checks only; the worker refuses an invalid one when the run consumes it
  (``SIGNAL_PAYLOAD_INVALID`` naming the signal).

Each flow case runs on real PostgreSQL (with a worker) and on the in-memory store; a "web tier"
is a second engine on the same database. The static typing of these calls is checked by
``tests/typing/`` (``tests/typing/check.py``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from iterflow import Engine, FlowContext, FlowError, Signal, describe, flow
from iterflow.core.errors import (
    FlowDefinitionError,
    InputInvalid,
    PayloadInvalid,
    PayloadTooLarge,
    SignalPayloadInvalid,
    SignalUnknown,
)
from iterflow.core.models import RunStatus, StepStatus
from tests.integration.flows import eventually, settle

ROOT = Path(__file__).resolve().parents[2]


class Order(BaseModel):
    id: str = "A-1"


class Approval(BaseModel):
    by: str


class Rejection(BaseModel):
    reason: str


class Out(BaseModel):
    by: str
    kind: str


approve = Signal("approve", Approval)


@contextlib.asynccontextmanager
async def web_tier(eng: Engine) -> AsyncIterator[Engine]:
    """Another process's engine on ``eng``'s database, registering its own flows (none yet) and
    running no worker. In memory, "the same database" is the same store object."""
    if eng.database_url == "memory://":
        web = Engine.in_memory()
        web._memory, web._local = eng._memory, eng._local  # one store shared by two engines
    else:
        web = Engine(eng.database_url, pool_size=2)
    async with web:
        yield web


async def waiting(eng: Engine, run_id: Any) -> None:
    """Let the run reach its signal wait (in memory: drain its wake-ups)."""
    if eng.database_url == "memory://":
        await eng.drain()

    async def parked() -> bool:
        return (await eng.status(run_id)).run.status is RunStatus.AWAITING_SIGNAL

    await eventually(parked, what="the run to wait for its signal")


# --- descriptors on one engine --------------------------------------------------------------------


async def test_a_descriptor_is_declared_awaited_and_sent_with_its_model(eng: Engine) -> None:
    seen: list[type] = []

    @eng.flow("typed-signal", input=Order, output=Out, signals=[approve])
    async def body(ctx: FlowContext, order: Order) -> Out:
        approval = await ctx.signal(approve, timeout="1h")
        seen.append(type(approval))
        again = await ctx.signal("approve", Approval)  # the name-and-model form, same signal
        return Out(by=f"{approval.by}+{again.by}", kind=type(again).__name__)

    assert body.definition.signals == {"approve": Approval}
    run = await body.start(Order())
    first = await body.signal(run.run_id, approve, Approval(by="ana"))
    second = await eng.signal(run.run_id, approve, Approval(by="bo"), idempotency_key="k")
    assert first.kind in ("delivered", "buffered") and second.kind in ("delivered", "buffered")
    assert (await eng.signal(run.run_id, approve, Approval(by="x"), idempotency_key="k")).kind == (
        "duplicate"
    )
    detail = await settle(eng, run.run_id)
    assert detail.run.status is RunStatus.DONE, detail.run.error
    assert await body.result(run.run_id) == Out(by="ana+bo", kind="Approval")
    assert set(seen) == {Approval}  # a model at run time, on the first run and on replays
    assert [s.name for s in detail.signals] == ["approve", "approve"]


async def test_the_builder_takes_a_descriptor(eng: Engine) -> None:
    def merge(order: Order, approval: Approval) -> Out:
        return Out(by=approval.by, kind=order.id)

    built = flow("built-signal").input(Order).signal(approve, merge=merge).build()
    assert built.signals == {"approve": Approval}
    handle = eng.register(built)
    run = await handle.start(Order(id="B-2"))
    await waiting(eng, run.run_id)
    assert (await handle.signal(run.run_id, approve, Approval(by="cy"))).kind == "delivered"
    await settle(eng, run.run_id)
    assert await handle.result(run.run_id) == Out(by="cy", kind="B-2")


async def test_awaiting_with_another_model_fails_the_run_at_that_call(eng: Engine) -> None:
    @eng.flow("wrong-model", input=Order, output=str, signals=[approve])
    async def body(ctx: FlowContext, order: Order) -> str:
        rejection = await ctx.signal("approve", Rejection)
        return rejection.reason

    run = await body.start(Order())
    detail = await settle(eng, run.run_id)
    assert detail.run.status is RunStatus.FAILED
    assert detail.run.error is not None
    assert detail.run.error["code"] == "FLOW_DEFINITION_INVALID"
    assert "declared with" in detail.run.error["message"]
    assert "Signal descriptor" in detail.run.error["message"]
    assert not detail.steps  # refused before the wait took a position


async def test_awaiting_an_undeclared_descriptor_is_signal_unknown(eng: Engine) -> None:
    @eng.flow("undeclared", input=Order, output=str)
    async def body(ctx: FlowContext, order: Order) -> str:
        return (await ctx.signal(approve)).by

    run = await body.start(Order())
    detail = await settle(eng, run.run_id)
    assert detail.run.error is not None and detail.run.error["code"] == "SIGNAL_UNKNOWN"


async def test_sending_refuses_a_payload_or_descriptor_that_does_not_fit(eng: Engine) -> None:
    @eng.flow("refusals", input=Order, output=str, signals=[approve])
    async def body(ctx: FlowContext, order: Order) -> str:
        return (await ctx.signal(approve)).by

    @eng.flow("other", input=Order, output=str)
    async def other(ctx: FlowContext, order: Order) -> str:
        return "x"

    run = await body.start(Order())
    with pytest.raises(SignalPayloadInvalid, match="payload for signal 'approve' is invalid"):
        await eng.signal(run.run_id, approve, {"nope": 1})  # type: ignore[arg-type]
    with pytest.raises(SignalPayloadInvalid, match="declares signal 'approve' with Approval"):
        await eng.signal(run.run_id, Signal("approve", Rejection), Rejection(reason="no"))
    with pytest.raises(SignalUnknown):
        await eng.signal(run.run_id, Signal("other", Approval), Approval(by="a"))
    with pytest.raises(InputInvalid, match="is a run of flow refusals@1, not of other@1"):
        await other.signal(run.run_id, approve, Approval(by="a"))
    assert not (await eng.status(run.run_id)).signals  # nothing was stored


def test_declaring_descriptors_refuses_mistakes_when_the_flow_is_defined() -> None:
    engine = Engine.in_memory()

    async def body(ctx: FlowContext, order: Order) -> str:
        return ""

    with pytest.raises(FlowDefinitionError, match="declared with Approval and with Rejection"):
        engine.flow(
            "two-models",
            input=Order,
            output=str,
            signals=[approve, Signal("approve", Rejection)],
        )(body)
    with pytest.raises(FlowDefinitionError, match="takes Signal descriptors"):
        engine.flow("not-a-descriptor", input=Order, output=str, signals=[Approval])(body)  # type: ignore[list-item]
    with pytest.raises(FlowDefinitionError, match="invalid signal name"):
        Signal("no spaces", Approval)
    with pytest.raises(FlowDefinitionError, match="not a payload model"):
        Signal("approve", object())  # type: ignore[arg-type]
    with pytest.raises(FlowDefinitionError, match="one signal name has one payload model"):
        flow("b").input(Order).signal(approve).signal("approve", Rejection)
    with pytest.raises(FlowDefinitionError, match="carries its payload model"):
        flow("b").input(Order).signal(approve, Approval)  # type: ignore[call-overload]
    engine.flow("same-twice", input=Order, output=str, signals=[approve, approve])(body)
    assert repr(approve) == "Signal('approve', Approval)"


async def test_describe_records_a_descriptor_wait() -> None:
    engine = Engine.in_memory()

    @engine.flow("described", input=Order, output=str, signals=[approve])
    async def body(ctx: FlowContext, order: Order) -> str:
        approval = await ctx.signal(approve, timeout="1d")
        return approval.by

    graph = await describe(body)
    signal_nodes = [n for n in graph.nodes if n.kind == "signal"]
    assert [(n.label, n.detail) for n in signal_nodes] == [("approve", "Approval, timeout=1d")]


# --- a web tier that registers other versions (issue 12) ----------------------------------------


class ApprovalV1(BaseModel):
    by: str


class ApprovalV2(BaseModel):
    by: str
    note: str


def versions(eng: Engine) -> Any:
    """Register v2 of flow "versioned" on the worker engine; it waits for ``approve``."""

    @eng.flow("versioned", version=2, input=Order, output=str, signals={"approve": ApprovalV2})
    async def v2(ctx: FlowContext, order: Order) -> str:
        approval = await ctx.signal("approve", ApprovalV2)
        return f"{approval.by}: {approval.note}"

    return v2


async def test_a_web_tier_registering_only_v1_signals_a_v2_run(eng: Engine) -> None:
    v2 = versions(eng)
    run = await v2.start(Order())
    await waiting(eng, run.run_id)
    async with web_tier(eng) as web:

        @web.flow("versioned", version=1, input=Order, output=str, signals={"approve": ApprovalV1})
        async def v1(ctx: FlowContext, order: Order) -> str:
            return (await ctx.signal("approve", ApprovalV1)).by

        # validated against the newest version registered here (v1): refused before storing
        with pytest.raises(SignalPayloadInvalid):
            await web.signal(run.run_id, "approve", {"note": "no by"})
        assert not (await web.status(run.run_id)).signals
        # valid for v1, stored, then validated again (as v2's model) when the run consumes it
        sent = await web.signal(run.run_id, "approve", {"by": "ana", "note": "ok"})
        assert sent.kind == "delivered"
    detail = await settle(eng, run.run_id)
    assert detail.run.status is RunStatus.DONE, detail.run.error
    assert await v2.result(run.run_id) == "ana: ok"


async def test_an_engine_registering_nothing_defers_validation_to_the_worker(eng: Engine) -> None:
    v2 = versions(eng)
    good, bad = await v2.start(Order(id="good")), await v2.start(Order(id="bad"))
    await waiting(eng, good.run_id)
    await waiting(eng, bad.run_id)
    async with web_tier(eng) as web:
        assert (await web.signal(good.run_id, "approve", {"by": "ana", "note": "n"})).kind == (
            "delivered"
        )
        # unknown here: checked as storable JSON only, hostile data still refused
        hostile: list[tuple[type[FlowError], Any]] = [
            (PayloadInvalid, {"by": math.nan}),
            (PayloadInvalid, {"by": "nul\x00"}),
            (PayloadInvalid, {"by": "\ud800"}),
            (PayloadInvalid, {"by": object()}),
            (PayloadTooLarge, {"by": "x" * (web.settings.max_payload_bytes + 1)}),
        ]
        deep: Any = "leaf"
        for _ in range(5000):
            deep = [deep]
        hostile.append((PayloadInvalid, deep))
        for error, payload in hostile:
            with pytest.raises(error):
                await web.signal(bad.run_id, "approve", payload)
        assert not (await web.status(bad.run_id)).signals
        # a payload v2 refuses is stored, and refused by the worker when the run consumes it
        assert (await web.signal(bad.run_id, "approve", {"by": "bo"})).kind == "delivered"
        # a descriptor's model validates even here
        with pytest.raises(SignalPayloadInvalid):
            await web.signal(bad.run_id, Signal("approve", ApprovalV2), {"by": "x"})  # type: ignore[arg-type]
    done = await settle(eng, good.run_id)
    assert done.run.status is RunStatus.DONE and await v2.result(good.run_id) == "ana: n"
    failed = await settle(eng, bad.run_id)
    assert failed.run.status is RunStatus.FAILED
    assert failed.run.error is not None
    assert failed.run.error["code"] == "SIGNAL_PAYLOAD_INVALID"
    assert re.search(r"signal 'approve'", failed.run.error["message"])
    (memo,) = failed.steps
    assert memo.status is StepStatus.FAILED and memo.cursor_key == "signal:approve"
    (consumed,) = failed.signals
    assert consumed.consumed_by == "signal:approve"  # consumed once, never retried in a loop


async def test_an_invalid_deferred_payload_can_be_caught_and_the_wait_repeated(
    eng: Engine,
) -> None:
    @eng.flow("catches", input=Order, output=str, signals=[approve])
    async def body(ctx: FlowContext, order: Order) -> str:
        while True:
            try:
                return (await ctx.signal(approve)).by
            except SignalPayloadInvalid:
                continue

    run = await body.start(Order())
    await waiting(eng, run.run_id)
    async with web_tier(eng) as web:  # registers nothing: both payloads are stored as sent
        assert (await web.signal(run.run_id, "approve", {"who": "?"})).kind == "delivered"
        assert (await web.signal(run.run_id, "approve", {"by": "dee"})).kind in (
            "delivered",
            "buffered",
        )
    await settle(eng, run.run_id)
    assert await body.result(run.run_id) == "dee"


# --- docs ----------------------------------------------------------------------------------------


def test_guide_signals_block_is_the_example() -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "guide.md").read_text(), re.S)
    assert (ROOT / "docs" / "examples" / "signals.py").read_text() in blocks


async def test_signals_example_runs(database_url: str) -> None:
    spec = importlib.util.spec_from_file_location(
        "signals_example", ROOT / "docs" / "examples" / "signals.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    decision = await module.main(database_url)
    assert decision.model_dump() == {"employee": "kim", "paid_cents": 1250, "decided_by": "ana"}
