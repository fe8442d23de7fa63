"""``ctx.patched``: True for runs reaching the point under new code (recorded), False without
taking a position for runs whose history shows they passed it before the change."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from iterflow import FlowContext
from iterflow.core.definition import FlowDef
from iterflow.core.errors import FlowDefinitionError
from iterflow.core.models import StepKind, StepRecord, StepStatus
from iterflow.core.replay import Cursor
from tests.replay.harness import replay

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def rec(pos: int, kind: StepKind, key: str, label: str, output: object = None) -> StepRecord:
    return StepRecord(pos, key, kind, label, StepStatus.OK, output=output)


def test_cursor_takes_a_patch_on_new_ground_or_on_its_own_memo_only() -> None:
    assert Cursor([]).takes_patch("p")  # nothing recorded from here on: new code
    old = Cursor([rec(0, StepKind.STEP, "a", "a"), rec(1, StepKind.STEP, "b", "b")])
    old.next(StepKind.STEP, "a")
    assert not old.takes_patch("p")  # the run passed here under code without the patch
    assert old.position == 1 and old.peek() is not None  # nothing taken
    old.next(StepKind.STEP, "b")
    assert old.takes_patch("p")  # past the recorded history

    patched = Cursor([rec(0, StepKind.PATCH, "patch:p", "p", True)])
    assert not patched.takes_patch("q")  # another change's memo
    assert patched.takes_patch("p")
    assert patched.key_for(StepKind.PATCH, "p") == "patch:p"
    patched.next(StepKind.PATCH, "p")
    assert patched.key_for(StepKind.PATCH, "p") == "patch:p#1"  # a repeat gets a counter


def test_a_gap_in_history_counts_as_passed() -> None:
    gap = Cursor([rec(0, StepKind.STEP, "a", "a"), rec(2, StepKind.STEP, "c", "c")])
    gap.next(StepKind.STEP, "a")
    assert not gap.takes_patch("p")  # position 1 was a call that never recorded (a wait)


def add_one(n: int) -> int:
    return n + 1


def flows(calls: Counter[str]) -> tuple[FlowDef[int, str], FlowDef[int, str]]:
    def fraud(n: int) -> int:
        calls["fraud"] += 1
        return n

    async def old_body(ctx: FlowContext, n: int) -> str:
        await ctx.step("a", add_one, n)
        await ctx.step("b", add_one, n)
        await ctx.sleep("1h", label="wait")
        return "old"

    async def new_body(ctx: FlowContext, n: int) -> str:
        await ctx.step("a", add_one, n)
        checked = await ctx.patched("fraud-check")
        if checked:
            await ctx.step("fraud", fraud, n)
        await ctx.step("b", add_one, n)
        await ctx.sleep("1h", label="wait")
        return f"new checked={checked}"

    def make(body: object) -> FlowDef[int, str]:
        return FlowDef(name="p", version=1, input_type=int, output_type=str, body=body)  # type: ignore[arg-type]

    return make(old_body), make(new_body)


async def test_an_old_run_past_the_point_takes_the_old_path_and_records_nothing() -> None:
    calls: Counter[str] = Counter()
    old, new = flows(calls)
    first = await replay(old, input=1, history=[], now=NOW)
    assert first.kind == "suspended" and first.written_keys == ["a", "b"]
    resumed = await replay(new, input=1, history=first.store.written, now=NOW)
    assert resumed.kind == "suspended" and resumed.cursor_key == "sleep:wait"
    assert resumed.written_keys == [] and calls["fraud"] == 0


async def test_a_new_run_takes_the_new_path_and_replays_agree() -> None:
    calls: Counter[str] = Counter()
    _, new = flows(calls)
    first = await replay(new, input=1, history=[], now=NOW)
    assert first.written_keys == ["a", "patch:fraud-check", "fraud", "b"]
    assert [r.kind for r in first.store.written][1] is StepKind.PATCH
    assert first.store.written[1].output is True
    again = await replay(new, input=1, history=first.store.written, now=NOW)
    assert again.kind == "suspended" and again.written_keys == [] and calls["fraud"] == 1


async def test_a_run_suspended_before_the_point_takes_the_new_path() -> None:
    calls: Counter[str] = Counter()
    _, new = flows(calls)
    history = [rec(0, StepKind.STEP, "a", "a", 2)]  # old code recorded only "a" so far
    resumed = await replay(new, input=1, history=history, now=NOW)
    assert resumed.written_keys == ["patch:fraud-check", "fraud", "b"]
    assert calls["fraud"] == 1


async def test_patched_needs_a_change_id() -> None:
    async def body(ctx: FlowContext, n: int) -> str:
        await ctx.patched("")
        return "x"

    out = await replay(
        FlowDef(name="e", version=1, input_type=int, output_type=str, body=body),
        input=1,
        history=[],
        now=NOW,
    )
    assert out.kind == "failed" and out.error is not None
    assert out.error["code"] == FlowDefinitionError.code
