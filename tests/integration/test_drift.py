"""Determinism on real PostgreSQL: every drift case for raw bodies and built flows alike, the
``park`` policy with retry and worker-start re-checks, versions side by side, ``ctx.patched``,
and suspensions that user code cannot swallow.

Drift is produced the way it happens in production: a run is taken to a suspension point by one
deploy (an ``Engine``), then a fresh ``Engine`` on the same database registers changed code
under the same name and version and makes the next attempt."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel

from iterflow import Engine, FlowContext, flow
from iterflow.core.builder import FlowBuilder
from iterflow.core.decisions import AttemptOutcome
from iterflow.core.definition import DriftPolicy, FlowDef
from iterflow.core.errors import ResultTimeout
from iterflow.core.models import RunStatus
from tests.integration.flows import eventually, sql


class Hold(BaseModel):
    ok: bool = True


def same(v: int) -> int:
    return v


def inc(v: int) -> int:
    return v + 1


# --- a tiny flow description, compiled to a raw body and to a built flow -----------------------


@dataclass(frozen=True)
class Op:
    kind: str  # "step", "sleep", "loop"
    label: str = ""
    times: int = 0


def step(label: str) -> Op:
    return Op("step", label)


def sleep(label: str) -> Op:
    return Op("sleep", label)


def loop(times: int) -> Op:
    return Op("loop", "tick", times)


def raw_def(
    name: str, ops: Sequence[Op], policy: DriftPolicy, version: int = 1
) -> FlowDef[int, int]:
    async def body(ctx: FlowContext, value: int) -> int:
        for op in ops:
            if op.kind == "step":
                value = await ctx.step(op.label, same, value)
            elif op.kind == "sleep":
                await ctx.sleep("1h", label=op.label)
            else:
                while value < op.times:
                    value = await ctx.step("tick", inc, value)
        await ctx.signal("hold", Hold)
        return value

    return FlowDef(
        name=name,
        version=version,
        input_type=int,
        output_type=int,
        body=body,
        signals={"hold": Hold},
        drift_policy=policy,
    )


def built_def(name: str, ops: Sequence[Op], policy: DriftPolicy) -> FlowDef[int, int]:
    b: FlowBuilder[int, int] = flow(name).input(int).drift_policy(policy)
    for op in ops:
        if op.kind == "step":
            b = b.step(op.label, same)
        elif op.kind == "sleep":
            b = b.sleep("1h", label=op.label)
        else:
            times = op.times
            b = b.loop(until=lambda v, t=times: v >= t, body=lambda s: s.step("tick", inc))
    return b.signal("hold", Hold, merge=lambda v, _: v).output(lambda v: v, model=int).build()


Make = Callable[[str, Sequence[Op], DriftPolicy], FlowDef[int, int]]
STYLES = {"raw": raw_def, "built": built_def}

# (name, deployed ops, changed ops, recorded call, requested call) at the first difference.
CASES = [
    ("inserted", [step("a"), step("b")], [step("a"), step("x"), step("b")], "b", "x"),
    ("removed", [step("a"), step("b"), step("c")], [step("a"), step("c")], "b", "c"),
    ("renamed", [step("a"), step("b")], [step("a"), step("b2")], "b", "b2"),
    ("reordered", [step("a"), step("b")], [step("b"), step("a")], "a", "b"),
    ("changed-kind", [step("a"), step("b")], [step("a"), sleep("b")], "b", "sleep:b"),
    ("fewer-iterations", [step("a"), loop(3)], [step("a"), loop(2)], "tick#2", "signal:hold"),
]


def memo_rows(url: str, run_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return sql(
        url,
        "SELECT position, cursor_key, kind, status, output FROM iterflow.steps "
        "WHERE run_id = %s ORDER BY position",
        run_id,
    )


async def deploy_and_suspend(url: str, definition: FlowDef[int, int]) -> uuid.UUID:
    """The first deploy: start a run and take it to its signal wait."""
    async with Engine(url, pool_size=2) as eng:
        handle = eng.register(definition)
        run_id = (await handle.start(0)).run_id
        assert await eng.worker.advance(run_id) == AttemptOutcome.SUSPENDED
        assert (await eng.status(run_id)).run.status is RunStatus.AWAITING_SIGNAL
        return run_id


@pytest.mark.parametrize("style", sorted(STYLES))
@pytest.mark.parametrize(
    ("case", "before", "after", "recorded", "requested"), CASES, ids=[c[0] for c in CASES]
)
async def test_drift_stops_the_run_naming_both_calls_and_writes_nothing(
    database_url: str,
    style: str,
    case: str,
    before: list[Op],
    after: list[Op],
    recorded: str,
    requested: str,
) -> None:
    make = STYLES[style]
    name = f"drift-{style}-{case}"
    run_id = await deploy_and_suspend(database_url, make(name, before, "fail"))
    rows_before = memo_rows(database_url, run_id)

    async with Engine(database_url, pool_size=2) as eng:
        eng.register(make(name, after, "fail"))
        assert await eng.worker.advance(run_id) == AttemptOutcome.FAILED
        detail = await eng.status(run_id)

    assert detail.run.status is RunStatus.FAILED
    error = detail.run.error or {}
    assert error["code"] == "REPLAY_NON_DETERMINISTIC"
    assert error["details"]["recorded"]["cursor_key"] == recorded
    assert error["details"]["requested"]["cursor_key"] == requested
    assert f"(key {recorded})" in error["message"] and f"(key {requested})" in error["message"]
    assert error["details"]["recorded"]["position"] == error["details"]["requested"]["position"]
    assert memo_rows(database_url, run_id) == rows_before  # nothing written past the drift


async def test_a_removed_trailing_call_is_drift_too(database_url: str) -> None:
    run_id = await deploy_and_suspend(
        database_url, raw_def("trailing", [step("a"), step("b")], "fail")
    )

    async def shorter(ctx: FlowContext, value: int) -> int:
        return await ctx.step("a", same, value)  # "b" and the wait are gone

    async with Engine(database_url, pool_size=2) as eng:
        eng.register(
            FlowDef(
                name="trailing",
                version=1,
                input_type=int,
                output_type=int,
                body=shorter,
                signals={"hold": Hold},
            )
        )
        assert await eng.worker.advance(run_id) == AttemptOutcome.FAILED
        error = (await eng.status(run_id)).run.error or {}
    assert error["code"] == "REPLAY_NON_DETERMINISTIC"
    assert "step 'b' (key b) at position 1" in error["message"]
    assert "no longer makes that call" in error["message"]


# --- park policy ----------------------------------------------------------------------------


async def test_park_policy_parks_then_retry_resumes_on_compatible_code(database_url: str) -> None:
    ops = [step("a"), step("b")]
    run_id = await deploy_and_suspend(database_url, raw_def("parky", ops, "park"))
    rows_before = memo_rows(database_url, run_id)

    async with Engine(database_url, pool_size=2) as eng:  # a bad deploy: "b" renamed
        handle = eng.register(raw_def("parky", [step("a"), step("b2")], "park"))
        assert await eng.worker.advance(run_id) == AttemptOutcome.PARKED
        detail = await eng.status(run_id)
        assert detail.run.status is RunStatus.PARKED
        assert (detail.run.error or {})["code"] == "REPLAY_NON_DETERMINISTIC"
        assert detail.events[-1].type == "parked"
        with pytest.raises(ResultTimeout):  # parked is not terminal: waiters keep waiting
            await handle.result(run_id, timeout=0.2)
        assert (await eng.retry(run_id)).kind == "queued"  # re-checked: still incompatible
        assert await eng.worker.advance(run_id) == AttemptOutcome.PARKED
    assert memo_rows(database_url, run_id) == rows_before

    async with Engine(database_url, pool_size=2) as eng:  # the fix is deployed
        handle = eng.register(raw_def("parky", ops, "park"))
        assert (await eng.retry(run_id)).kind == "queued"
        assert (await eng.status(run_id)).run.status is RunStatus.PENDING
        assert await eng.worker.advance(run_id) == AttemptOutcome.SUSPENDED
        await eng.signal(run_id, "hold", {})
        assert await eng.worker.advance(run_id) == AttemptOutcome.DONE
        assert await handle.result(run_id, timeout=5) == 0
        events = [e.type for e in (await eng.status(run_id)).events]
        assert events.count("parked") == 2 and events.count("unparked") == 2


async def test_a_worker_start_rechecks_parked_runs_of_its_flows(database_url: str) -> None:
    ops = [step("a"), step("b")]
    run_id = await deploy_and_suspend(database_url, built_def("restart", ops, "park"))
    async with Engine(database_url, pool_size=2) as eng:
        eng.register(built_def("restart", [step("b"), step("a")], "park"))
        assert await eng.worker.advance(run_id) == AttemptOutcome.PARKED

    async with Engine(database_url, pool_size=4) as eng:  # restart with compatible code
        handle = eng.register(built_def("restart", ops, "park"))
        await eng.listen(concurrency=1)

        async def waiting_again() -> bool:
            return (await eng.status(run_id)).run.status is RunStatus.AWAITING_SIGNAL

        await eventually(waiting_again, what="the parked run to be re-checked and resumed")
        await eng.signal(run_id, "hold", {})
        assert await handle.result(run_id, timeout=20) == 0
        assert (await eng.status(run_id)).run.error is None


async def test_an_unknown_version_stays_queued_whatever_the_flow_policy(database_url: str) -> None:
    """A worker never claims a flow version it does not register (issue 14: it used to fail or
    park the run): the run keeps waiting, and explain says there is no worker for this flow."""
    runs = {}
    for policy in ("fail", "park"):
        runs[policy] = await deploy_and_suspend(
            database_url, raw_def(f"gone-{policy}", [step("a")], policy)
        )
    async with Engine(database_url, pool_size=2) as eng:
        for policy in ("fail", "park"):  # only version 2 is deployed now
            eng.register(raw_def(f"gone-{policy}", [step("a")], policy, version=2))  # type: ignore[arg-type]
        for policy in ("fail", "park"):
            before = (await eng.status(runs[policy])).run
            assert await eng.worker.advance(runs[policy]) == AttemptOutcome.SKIPPED
            run = (await eng.status(runs[policy])).run
            assert run.status is before.status and run.error is None and run.claims == before.claims
            assert (await eng.explain(runs[policy])).state == "no_worker"


# --- versions side by side --------------------------------------------------------------------


def versioned(version: int) -> FlowDef[int, str]:
    async def body(ctx: FlowContext, value: int) -> str:
        if version == 1:
            a = await ctx.step("a", lambda: "v1-a")
            await ctx.sleep("300ms", label="pause")
            b = await ctx.step("b", lambda: "v1-b")
        else:
            a = await ctx.step("a2", lambda: "v2-a")
            b = await ctx.step("b2", lambda: "v2-b")
        return f"{a}+{b}"

    return FlowDef(name="versions", version=version, input_type=int, output_type=str, body=body)


async def test_two_versions_side_by_side(database_url: str) -> None:
    async with Engine(database_url, pool_size=2) as eng:
        v1 = eng.register(versioned(1))
        old_run = (await v1.start(0)).run_id
        assert await eng.worker.advance(old_run) == AttemptOutcome.SUSPENDED
        assert (await eng.status(old_run)).run.status is RunStatus.SLEEPING

    async with Engine(database_url, pool_size=4) as eng:  # the v2 deploy keeps v1 registered
        v1 = eng.register(versioned(1))
        v2 = eng.register(versioned(2))
        latest = eng.registry.latest("versions")
        assert latest is not None and latest.version == 2
        new_run = (await v2.start(0)).run_id
        await eng.listen(concurrency=2)
        assert await v2.result(new_run, timeout=20) == "v2-a+v2-b"
        assert await v1.result(old_run, timeout=20) == "v1-a+v1-b"
        old, new = await eng.status(old_run), await eng.status(new_run)
    assert (old.run.version, new.run.version) == (1, 2)
    assert [s.cursor_key for s in old.steps] == ["a", "sleep:pause", "b"]
    assert [s.cursor_key for s in new.steps] == ["a2", "b2"]


# --- ctx.patched ------------------------------------------------------------------------------


def patchable(patched: bool) -> FlowDef[int, str]:
    async def body(ctx: FlowContext, value: int) -> str:
        await ctx.step("a", same, value)
        checked = await ctx.patched("fraud-check") if patched else False
        if checked:
            await ctx.step("fraud", same, value)
        await ctx.step("b", same, value)
        await ctx.signal("hold", Hold)
        return f"checked={checked}"

    return FlowDef(
        name="patchy",
        version=1,
        input_type=int,
        output_type=str,
        body=body,
        signals={"hold": Hold},
    )


async def test_patched_keeps_old_runs_on_the_old_path(database_url: str) -> None:
    old_run = await deploy_and_suspend(database_url, patchable(False))  # type: ignore[arg-type]
    async with Engine(database_url, pool_size=2) as eng:
        handle = eng.register(patchable(True))
        new_run = (await handle.start(0)).run_id
        for run_id in (old_run, new_run):
            assert await eng.worker.advance(run_id) == AttemptOutcome.SUSPENDED
            await eng.signal(run_id, "hold", {})
            assert await eng.worker.advance(run_id) == AttemptOutcome.DONE
        assert await handle.result(old_run, timeout=5) == "checked=False"
        assert await handle.result(new_run, timeout=5) == "checked=True"
    assert [r[1] for r in memo_rows(database_url, old_run)] == ["a", "b", "signal:hold"]
    assert [r[1:4] for r in memo_rows(database_url, new_run)][:3] == [
        ("a", "step", "ok"),
        ("patch:fraud-check", "patch", "ok"),
        ("fraud", "step", "ok"),
    ]


# --- suspension cannot be swallowed ---------------------------------------------------------


class Go(BaseModel):
    add: int


async def test_except_exception_or_bare_except_cannot_swallow_a_suspension(
    engine: Engine,
) -> None:
    @engine.flow("swallowing", input=int, output=str, signals={"go": Go})
    async def swallowing(ctx: FlowContext, value: int) -> str:
        try:  # noqa: SIM105 - the footgun under test
            await ctx.sleep("200ms", label="nap")
        except:  # noqa: E722
            pass  # the next ctx call re-raises the suspension
        try:
            got = await ctx.signal("go", Go)
        except Exception:
            return "swallowed by except Exception"
        return f"got {got.add}"

    @engine.flow("returning", input=int, output=str, signals={"go": Go})
    async def returning(ctx: FlowContext, value: int) -> str:
        try:
            await ctx.signal("go", Go)
        except:  # noqa: E722
            return "returned past the wait"  # the end of the body re-raises it
        return "got it"

    first = (await swallowing.start(0)).run_id
    second = (await returning.start(0)).run_id
    worker = engine.worker
    assert await worker.advance(first) == AttemptOutcome.SUSPENDED
    assert (await engine.status(first)).run.status is RunStatus.SLEEPING
    await asyncio.sleep(0.25)
    assert await worker.advance(first) == AttemptOutcome.SUSPENDED
    assert (await engine.status(first)).run.status is RunStatus.AWAITING_SIGNAL
    assert await worker.advance(second) == AttemptOutcome.SUSPENDED
    assert (await engine.status(second)).run.status is RunStatus.AWAITING_SIGNAL
    for run_id in (first, second):
        await engine.signal(run_id, "go", {"add": 5})
        assert await worker.advance(run_id) == AttemptOutcome.DONE
    assert await swallowing.result(first, timeout=5) == "got 5"
    assert await returning.result(second, timeout=5) == "got it"
