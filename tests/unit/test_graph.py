"""FlowGraph: static (builder), dry run (describe), history; run overlays; Mermaid and JSON."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from pydantic import BaseModel

from iterflow import FlowContext, flow
from iterflow.core.definition import FlowDef
from iterflow.core.describe import Placeholder, describe, graph_of, sample
from iterflow.core.graph import render, to_json, to_mermaid
from iterflow.core.models import (
    EventRecord,
    RunDetail,
    RunRecord,
    RunStatus,
    StepKind,
    StepRecord,
    StepStatus,
)
from iterflow.core.progress import graph_from_history, overlay

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Order(BaseModel):
    id: str
    amount: int


class Approval(BaseModel):
    ok: bool
    by: str = "ops"


class Receipt(BaseModel):
    id: str
    cents: int
    by: str


class Check(BaseModel):
    done: bool


def charge(amount: int) -> int:
    return amount * 100


def poll(order: Order) -> Check:
    return Check(done=True)


async def order_body(ctx: FlowContext, order: Order) -> Receipt:
    cents = await ctx.step("charge", charge, order.amount, retries=2)
    await ctx.sleep("1h", label="cool-off")
    approval = await ctx.signal("approve", Approval)
    if approval.ok:
        await ctx.step("ship", lambda: "shipped")
    return Receipt(id=order.id, cents=cents, by=approval.by)


ORDER = FlowDef(
    name="order",
    version=1,
    input_type=Order,
    output_type=Receipt,
    body=order_body,
    signals={"approve": Approval},
)


def run_record(status: RunStatus, **kw: object) -> RunRecord:
    fields: dict[str, object] = {
        "id": uuid.UUID(int=7),
        "name": "order",
        "version": 1,
        "status": status,
        "input": {},
        "output": None,
        "error": None,
        "idempotency_key": None,
        "parent_run_id": None,
        "parent_cursor_key": None,
        "tags": (),
        "priority": 0,
        "lease_owner": None,
        "lease_expires_at": None,
        "claims": 1,
        "stalled_claims": 0,
        "waiting_for": None,
        "wake_at": None,
        "created_at": T0,
        "updated_at": T0,
        "started_at": T0,
        "finished_at": None,
        "seq": 1,
    }
    fields.update(kw)
    return RunRecord(**fields)  # type: ignore[arg-type]


def memo(pos: int, kind: StepKind, label: str, key: str, status: StepStatus = StepStatus.OK):  # type: ignore[no-untyped-def]
    return StepRecord(pos, key, kind, label, status)


def suspended_at(key: str) -> EventRecord:
    return EventRecord(1, "suspended", key, {"reason": "x"}, T0)


def test_sample_values_for_dry_runs() -> None:
    assert sample(int) == 0 and sample(str) == "" and sample(bool) is False
    assert sample(list[int]) == [] and sample(int | None) is None
    assert sample(Approval) == Approval.model_construct(ok=False, by="ops")
    assert isinstance(sample(object), Placeholder)
    ph = Placeholder("x")
    assert not ph and ph.anything.deeper is ph and list(ph) == [] and ph + 1 is ph


async def test_describe_records_one_path_and_the_output() -> None:
    graph = await describe(ORDER, {"id": "o", "amount": 3})
    assert [(n.id, n.kind) for n in graph.nodes] == [
        ("charge", "step"),
        ("sleep:cool-off", "sleep"),
        ("signal:approve", "signal"),
        ("output", "output"),
    ]  # the sample approval is not ok: "ship" is not on the path walked
    assert [(e.src, e.dst) for e in graph.edges] == [
        ("charge", "sleep:cool-off"),
        ("sleep:cool-off", "signal:approve"),
        ("signal:approve", "output"),
    ]
    assert graph.source == "describe" and not graph.truncated
    assert graph.node("charge").detail == "retries=2"


async def test_describe_folds_loops_and_stops_runaway_ones() -> None:
    async def poller(ctx: FlowContext, order: Order) -> str:
        while not (await ctx.step("poll", poll, order)).done:  # samples are never done
            await ctx.sleep("1m", label="wait")
        return "ok"

    graph = await describe(
        FlowDef(name="poller", version=1, input_type=Order, output_type=str, body=poller),
        max_calls=20,
    )
    assert graph.truncated and "20 calls" in graph.note
    assert [n.id for n in graph.nodes] == ["poll", "sleep:wait"]
    assert {(e.src, e.dst) for e in graph.edges} == {("poll", "sleep:wait"), ("sleep:wait", "poll")}

    async def broken(ctx: FlowContext, order: Order) -> str:
        n = await ctx.step("n", charge, order.amount)
        return str(1 / n)

    crashed = await describe(
        FlowDef(name="broken", version=1, input_type=Order, output_type=str, body=broken)
    )
    assert crashed.truncated and "ZeroDivisionError" in crashed.note


async def test_graph_of_prefers_the_static_graph_of_built_flows() -> None:
    built = flow("b").input(Order).step("poll", poll).build()
    assert await graph_of(built) is built.graph
    assert (await graph_of(ORDER)).source == "describe"


def loop_flow():  # type: ignore[no-untyped-def]
    return (
        flow("loopy")
        .input(Order)
        .step("start", lambda o: o)
        .loop(until=lambda v: False, body=lambda b: b.step("poll", poll).sleep("1m", label="w"))
        .signal("approve", Approval)
        .build()
    )


def test_overlay_of_a_built_flow_maps_loop_iterations_to_their_nodes() -> None:
    built = loop_flow()
    steps = (
        memo(0, StepKind.STEP, "start", "start"),
        memo(1, StepKind.STEP, "poll", "poll"),
        memo(2, StepKind.SLEEP, "w", "sleep:w"),
        memo(3, StepKind.STEP, "poll", "poll#1"),
    )
    detail = RunDetail(
        run=run_record(RunStatus.SLEEPING), steps=steps, events=(suspended_at("sleep:w#1"),)
    )
    ov = overlay(built.graph, detail)
    assert ov.states == {
        "start": "done",
        "poll": "done",
        "sleep:w": "waiting",
        "loop": "waiting",
    }
    assert ov.counts == {"start": 1, "poll": 2, "sleep:w": 1}
    text = to_mermaid(built.graph, ov)
    assert "class n0,n2 done" in text and "(x2)" in text and "class n1,n3 waiting" in text


def test_overlay_marks_failures_and_completion() -> None:
    failed = RunDetail(
        run=run_record(RunStatus.FAILED, error={"code": "STEP_FAILED", "message": "boom"}),
        steps=(
            memo(0, StepKind.STEP, "charge", "charge"),
            memo(1, StepKind.STEP, "ship", "ship", StepStatus.FAILED),
        ),
    )
    graph = graph_from_history(failed)
    assert [n.id for n in graph.nodes] == ["charge", "ship"]  # not done: no output node
    ov = overlay(graph, failed)
    assert ov.states == {"charge": "done", "ship": "failed"}
    data = to_json(graph, ov)
    assert data["run"]["error"]["code"] == "STEP_FAILED"
    assert [n["state"] for n in data["nodes"]] == ["done", "failed"]

    done = RunDetail(
        run=run_record(RunStatus.DONE, output={"x": 1}),
        steps=(memo(0, StepKind.STEP, "charge", "charge"),),
    )
    graph = graph_from_history(done)
    assert overlay(graph, done).states == {"charge": "done", "output": "done"}


def test_history_graph_includes_the_call_the_run_waits_on() -> None:
    detail = RunDetail(
        run=run_record(RunStatus.AWAITING_SIGNAL, waiting_for="signal:approve"),
        steps=(memo(0, StepKind.STEP, "charge", "charge"),),
        events=(suspended_at("signal:approve"),),
    )
    graph = graph_from_history(detail)
    assert [n.id for n in graph.nodes] == ["charge", "signal:approve"]
    assert overlay(graph, detail).states == {"charge": "done", "signal:approve": "waiting"}


def test_renderings() -> None:
    built = loop_flow()
    mermaid = render(built.graph)
    assert mermaid.startswith("%% loopy@1 (builder)\nflowchart TD\n")
    assert 'n1{{"loop"}}' in mermaid and 'n1 -->|"repeat"| n2' in mermaid
    assert 'n4[/"signal approve<br/>Approval"/]' in mermaid
    data = json.loads(render(built.graph, "json"))
    assert data["name"] == "loopy" and data["nodes"][0] == {
        "id": "start",
        "kind": "step",
        "label": "start",
        "detail": "",
    }
    assert {"from": "loop", "to": "signal:approve", "label": "done"} in data["edges"]
