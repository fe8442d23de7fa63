"""``ctx.now()``, ``ctx.uuid()`` and ``ctx.random()`` are recorded once and replayed unchanged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from iterflow import FlowContext
from iterflow.core.definition import FlowDef
from iterflow.core.models import SignalRecord, StepKind
from tests.replay.harness import replay

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Go(BaseModel):
    ok: bool = True


async def body(ctx: FlowContext, _: int) -> str:
    now = await ctx.now()
    ident = await ctx.uuid()
    roll = await ctx.random()
    await ctx.signal("go", Go)
    return f"{now.isoformat()}|{ident}|{roll}"


FLOW = FlowDef(
    name="values", version=1, input_type=int, output_type=str, body=body, signals={"go": Go}
)


async def test_values_are_recorded_once_then_replayed_unchanged() -> None:
    first = await replay(FLOW, input=0, history=[], now=T0)
    assert first.kind == "suspended"
    assert [r.kind for r in first.store.written] == [StepKind.NOW, StepKind.UUID, StepKind.RANDOM]
    history = first.store.written
    recorded_uuid, recorded_roll = history[1].output, history[2].output
    go = SignalRecord(1, "go", {"ok": True}, None, T0)
    outputs = []
    for days in (3, 9):  # later clocks, a fresh uuid source: replays still see the records
        done = await replay(
            FLOW, input=0, history=history, inbox=[go], now=T0 + timedelta(days=days)
        )
        assert done.kind == "done" and done.written_keys == ["signal:go"]
        outputs.append(done.output)
    assert outputs[0] == outputs[1] == f"{T0.isoformat()}|{recorded_uuid}|{recorded_roll}"
