"""Engine hooks (``Engine(hooks=[...])``) over real PostgreSQL runs made by a worker: which events
fire, with what, in which order; a hook that raises never breaks a run; no hook, no dispatcher."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from pydantic import BaseModel

from iterflow import Engine, FlowContext
from iterflow.core.decisions import AttemptOutcome
from iterflow.core.errors import ConfigInvalid
from iterflow.core.hooks import (
    AttemptEndInfo,
    AttemptInfo,
    Hook,
    Hooks,
    PurgeInfo,
    RecoveryInfo,
    RunFinishedInfo,
    SignalInfo,
    StartInfo,
    StepEndInfo,
    StepInfo,
    SuspendInfo,
    clean_carrier,
    wait_reason,
)
from iterflow.core.models import RunStatus, StepStatus
from tests.integration.flows import eventually


class Num(BaseModel):
    n: int


class Go(BaseModel):
    by: str


class Recorder(Hook):
    """Records every event with its info record."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    def _add(self, name: str, info: object) -> None:
        with self._lock:
            self.events.append((name, info))

    def of(self, name: str) -> list[Any]:
        return [info for event, info in self.events if event == name]

    def inject(self) -> dict[str, str]:
        return {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}

    def on_start(self, info: StartInfo) -> None:
        self._add("start", info)

    def on_signal(self, info: SignalInfo) -> None:
        self._add("signal", info)

    def on_attempt_begin(self, info: AttemptInfo) -> None:
        self._add("attempt_begin", info)

    def on_attempt_end(self, info: AttemptEndInfo) -> None:
        self._add("attempt_end", info)

    def on_step_begin(self, info: StepInfo) -> None:
        self._add("step_begin", info)

    def on_step_end(self, info: StepEndInfo) -> None:
        self._add("step_end", info)

    def on_suspend(self, info: SuspendInfo) -> None:
        self._add("suspend", info)

    def on_run_finished(self, info: RunFinishedInfo) -> None:
        self._add("run_finished", info)

    def on_recover(self, info: RecoveryInfo) -> None:
        self._add("recover", info)


def _run_of(info: object) -> object:
    if isinstance(info, AttemptEndInfo):
        return info.attempt.run_id
    if isinstance(info, StepEndInfo):
        return info.step.run_id
    return getattr(info, "run_id", None)


async def test_every_event_of_a_run_that_retries_sleeps_and_waits_for_a_signal(
    database_url: str,
) -> None:
    recorder = Recorder()
    calls = {"flaky": 0}

    async def flaky() -> int:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise RuntimeError("first try fails")
        return 40

    async with Engine(database_url, pool_size=4, hooks=[recorder]) as engine:

        @engine.flow("hooked", input=Num, output=int, signals={"go": Go})
        async def hooked(ctx: FlowContext, x: Num) -> int:
            a = await ctx.step("flaky", flaky, retries=1, backoff="10ms")
            await ctx.sleep("300ms", label="nap")
            await ctx.signal("go", Go)
            return a + x.n

        await engine.listen(concurrency=2)
        started = await hooked.start(Num(n=2))

        async def waiting() -> bool:
            return (await engine.status(started.run_id)).run.status is RunStatus.AWAITING_SIGNAL

        await eventually(waiting, timeout=20, what="the run to wait for its signal")
        assert (await engine.signal(started.run_id, "go", Go(by="ops"))).kind == "delivered"
        assert await hooked.result(started.run_id, timeout=20) == 42

        async def finished() -> bool:
            return len(recorder.of("attempt_end")) == 3

        await eventually(finished, what="the third attempt's end")

    rid = started.run_id
    [start] = recorder.of("start")
    assert start == StartInfo(rid, "hooked", 1, created=True)

    begins: list[AttemptInfo] = recorder.of("attempt_begin")
    ends: list[AttemptEndInfo] = recorder.of("attempt_end")
    assert [b.attempt for b in begins] == [1, 2, 3]
    assert [b.resumed_reason for b in begins] == [None, "sleep", "signal"]
    assert [b.resumed_from for b in begins] == [None, "timer:sleep:nap", "signal:go"]
    assert all(dict(b.carrier) == recorder.inject() for b in begins)
    # Due: the start, the sleep's time, the signal's arrival.
    assert all(b.queue_lag is not None and b.queue_lag.total_seconds() >= 0 for b in begins)
    assert [e.outcome for e in ends] == [
        AttemptOutcome.SUSPENDED,
        AttemptOutcome.SUSPENDED,
        AttemptOutcome.DONE,
    ]
    assert all(e.attempt is b for e, b in zip(ends, begins, strict=True))

    # Steps: both attempts of "flaky", all in the first attempt; none re-reported on replay.
    step_begins: list[StepInfo] = recorder.of("step_begin")
    step_ends: list[StepEndInfo] = recorder.of("step_end")
    assert [(s.cursor_key, s.attempt, s.run_attempt) for s in step_begins] == [
        ("flaky", 1, 1),
        ("flaky", 2, 1),
    ]
    assert step_begins[0].function.endswith("flaky")
    assert [e.status for e in step_ends] == [StepStatus.RETRYING, StepStatus.OK]
    assert step_ends[0].error is not None and step_ends[0].error["code"] == "STEP_FAILED"
    assert step_ends[0].retry_in is not None and step_ends[1].error is None
    assert all(e.duration.total_seconds() >= 0 for e in step_ends)

    sleep, wait = recorder.of("suspend")
    assert (sleep.reason, sleep.status, sleep.cursor_key) == (
        "sleep",
        RunStatus.SLEEPING,
        "sleep:nap",
    )
    assert sleep.wake_at is not None
    assert (wait.reason, wait.status, wait.waiting_for) == (
        "signal",
        RunStatus.AWAITING_SIGNAL,
        "signal:go",
    )
    assert wait.wake_at is None

    [signal] = recorder.of("signal")
    assert (signal.run_id, signal.flow, signal.name, signal.result) == (
        rid,
        "hooked",
        "go",
        "delivered",
    )
    assert signal.signal_id is not None and dict(signal.carrier) == recorder.inject()

    [done] = recorder.of("run_finished")
    assert (done.run_id, done.status, done.error) == (rid, RunStatus.DONE, None)

    # Order within the first attempt: begin, step events, suspend, end.
    first = [name for name, info in recorder.events if _run_of(info) == rid]
    assert first[:7] == [
        "start",
        "attempt_begin",
        "step_begin",
        "step_end",
        "step_begin",
        "step_end",
        "suspend",
    ]


