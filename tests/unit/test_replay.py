"""The pure replay core: cursor keys, drift detection and wait decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from iterflow.core import replay
from iterflow.core.errors import ReplayNonDeterministic
from iterflow.core.models import (
    RunStatus,
    SignalRecord,
    StepKind,
    StepRecord,
    StepStatus,
    TimerRecord,
)
from iterflow.core.retry import RetryPolicy

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def rec(pos: int, kind: StepKind, key: str, label: str | None = None) -> StepRecord:
    return StepRecord(pos, key, kind, label or key, StepStatus.OK, output=pos)


def test_keys_are_label_plus_occurrence_in_call_order() -> None:
    cur = replay.Cursor([])
    keys = [
        cur.next(StepKind.STEP, "charge")[0].cursor_key,
        cur.next(StepKind.STEP, "charge")[0].cursor_key,
        cur.next(StepKind.SLEEP, "cool-off")[0].cursor_key,
        cur.next(StepKind.SLEEP, "")[0].cursor_key,
        cur.next(StepKind.SIGNAL, "approve")[0].cursor_key,
        cur.next(StepKind.SIGNAL, "approve")[0].cursor_key,
        cur.next(StepKind.SIGNAL, "approve")[0].cursor_key,
    ]
    assert keys == [
        "charge",
        "charge#1",
        "sleep:cool-off",
        "sleep",
        "signal:approve",
        "signal:approve#1",
        "signal:approve#2",
    ]


def test_matching_history_returns_memos_then_new_work() -> None:
    cur = replay.Cursor([rec(0, StepKind.STEP, "a"), rec(1, StepKind.STEP, "b")])
    assert cur.next(StepKind.STEP, "a")[1] is not None
    assert cur.next(StepKind.STEP, "b")[1] is not None
    call, memo = cur.next(StepKind.STEP, "c")
    assert memo is None and call.position == 2
    cur.check_complete()


@pytest.mark.parametrize(
    ("history", "calls"),
    [
        ([("step", "a"), ("step", "b")], [("step", "a"), ("step", "x")]),  # renamed
        ([("step", "a"), ("step", "b")], [("step", "b")]),  # removed / reordered
        ([("step", "a")], [("sleep", "a")]),  # changed kind
        ([("step", "a"), ("step", "b")], [("step", "x"), ("step", "a")]),  # inserted before
    ],
)
def test_drift_names_both_calls(
    history: list[tuple[str, str]], calls: list[tuple[str, str]]
) -> None:
    cur = replay.Cursor(
        [
            rec(i, StepKind(k), replay.key_base(StepKind(k), label), label)
            for i, (k, label) in enumerate(history)
        ]
    )
    with pytest.raises(ReplayNonDeterministic) as info:
        for kind, label in calls:
            cur.next(StepKind(kind), label)
    err = info.value
    assert err.error_code == "REPLAY_NON_DETERMINISTIC"
    assert set(err.details) == {"recorded", "requested"}
    assert "history recorded" in err.message and "now calls" in err.message


def test_history_longer_than_body_is_drift() -> None:
    cur = replay.Cursor([rec(0, StepKind.STEP, "a"), rec(1, StepKind.STEP, "b")])
    cur.next(StepKind.STEP, "a")
    with pytest.raises(ReplayNonDeterministic, match="no longer makes that call"):
        cur.check_complete()


def test_sleep_decisions() -> None:
    call = replay.Call(0, StepKind.SLEEP, "", "sleep")
    first = replay.decide_sleep(call, None, NOW + timedelta(hours=1), NOW)
    assert isinstance(first, replay.SleepSuspend)
    assert first.plan.status is RunStatus.SLEEPING
    assert first.plan.new_timers == (TimerRecord("sleep", NOW + timedelta(hours=1)),)
    assert first.plan.progress
    # A pinned timer wins over a recomputed due time, and an early wake is no progress.
    pinned = TimerRecord("sleep", NOW + timedelta(minutes=5))
    early = replay.decide_sleep(call, pinned, NOW + timedelta(days=9), NOW)
    assert isinstance(early, replay.SleepSuspend)
    assert early.plan.wake_at == pinned.fire_at and not early.plan.progress
    assert early.plan.new_timers == ()
    assert isinstance(
        replay.decide_sleep(call, pinned, NOW, NOW + timedelta(minutes=5)), replay.SleepFire
    )


def test_signal_decisions_consume_fifo_and_prefer_delivery_over_timeout() -> None:
    call = replay.Call(0, StepKind.SIGNAL, "go", "signal:go")
    inbox = [
        SignalRecord(1, "other", {}, None, NOW),
        SignalRecord(2, "go", {"n": 1}, None, NOW),
        SignalRecord(3, "go", {"n": 2}, None, NOW),
    ]
    due_timer = TimerRecord("signal:go", NOW - timedelta(seconds=1))
    got = replay.decide_signal(call, "go", inbox, due_timer, None, NOW)
    assert isinstance(got, replay.SignalConsume) and got.signal.id == 2
    timed_out = replay.decide_signal(call, "go", inbox[:1], due_timer, None, NOW)
    assert isinstance(timed_out, replay.SignalTimeoutNow)
    waiting = replay.decide_signal(call, "go", [], None, NOW + timedelta(seconds=30), NOW)
    assert isinstance(waiting, replay.SignalSuspend)
    assert waiting.plan.waiting_for == "signal:go"
    assert waiting.plan.new_timers == (TimerRecord("signal:go", NOW + timedelta(seconds=30)),)
    forever = replay.decide_signal(call, "go", [], None, None, NOW)
    assert isinstance(forever, replay.SignalSuspend) and forever.plan.wake_at is None


def test_retry_decisions() -> None:
    call = replay.Call(0, StepKind.STEP, "pay", "pay")
    policy = RetryPolicy(retries=2, base=1.0, jitter=0.0)
    inline = replay.decide_retry(call, policy, 1, True, 0.0, NOW, timedelta(seconds=5))
    assert inline == replay.RetryInline(timedelta(seconds=1))
    later = replay.decide_retry(call, policy, 2, True, 0.0, NOW, timedelta(seconds=1))
    assert isinstance(later, replay.RetryLater)
    assert later.plan.status is RunStatus.RETRYING
    assert later.plan.new_timers == (TimerRecord("retry:pay", NOW + timedelta(seconds=2)),)
    assert isinstance(
        replay.decide_retry(call, policy, 3, True, 0.0, NOW, timedelta(0)), replay.Fail
    )
    assert isinstance(
        replay.decide_retry(call, policy, 1, False, 0.0, NOW, timedelta(9)), replay.Fail
    )
