"""The pure decisions of ``iterflow.core.decisions``: history, inputs and the time in, a frozen
value out. No database, no clock, no event loop."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from iterflow.core import decisions as d
from iterflow.core.definition import FlowDef
from iterflow.core.errors import (
    Aborted,
    DataRejected,
    Drifted,
    FlowError,
    FlowFailed,
    InputInvalid,
    Interrupt,
    InvokeDepthExceeded,
    InvokeFanoutExceeded,
    LeaseLost,
    NonRetryable,
    PayloadTooLarge,
    ReplayNonDeterministic,
    SignalPayloadInvalid,
    StepFailed,
    Suspended,
)
from iterflow.core.models import (
    ChildRecord,
    RunStatus,
    SignalRecord,
    StepKind,
    StepRecord,
    StepStatus,
    SuspendPlan,
    TimerRecord,
)
from iterflow.core.replay import Call
from iterflow.core.retry import RetryPolicy
from iterflow.core.settings import Settings
from tests.records import run_record

NOW = datetime(2026, 1, 1, tzinfo=UTC)
RUN = uuid.UUID("00000000-0000-4000-8000-000000000001")


class Go(BaseModel):
    n: int


class ShipIn(BaseModel):
    sku: str


async def _ship(ctx: Any, value: ShipIn) -> str:
    return value.sku


SHIP: FlowDef[ShipIn, str] = FlowDef(
    name="ship", version=1, input_type=ShipIn, output_type=str, body=_ship
)


def memo(pos: int, key: str, status: StepStatus = StepStatus.OK, **kw: Any) -> StepRecord:
    kind = StepKind(key.split(":")[0]) if ":" in key else StepKind.STEP
    return StepRecord(pos, key, kind, key.split(":")[-1], status, **kw)


def plan(status: RunStatus = RunStatus.SLEEPING, wake: datetime | None = NOW) -> SuspendPlan:
    return SuspendPlan(status=status, reason="sleep", cursor_key="k", wake_at=wake)


# --- sleep and signals ------------------------------------------------------------------------


def test_sleep_decisions() -> None:
    call = Call(0, StepKind.SLEEP, "", "sleep")
    first = d.decide_sleep(call, None, NOW + timedelta(hours=1), NOW)
    assert isinstance(first, d.SleepSuspend)
    assert first.plan.status is RunStatus.SLEEPING
    assert first.plan.waiting_for == "timer:sleep"
    assert first.plan.new_timers == (TimerRecord("sleep", NOW + timedelta(hours=1)),)
    assert first.plan.progress
    # A pinned timer wins over a recomputed due time, and an early wake is no progress.
    pinned = TimerRecord("sleep", NOW + timedelta(minutes=5))
    early = d.decide_sleep(call, pinned, NOW + timedelta(days=9), NOW)
    assert isinstance(early, d.SleepSuspend)
    assert early.plan.wake_at == pinned.fire_at and not early.plan.progress
    assert early.plan.new_timers == ()
    # Due: the memo records the pinned due time and fires the timer...
    due = d.decide_sleep(call, pinned, NOW, NOW + timedelta(minutes=5))
    assert due == d.SleepFire(pinned.fire_at, fire_timer="sleep")
    # ... or, with nothing pinned (a zero sleep), records now and fires nothing.
    assert d.decide_sleep(call, None, NOW, NOW) == d.SleepFire(NOW)


def test_signal_decisions_consume_fifo_and_prefer_delivery_over_timeout() -> None:
    call = Call(0, StepKind.SIGNAL, "go", "signal:go")
    inbox = [
        SignalRecord(1, "other", {}, None, NOW),
        SignalRecord(2, "go", {"n": 1}, None, NOW),
        SignalRecord(3, "go", {"n": 2}, None, NOW),
    ]
    due_timer = TimerRecord("signal:go", NOW - timedelta(seconds=1))
    got = d.decide_signal(call, "go", Go, inbox, due_timer, None, NOW)
    assert got == d.SignalConsume(inbox[1], Go(n=1), fire_timer="signal:go")
    unpinned = d.decide_signal(call, "go", Go, inbox, None, timedelta(seconds=5), NOW)
    assert isinstance(unpinned, d.SignalConsume) and unpinned.fire_timer is None
    timed_out = d.decide_signal(call, "go", Go, inbox[:1], due_timer, None, NOW)
    assert isinstance(timed_out, d.SignalTimeoutNow)
    assert timed_out.fire_timer == "signal:go"
    assert timed_out.error.error_code == "SIGNAL_TIMEOUT"
    waiting = d.decide_signal(call, "go", Go, [], None, timedelta(seconds=30), NOW)
    assert isinstance(waiting, d.SignalSuspend)
    assert waiting.plan.waiting_for == "signal:go"
    assert waiting.plan.new_timers == (TimerRecord("signal:go", NOW + timedelta(seconds=30)),)
    forever = d.decide_signal(call, "go", Go, [], None, None, NOW)
    assert isinstance(forever, d.SignalSuspend) and forever.plan.wake_at is None


def test_a_buffered_signal_that_no_longer_matches_its_model_is_consumed_as_a_failure() -> None:
    call = Call(0, StepKind.SIGNAL, "go", "signal:go")
    stale = SignalRecord(4, "go", {"n": "not a number"}, None, NOW)
    got = d.decide_signal(call, "go", Go, [stale], None, None, NOW)
    assert isinstance(got, d.SignalConsume) and got.signal is stale
    assert isinstance(got.error, SignalPayloadInvalid)
    assert got.error.__cause__ is not None


def test_a_signal_wait_must_name_a_declared_signal_with_its_model() -> None:
    assert d.check_signal_wait("order", {"go": Go}, "go", Go) is None
    unknown = d.check_signal_wait("order", {"go": Go}, "stop", Go)
    assert unknown is not None and unknown.error_code == "SIGNAL_UNKNOWN"
    other = d.check_signal_wait("order", {"go": Go}, "go", ShipIn)
    assert other is not None and other.error_code == "FLOW_DEFINITION_INVALID"


# --- steps and retries ------------------------------------------------------------------------


def test_retry_decisions() -> None:
    call = Call(0, StepKind.STEP, "pay", "pay")
    policy = RetryPolicy(retries=2, base=1.0, jitter=0.0)
    inline = d.decide_retry(call, policy, 1, True, 0.0, NOW, timedelta(seconds=5))
    assert inline == d.RetryInline(timedelta(seconds=1))
    later = d.decide_retry(call, policy, 2, True, 0.0, NOW, timedelta(seconds=1))
    assert isinstance(later, d.RetryLater)
    assert later.plan.status is RunStatus.RETRYING
    assert later.plan.waiting_for == "timer:retry:pay"
    assert later.plan.new_timers == (TimerRecord("retry:pay", NOW + timedelta(seconds=2)),)
    assert isinstance(d.decide_retry(call, policy, 3, True, 0.0, NOW, timedelta(0)), d.Fail)
    assert isinstance(d.decide_retry(call, policy, 1, False, 0.0, NOW, timedelta(9)), d.Fail)


def test_a_step_starts_at_attempt_one_or_resumes_after_its_backoff() -> None:
    call = Call(3, StepKind.STEP, "charge", "charge#1")
    assert d.resume_step(call, None, {}, NOW) == d.StepRun(1)
    retrying = memo(3, "charge#1", StepStatus.RETRYING, attempts=2)
    timer = TimerRecord("retry:charge#1", NOW + timedelta(minutes=1))
    # Woken before the backoff ends: wait again for the same timer, no progress, nothing new.
    early = d.resume_step(call, retrying, {timer.cursor_key: timer}, NOW)
    assert isinstance(early, d.StepWait)
    assert early.plan.status is RunStatus.RETRYING
    assert early.plan.wake_at == timer.fire_at
    assert early.plan.waiting_for == "timer:retry:charge#1"
    assert early.plan.new_timers == () and not early.plan.progress
    # Due: attempt 3, and its checkpoint fires the timer.
    due = d.resume_step(call, retrying, {timer.cursor_key: timer}, timer.fire_at)
    assert due == d.StepRun(3, fire_timer="retry:charge#1")
    # The timer already fired (a crash after the first checkpoint of the resumed attempt).
    assert d.resume_step(call, retrying, {}, NOW) == d.StepRun(3)


def test_lost_attempts_count_claims_since_progress_after_a_crash_or_an_outage() -> None:
    def lost(claims: int, stalled: int, waiting_for: str | None) -> int:
        run = run_record(claims=claims, stalled_claims=stalled, waiting_for=waiting_for)
        return d.lost_attempts(run)

    # No lost predecessor: a first claim, a resume after a wait, a retry's wake-up.
    for waiting_for in (None, "timer:retry:pay", "signal:approve", "child:x", "deploy"):
        assert lost(1, 1, waiting_for) == 0
        assert lost(4, 3, waiting_for) == 0
    for how in ("recovery", "storage"):
        # The lost attempt had checkpointed (reset the count), then died: one.
        assert lost(2, 1, how) == 1
        # Lost without progress since the start: each claim before this one.
        assert lost(2, 2, how) == 1
        assert lost(4, 4, how) == 3
        # Progress, lost; then lost again without progress: both.
        assert lost(3, 2, how) == 2


def test_lost_attempts_add_to_where_a_step_starts() -> None:
    call = Call(3, StepKind.STEP, "charge", "charge#1")
    assert d.resume_step(call, None, {}, NOW, lost=1) == d.StepRun(2)
    assert d.resume_step(call, None, {}, NOW, lost=3) == d.StepRun(4)
    # Inline retries (memo ``retrying``, attempts 2 recorded), then the attempt running the
    # third try was lost: the re-run is attempt 4.
    retrying = memo(3, "charge#1", StepStatus.RETRYING, attempts=2)
    assert d.resume_step(call, retrying, {}, NOW, lost=1) == d.StepRun(4)
    # A long backoff's due timer: the lost attempt ran try 3 without firing it.
    # A long backoff's due timer: the attempt that scheduled it suspended cleanly (it is not
    # lost), the one that ran try 3 was lost without firing it.
    timer = TimerRecord("retry:charge#1", NOW)
    due = d.resume_step(call, retrying, {timer.cursor_key: timer}, NOW, lost=2)
    assert due == d.StepRun(4, fire_timer="retry:charge#1")
    later = d.resume_step(call, retrying, {timer.cursor_key: timer}, NOW, lost=3)
    assert later == d.StepRun(5, fire_timer="retry:charge#1")
    # Not due yet: still a wait, whatever was lost.
    early = TimerRecord("retry:charge#1", NOW + timedelta(minutes=1))
    assert isinstance(
        d.resume_step(call, retrying, {early.cursor_key: early}, NOW, lost=1), d.StepWait
    )


def test_step_failures_are_classified() -> None:
    plain = d.step_failure("pay", 2, ValueError("card declined"))
    assert isinstance(plain.error, StepFailed) and plain.retryable
    assert plain.error.message == "step 'pay' failed after 2 attempt(s): ValueError: card declined"
    assert isinstance(plain.error.__cause__, ValueError)
    own = FlowError("boom", code="MY_CODE")
    assert d.step_failure("pay", 1, own) == d.StepFailure(own, True)
    for final in (NonRetryable("no"), PayloadTooLarge("big")):
        assert d.step_failure("pay", 1, final) == d.StepFailure(final, False)


# --- child runs -------------------------------------------------------------------------------


def _invoke(
    child: ChildRecord | None = None,
    *,
    depth: int = 0,
    ordinal: int = 1,
    input: Any = None,
    settings: Settings | None = None,
) -> d.InvokeRecord | d.InvokeRefused | d.InvokeStart:
    return d.decide_invoke(
        Call(2, StepKind.INVOKE, "ship@1", "invoke:ship@1"),
        SHIP,
        {"sku": "a"} if input is None else input,
        run_id=RUN,
        child=child,
        depth=depth,
        ordinal=ordinal,
        detached=True,
        settings=settings or Settings(),
    )


def test_a_new_child_gets_a_derived_id_and_its_depth() -> None:
    start = _invoke(depth=2)
    assert isinstance(start, d.InvokeStart)
    child = start.child
    assert child.id == d.child_run_id(RUN, "invoke:ship@1") == uuid.uuid5(RUN, "invoke:ship@1")
    assert (child.name, child.version, child.input) == ("ship", 1, {"sku": "a"})
    assert (child.parent_run_id, child.parent_cursor_key) == (RUN, "invoke:ship@1")
    assert child.meta == {"depth": 3, "detached": True}
    waiting = d.await_child(
        Call(2, StepKind.INVOKE, "ship@1", "invoke:ship@1"), child.id, created=False
    )
    assert waiting.status is RunStatus.AWAITING_CHILD and waiting.wake_at is None
    assert waiting.waiting_for == f"child:{child.id}" and not waiting.progress


def test_a_terminal_child_is_recorded_as_its_outcome() -> None:
    key = "invoke:ship@1"
    done = _invoke(ChildRecord(uuid.uuid4(), key, RunStatus.DONE, output="a"))
    assert done == d.InvokeRecord(StepStatus.OK, output="a")
    error = {"code": "STEP_FAILED", "message": "x"}
    failed = _invoke(ChildRecord(uuid.uuid4(), key, RunStatus.FAILED, error=error))
    assert failed == d.InvokeRecord(StepStatus.FAILED, error=error)
    canceled = _invoke(ChildRecord(uuid.uuid4(), key, RunStatus.CANCELED))
    assert canceled == d.InvokeRecord(
        StepStatus.FAILED, error={"code": "RUN_CANCELED", "message": "child canceled"}
    )


def test_limits_and_bad_input_refuse_the_child() -> None:
    deep = _invoke(depth=10, settings=Settings(max_invoke_depth=10))
    assert isinstance(deep, d.InvokeRefused) and isinstance(deep.error, InvokeDepthExceeded)
    wide = _invoke(ordinal=4, settings=Settings(max_children_per_run=3))
    assert isinstance(wide, d.InvokeRefused) and isinstance(wide.error, InvokeFanoutExceeded)
    bad = _invoke(input={"nope": 1})
    assert isinstance(bad, d.InvokeRefused) and isinstance(bad.error, InputInvalid)
    big = _invoke(input={"sku": "x" * 100}, settings=Settings(max_payload_bytes=50))
    assert isinstance(big, d.InvokeRefused) and isinstance(big.error, PayloadTooLarge)


# --- the end of an attempt --------------------------------------------------------------------


def _drift() -> Drifted:
    return Drifted(ReplayNonDeterministic("replay mismatch"))


def test_attempt_outcomes_are_classified() -> None:
    assert d.classify_attempt(None, None) == d.EndReturned()
    assert d.classify_attempt(None, None).outcome is d.AttemptOutcome.DONE
    suspended = d.classify_attempt(Suspended(plan()), None)
    assert suspended == d.EndSuspended(plan()) and suspended.outcome.value == "suspended"
    drift = _drift()
    failed = d.classify_attempt(drift, drift)
    assert failed == d.EndDrifted(drift.error, park=False)
    assert failed.outcome is d.AttemptOutcome.FAILED
    parked = d.classify_attempt(drift, drift, drift_policy="park")
    assert parked.outcome is d.AttemptOutcome.PARKED
    outage = Aborted(FlowError("db down", code="DATABASE_UNAVAILABLE"))
    assert d.classify_attempt(outage, outage) == d.EndAborted(outage.error)
    assert d.classify_attempt(LeaseLost(RUN), None).outcome is d.AttemptOutcome.LEASE_LOST
    assert d.classify_attempt(None, None, canceled=True).outcome is d.AttemptOutcome.CANCELED


def test_a_body_failure_fails_the_run_with_a_coded_error() -> None:
    own = DataRejected("refused")
    assert d.classify_attempt(own, None) == d.EndFailed(own)
    raw = KeyError("k")
    end = d.classify_attempt(raw, None)
    assert isinstance(end, d.EndFailed) and isinstance(end.error, FlowFailed)
    assert end.error.message == "flow body raised KeyError: 'k'"
    assert end.error.__cause__ is raw


@pytest.mark.parametrize(
    "interrupt",
    [
        Suspended(plan()),
        _drift(),
        Aborted(FlowError("db down", code="DATABASE_UNAVAILABLE")),
        LeaseLost(RUN),
    ],
    ids=["suspended", "drifted", "aborted", "lease_lost"],
)
def test_a_swallowed_interrupt_wins_over_the_exception_that_replaced_it(
    interrupt: Suspended | Drifted | Aborted | LeaseLost,
) -> None:
    swallowed = d.classify_attempt(ValueError("raised in an except: block"), interrupt)
    assert swallowed == d.classify_attempt(interrupt, interrupt)
    assert not isinstance(swallowed, d.EndFailed)


def test_a_bare_interrupt_does_not_hide_a_failure() -> None:
    end = d.classify_attempt(ValueError("x"), Interrupt())
    assert isinstance(end, d.EndFailed)


def test_the_outcome_values_are_the_worker_results() -> None:
    assert [o.value for o in d.AttemptOutcome] == [
        "skipped",
        "done",
        "failed",
        "suspended",
        "parked",
        "aborted",
        "canceled",
        "lease_lost",
    ]


def test_gather_joins_its_branches() -> None:
    early, late = plan(wake=NOW), plan(wake=NOW + timedelta(hours=1))
    boom = ValueError("boom")
    assert d.join_branches([1, "a"]) is None
    assert d.join_branches([1, boom, KeyError("later")]) is boom
    joined = d.join_branches([Suspended(late), boom, Suspended(early)])
    assert isinstance(joined, Suspended) and joined.plan.wake_at == NOW  # waits before failing
    drift = _drift()
    assert d.join_branches([Suspended(early), drift]) is drift


def test_an_outage_releases_the_run_for_a_retry_soon() -> None:
    released = d.outage_plan(NOW)
    assert released.status is RunStatus.RETRYING and released.reason == "storage"
    assert released.wake_at == NOW + timedelta(seconds=2)
    assert released.waiting_for == "storage" and not released.progress


# --- the retry cut ----------------------------------------------------------------------------


def sig(id_: int, consumed_by: str | None) -> SignalRecord:
    return SignalRecord(id_, "go", {"n": id_}, None, NOW, consumed_by, NOW if consumed_by else None)


def timer(key: str, fired: bool) -> TimerRecord:
    return TimerRecord(key, NOW, NOW if fired else None)


def test_the_cut_starts_at_the_failure_that_ended_the_run() -> None:
    # charge failed after a long backoff (its retry timer fired), after a sleep and a signal.
    steps = [
        memo(0, "reserve"),
        memo(1, "sleep:nap"),
        memo(2, "signal:go"),
        memo(3, "charge", StepStatus.FAILED, attempts=3),
    ]
    cut = d.retry_cut(
        steps,
        [sig(7, "signal:go"), sig(8, None)],
        [timer("sleep:nap", True), timer("retry:charge", True)],
        [],
    )
    assert cut == d.RetryCut(
        position=3,
        positions=(3,),
        cursor_keys=frozenset({"charge"}),
        signal_ids=(),  # consumed before the cut: stays consumed
        timer_keys=("retry:charge",),  # the failed step's backoff timer goes with it
        child_ids=(),
    )


def test_a_failed_step_in_the_middle_cuts_everything_after_it() -> None:
    # pay failed and the body caught it, waited for a signal and slept, then raised.
    steps = [
        memo(0, "reserve"),
        memo(1, "pay", StepStatus.FAILED),
        memo(2, "signal:go"),
        memo(3, "signal:go#1"),
        memo(4, "sleep:nap"),
        memo(5, "notify"),
    ]
    signals = [sig(1, "signal:go"), sig(2, "signal:go#1"), sig(3, None)]
    timers = [timer("signal:go#1", True), timer("sleep:nap", True), timer("sleep:later", False)]
    cut = d.retry_cut(steps, signals, timers, [])
    assert cut.position == 1
    assert cut.positions == (1, 2, 3, 4, 5)
    assert cut.cursor_keys == {"pay", "signal:go", "signal:go#1", "sleep:nap", "notify"}
    assert cut.signal_ids == (1, 2)  # consumed after the cut: back to the inbox
    assert cut.timer_keys == ("signal:go#1", "sleep:nap", "sleep:later")  # fired or unfired


def test_a_failed_child_is_retried_with_its_parent() -> None:
    steps = [
        memo(0, "invoke:pack@1", StepStatus.FAILED),  # caught by the body, before the cut
        memo(1, "invoke:ship@1"),
        memo(2, "invoke:ship@1#1", StepStatus.FAILED),
    ]
    packed, shipped, failed, live = (uuid.uuid4() for _ in range(4))
    children = [
        ChildRecord(packed, "invoke:pack@1", RunStatus.FAILED),
        ChildRecord(shipped, "invoke:ship@1", RunStatus.DONE),
        ChildRecord(failed, "invoke:ship@1#1", RunStatus.FAILED),
        ChildRecord(live, "invoke:ship@1#2", RunStatus.RUNNING),
    ]
    cut = d.retry_cut(steps, [], [], children)
    assert cut.position == 2 and cut.positions == (2,)
    assert cut.child_ids == (failed,)


def test_without_a_failed_memo_nothing_but_unfired_timers_is_cut() -> None:
    cut = d.retry_cut(
        [memo(0, "a"), memo(1, "sleep")],
        [sig(1, "sleep")],
        [timer("sleep", True), timer("retry:b", False)],
        [],
    )
    assert cut == d.RetryCut(position=d.NO_CUT, timer_keys=("retry:b",))
    assert d.NO_CUT == 2**31 - 1  # what the ``retried`` event records then


def test_the_cut_can_start_anywhere() -> None:
    steps = [memo(0, "a"), memo(1, "b"), memo(2, "c")]
    cut = d.cut_at(1, list(reversed(steps)), [sig(5, "a"), sig(6, "c")], [], [])
    assert cut.positions == (1, 2) and cut.signal_ids == (6,)