async def test_failed_and_canceled_runs_and_child_starts_are_reported(database_url: str) -> None:
    recorder = Recorder()
    async with Engine(database_url, pool_size=4, hooks=[recorder]) as engine:

        @engine.flow("child", input=Num, output=int)
        async def child(ctx: FlowContext, x: Num) -> int:
            raise ValueError(f"child {x.n} refuses")

        @engine.flow("parent", input=Num, output=int)
        async def parent(ctx: FlowContext, x: Num) -> int:
            return await ctx.invoke(child, x)

        @engine.flow("waiter", input=Num, output=int, signals={"go": Go})
        async def waiter(ctx: FlowContext, x: Num) -> int:
            await ctx.signal("go", Go)
            return x.n

        await engine.listen(concurrency=2)
        p = await parent.start(Num(n=1))
        with pytest.raises(Exception, match="refuses"):
            await parent.result(p.run_id, timeout=20)
        w = await waiter.start(Num(n=1))

        async def waiting() -> bool:
            return (await engine.status(w.run_id)).run.status is RunStatus.AWAITING_SIGNAL

        await eventually(waiting, what="the waiter to wait")
        assert (await engine.cancel(w.run_id)).kind == "canceled"

        async def reported() -> bool:
            return {f.flow for f in recorder.of("run_finished")} == {"child", "parent", "waiter"}

        await eventually(reported, what="every run's end to be reported")

    starts = {s.flow: s for s in recorder.of("start")}
    assert starts["child"].parent_run_id == p.run_id and starts["child"].created
    finished = {f.flow: f for f in recorder.of("run_finished")}
    assert finished["child"].status is RunStatus.FAILED
    assert finished["child"].error is not None
    assert finished["child"].error["code"] == "FLOW_FAILED"
    assert finished["child"].parent_run_id == p.run_id
    assert finished["parent"].status is RunStatus.FAILED
    assert (finished["waiter"].status, finished["waiter"].waited_reason) == (
        RunStatus.CANCELED,
        "signal",
    )
    child_attempts = [b for b in recorder.of("attempt_begin") if b.flow == "child"]
    assert child_attempts and child_attempts[0].parent_run_id == p.run_id


class Boom(Hook):
    """Raises in every event it overrides."""

    def inject(self) -> dict[str, str]:
        raise RuntimeError("boom in inject")

    def on_start(self, info: StartInfo) -> None:
        raise RuntimeError("boom in on_start")

    def on_attempt_begin(self, info: AttemptInfo) -> None:
        raise RuntimeError("boom in on_attempt_begin")

    def on_attempt_end(self, info: AttemptEndInfo) -> None:
        raise RuntimeError("boom in on_attempt_end")

    def on_step_begin(self, info: StepInfo) -> None:
        raise RuntimeError("boom in on_step_begin")

    def on_step_end(self, info: StepEndInfo) -> None:
        raise RuntimeError("boom in on_step_end")

    def on_suspend(self, info: SuspendInfo) -> None:
        raise RuntimeError("boom in on_suspend")

    def on_run_finished(self, info: RunFinishedInfo) -> None:
        raise RuntimeError("boom in on_run_finished")


