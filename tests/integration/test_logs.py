"""What operators see in logs and in ``flowctl show``: failed runs, failed step attempts, retries
scheduled, drift and recovery at WARNING with run id, flow and step in the message itself; a
truncated traceback stored with ``FLOW_FAILED`` / ``STEP_FAILED`` errors and shown by
``flowctl show``. Real PostgreSQL, attempts made by the engine's worker."""

from __future__ import annotations

import asyncio
import logging

import pytest
from pydantic import BaseModel

from iterflow import Engine, FlowContext, FlowError
from iterflow.cli import main as flowctl
from iterflow.core.decisions import AttemptOutcome
from iterflow.core.errors import MAX_TRACEBACK_CHARS
from iterflow.core.models import RunStatus
from iterflow.core.timeline import render_timeline
from iterflow.runtime.executor import TRACEBACK_FRAMES
from tests.integration.flows import eventually


class Num(BaseModel):
    n: int


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def charge_card(n: int) -> int:
    raise ConnectionError(f"gateway down for {n}")


async def test_failed_attempts_retries_and_the_failed_run_are_warnings_naming_run_flow_step(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="iterflow")

    @engine.flow("billing", input=Num, output=int)
    async def billing(ctx: FlowContext, x: Num) -> int:
        return await ctx.step("charge", charge_card, x.n, retries=1, backoff="10ms")

    started = await billing.start(Num(n=7))
    assert await engine.worker.advance(started.run_id) is AttemptOutcome.FAILED
    rid = str(started.run_id)
    lines = _warnings(caplog)
    attempts = [m for m in lines if m.startswith("step attempt failed:")]
    assert len(attempts) == 2
    for line in attempts:
        assert f"run={rid}" in line and "flow=billing" in line and "step=charge" in line
        assert "gateway down for 7" in line
    assert "attempt=1" in attempts[0] and "retry scheduled in" in attempts[0]
    assert "attempt=2" in attempts[1] and "no retry left" in attempts[1]
    [failed] = [m for m in lines if m.startswith("run failed:")]
    assert f"run={rid}" in failed and "flow=billing" in failed and "step=charge" in failed
    assert "[STEP_FAILED]" in failed


async def test_a_retry_later_is_logged_with_its_time(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="iterflow")

    @engine.flow("later", input=Num, output=int)
    async def later(ctx: FlowContext, x: Num) -> int:
        return await ctx.step("charge", charge_card, x.n, retries=1, backoff="1h")

    started = await later.start(Num(n=1))
    assert await engine.worker.advance(started.run_id) is AttemptOutcome.SUSPENDED
    [line] = [m for m in _warnings(caplog) if m.startswith("step attempt failed:")]
    assert f"run={started.run_id}" in line and "flow=later" in line and "step=charge" in line
    assert "retry scheduled at 20" in line  # an ISO timestamp


async def test_drift_is_a_warning_naming_the_step(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="iterflow")
    async with Engine(database_url, pool_size=2) as old:

        @old.flow("drifty", input=Num, output=int)
        async def v1(ctx: FlowContext, x: Num) -> int:
            await ctx.step("a", lambda: 1)
            await ctx.sleep("1h")
            return x.n

        started = await v1.start(Num(n=1))
        assert await old.worker.advance(started.run_id) is AttemptOutcome.SUSPENDED
    async with Engine(database_url, pool_size=2) as new:

        @new.flow("drifty", input=Num, output=int)
        async def v2(ctx: FlowContext, x: Num) -> int:
            await ctx.step("b", lambda: 1)  # was "a": the history no longer matches
            await ctx.sleep("1h")
            return x.n

        # The next attempt (a sleeping run can be claimed before its time) meets the change.
        assert await new.worker.advance(started.run_id) is AttemptOutcome.FAILED
    lines = _warnings(caplog)
    [drift] = [m for m in lines if m.startswith("replay drifted")]
    assert f"run={started.run_id}" in drift and "flow=drifty" in drift and "step=a" in drift
    assert "REPLAY_NON_DETERMINISTIC" in drift
    [failed] = [m for m in lines if m.startswith("run failed:")]
    assert f"run={started.run_id}" in failed and "step=a" in failed


async def test_recovery_is_a_warning_naming_run_flow_and_the_last_step(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="iterflow")

    @engine.flow("phoenix", input=Num, output=int)
    async def phoenix(ctx: FlowContext, x: Num) -> int:
        return x.n

    started = await phoenix.start(Num(n=4))
    assert await engine.store.claim(started.run_id, "dead-worker", 0.001) is not None

    async def recovered() -> bool:
        return (await engine.reconcile()).expired_leases == 1

    await eventually(recovered, what="the expired lease to be recovered")
    assert await engine.worker.advance(started.run_id) is AttemptOutcome.DONE
    lines = _warnings(caplog)
    assert any(m.startswith("reconciler repaired") and "expired_leases=1" in m for m in lines)
    [line] = [m for m in lines if m.startswith("run recovered")]
    assert f"run={started.run_id}" in line and "flow=phoenix" in line and "step=-" in line


def deep(n: int) -> int:
    if n == 0:
        raise LookupError("bottom of the stack\x00with a NUL")
    return deep(n - 1)


async def test_step_and_flow_failures_store_a_truncated_traceback_shown_by_flowctl_show(
    engine: Engine, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    @engine.flow("deep-step", input=Num, output=int)
    async def deep_step(ctx: FlowContext, x: Num) -> int:
        return await ctx.step("dig", deep, x.n)

    @engine.flow("body-raises", input=Num, output=int)
    async def body_raises(ctx: FlowContext, x: Num) -> int:
        await ctx.step("fine", lambda: 1)
        raise KeyError("missing-key")

    @engine.flow("coded", input=Num, output=int)
    async def coded(ctx: FlowContext, x: Num) -> int:
        raise FlowError("card declined", code="PAYMENT_DECLINED")

    s = await deep_step.start(Num(n=60))
    b = await body_raises.start(Num(n=1))
    c = await coded.start(Num(n=1))
    for run in (s, b, c):
        assert await engine.worker.advance(run.run_id) is AttemptOutcome.FAILED

    step_detail = await engine.status(s.run_id)
    assert step_detail.run.status is RunStatus.FAILED
    run_error = step_detail.run.error
    assert run_error is not None and run_error["code"] == "STEP_FAILED"
    memo_error = step_detail.steps[0].error
    assert memo_error is not None
    for trace in (run_error["traceback"], memo_error["traceback"]):
        assert trace.startswith("Traceback (most recent call last)")
        assert "in deep" in trace and "LookupError: bottom of the stack" in trace
        assert "\x00" not in trace
        assert trace.count('File "') <= TRACEBACK_FRAMES
        assert len(trace) <= MAX_TRACEBACK_CHARS

    body_error = (await engine.status(b.run_id)).run.error
    assert body_error is not None and body_error["code"] == "FLOW_FAILED"
    assert "in body_raises" in body_error["traceback"]
    assert "KeyError: 'missing-key'" in body_error["traceback"]
    coded_error = (await engine.status(c.run_id)).run.error
    assert coded_error is not None and coded_error["code"] == "PAYMENT_DECLINED"
    assert "in coded" in coded_error["traceback"]

    text = render_timeline(step_detail)
    assert "traceback" in text and "    LookupError: bottom of the stack" in text
    # flowctl show prints the same (in a thread: it runs its own event loop).
    argv = ["--database-url", database_url, "show", str(b.run_id)]
    assert await asyncio.to_thread(flowctl, argv) == 0
    out = capsys.readouterr().out
    assert "FLOW_FAILED" in out and "KeyError: 'missing-key'" in out and "in body_raises" in out


async def test_a_huge_traceback_is_cut_to_its_end(engine: Engine) -> None:
    @engine.flow("verbose", input=Num, output=int)
    async def verbose(ctx: FlowContext, x: Num) -> int:
        return await ctx.step("shout", shout, x.n)

    started = await verbose.start(Num(n=20_000))
    assert await engine.worker.advance(started.run_id) is AttemptOutcome.FAILED
    error = (await engine.status(started.run_id)).run.error
    assert error is not None
    trace = error["traceback"]
    assert len(trace) <= MAX_TRACEBACK_CHARS
    assert trace.startswith("… (traceback truncated)")
    assert trace.rstrip().endswith("x" * 100)  # the end (the exception line) is kept


def shout(n: int) -> int:
    raise ValueError("x" * n)