async def test_a_hook_that_raises_is_logged_and_never_breaks_a_run(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    caplog.set_level(logging.ERROR, logger="iterflow")
    async with Engine(database_url, pool_size=4, hooks=[Boom(), recorder]) as engine:

        @engine.flow("sturdy", input=Num, output=int)
        async def sturdy(ctx: FlowContext, x: Num) -> int:
            a = await ctx.step("one", lambda: x.n + 1)
            await ctx.sleep("100ms")
            return a

        await engine.listen(concurrency=2)
        started = await sturdy.start(Num(n=1))
        assert await sturdy.result(started.run_id, timeout=20) == 2

        async def ended() -> bool:
            return len(recorder.of("attempt_end")) == 2

        await eventually(ended, what="both attempts to end")
    # The hook after the raising one still saw everything.
    assert [e.outcome for e in recorder.of("attempt_end")] == [
        AttemptOutcome.SUSPENDED,
        AttemptOutcome.DONE,
    ]
    assert len(recorder.of("step_end")) == 1 and len(recorder.of("run_finished")) == 1
    # Its carrier still stored, the raising one's ignored.
    assert dict(recorder.of("attempt_begin")[0].carrier) == recorder.inject()
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    for event in (
        "inject",
        "on_start",
        "on_attempt_begin",
        "on_attempt_end",
        "on_step_begin",
        "on_step_end",
        "on_suspend",
        "on_run_finished",
    ):
        assert f"hook Boom raised in {event}" in logged


async def test_no_hook_means_no_dispatcher_and_add_hook_applies_to_an_open_engine(
    database_url: str,
) -> None:
    assert Engine(database_url).hooks is None
    assert Engine(database_url, hooks=[]).hooks is None
    with pytest.raises(ConfigInvalid, match="subclass Hook"):
        Engine(database_url, hooks=[object()])  # type: ignore[list-item]
    async with Engine(database_url, pool_size=2) as engine:
        assert engine.worker.hooks is None

        @engine.flow("plain", input=Num, output=int)
        async def plain(ctx: FlowContext, x: Num) -> int:
            return await ctx.step("one", lambda: x.n)

        recorder = Recorder()
        engine.add_hook(recorder)
        assert engine.worker.hooks is engine.hooks and engine.hooks is not None
        started = await plain.start(Num(n=3))
        assert await engine.worker.advance(started.run_id) is AttemptOutcome.DONE
        assert [name for name, _ in recorder.events] == [
            "start",
            "attempt_begin",
            "step_begin",
            "step_end",
            "run_finished",
            "attempt_end",
        ]


async def test_the_reconciler_reports_recoveries(database_url: str) -> None:
    recorder = Recorder()
    async with Engine(database_url, pool_size=2, hooks=[recorder]) as engine:

        @engine.flow("stuck", input=Num, output=int)
        async def stuck(ctx: FlowContext, x: Num) -> int:
            return x.n

        started = await stuck.start(Num(n=1))
        assert await engine.store.claim(started.run_id, "dead-worker", 0.001) is not None

        async def recovered() -> bool:
            return (await engine.reconcile()).expired_leases == 1

        await eventually(recovered, what="the expired lease to be recovered")
    assert recorder.of("recover")[-1].expired_leases == 1


def test_dispatch_only_reaches_hooks_that_override_the_event() -> None:
    seen: list[str] = []

    class OnlyPurge(Hook):
        def on_purge(self, info: PurgeInfo) -> None:
            seen.append(f"purged {info.count}")

    errors: list[str] = []
    hooks = Hooks.of([OnlyPurge()], lambda hook, event, exc: errors.append(event))
    assert hooks is not None
    assert hooks.wants("on_purge") and not hooks.wants("on_step_begin")
    hooks.purge(PurgeInfo(count=3))
    assert seen == ["purged 3"] and errors == []
    assert hooks.inject() == {}


def test_carriers_are_cleaned_and_wait_reasons_named() -> None:
    assert clean_carrier({"traceparent": "00-ab-cd-01", "bad\x00": "x", "k": 1}) == {
        "traceparent": "00-ab-cd-01"
    }
    assert clean_carrier({"big": "x" * 5000}) == {}
    assert clean_carrier({"lone": "\ud800"}) == {}
    assert clean_carrier("not a mapping") == {}  # type: ignore[arg-type]
    assert [
        wait_reason(w)
        for w in (
            None,
            "signal:go",
            "timer:sleep",
            "timer:retry:charge",
            "child:" + "0" * 8 + "-0000-0000-0000-" + "0" * 12,
            "storage",
            "recovery",
            "nonsense",
        )
    ] == [None, "signal", "sleep", "retry", "child", "storage", None, None]
