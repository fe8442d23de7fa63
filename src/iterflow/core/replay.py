"""The pure replay core: history + calls in, decisions out.

Nothing here does I/O, reads a clock or knows about SQL. The worker's :class:`FlowContext`
asks this module what each ``ctx`` call means given the run's recorded history, then performs the
resulting decision (return a memo, run new work, checkpoint, or suspend).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from iterflow.core.errors import FlowError, ReplayNonDeterministic
from iterflow.core.models import (
    RunStatus,
    SignalRecord,
    StepKind,
    StepRecord,
    SuspendPlan,
    TimerRecord,
)
from iterflow.core.retry import RetryPolicy

__all__ = [
    "Call",
    "Cursor",
    "Fail",
    "RetryInline",
    "RetryLater",
    "SignalConsume",
    "SignalSuspend",
    "SignalTimeoutNow",
    "SleepFire",
    "SleepSuspend",
    "decide_retry",
    "decide_signal",
    "decide_sleep",
    "key_base",
]


@dataclass(frozen=True, slots=True)
class Call:
    """One ``ctx`` call with its position and stable cursor key."""

    position: int
    kind: StepKind
    label: str
    cursor_key: str

    def describe(self) -> str:
        """Human form used in drift messages, e.g. ``step 'charge' (key charge#1) at 3``."""
        return (
            f"{self.kind.value} {self.label!r} (key {self.cursor_key}) at position {self.position}"
        )


def key_base(kind: StepKind, label: str) -> str:
    """The key base of a call; repeats get ``#n`` appended (``charge``, ``charge#1``)."""
    if kind is StepKind.STEP:
        return label
    return f"{kind.value}:{label}" if label else kind.value


def _describe_record(rec: StepRecord) -> str:
    return f"{rec.kind} {rec.label!r} (key {rec.cursor_key}) at position {rec.position}"


def drift_error(call: Call | None, recorded: StepRecord | None) -> ReplayNonDeterministic:
    """The error for a body whose calls no longer match the history."""
    if call is not None and recorded is not None:
        msg = (
            f"replay mismatch: history recorded {_describe_record(recorded)} but the code now "
            f"calls {call.describe()}; deploy code compatible with running runs, or branch with "
            "ctx.patched()"
        )
    elif recorded is not None:
        msg = (
            f"replay mismatch: history recorded {_describe_record(recorded)} but the code no "
            "longer makes that call"
        )
    else:
        msg = "replay mismatch"
    details: dict[str, Any] = {}
    if call is not None:
        details["requested"] = {
            "kind": call.kind.value,
            "label": call.label,
            "cursor_key": call.cursor_key,
            "position": call.position,
        }
    if recorded is not None:
        details["recorded"] = {
            "kind": str(recorded.kind),
            "label": recorded.label,
            "cursor_key": recorded.cursor_key,
            "position": recorded.position,
        }
    return ReplayNonDeterministic(msg, details=details)


class Cursor:
    """Assigns positions and cursor keys in call order and matches them against history."""

    def __init__(self, history: Iterable[StepRecord]) -> None:
        self._history: dict[int, StepRecord] = {rec.position: rec for rec in history}
        self._counts: dict[str, int] = {}
        self._next = 0

    @property
    def position(self) -> int:
        """The position the next call will take."""
        return self._next

    def next(self, kind: StepKind, label: str) -> tuple[Call, StepRecord | None]:
        """Take the next call; return it with its memo, or raise on drift."""
        base = key_base(kind, label)
        n = self._counts.get(base, 0)
        self._counts[base] = n + 1
        call = Call(self._next, kind, label, base if n == 0 else f"{base}#{n}")
        self._next += 1
        recorded = self._history.get(call.position)
        if recorded is not None and (
            recorded.kind != kind or recorded.cursor_key != call.cursor_key
        ):
            raise drift_error(call, recorded)
        return call, recorded

    def check_complete(self) -> None:
        """Raise when history holds calls the body did not make (a step was removed)."""
        leftover = sorted(p for p in self._history if p >= self._next)
        if leftover:
            raise drift_error(None, self._history[leftover[0]])

    def record(self, rec: StepRecord) -> None:
        """Remember a memo written during this attempt."""
        self._history[rec.position] = rec

    def peek(self) -> StepRecord | None:
        """The memo recorded at the next position, without taking the position."""
        return self._history.get(self._next)

    def key_for(self, kind: StepKind, label: str) -> str:
        """The cursor key the next call of this kind and label would get (nothing is taken)."""
        base = key_base(kind, label)
        n = self._counts.get(base, 0)
        return base if n == 0 else f"{base}#{n}"

    def takes_patch(self, change_id: str) -> bool:
        """Whether ``ctx.patched(change_id)`` takes the next position.

        True when history holds that patch's memo there, or holds nothing from here on (the run
        reaches this point under the new code). False when the run passed this point before
        under code without the patch: the caller answers False and takes no position, so the
        old history keeps matching.
        """
        if all(p < self._next for p in self._history):
            return True
        rec = self.peek()
        return (
            rec is not None
            and rec.kind == StepKind.PATCH
            and rec.cursor_key == self.key_for(StepKind.PATCH, change_id)
        )


# --- suspension -------------------------------------------------------------------------------


# --- sleep ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SleepFire:
    """The sleep is due: record it (its memo is progress) and continue."""


@dataclass(frozen=True, slots=True)
class SleepSuspend:
    """The sleep is not due: end the attempt until ``plan.wake_at``."""

    plan: SuspendPlan


def decide_sleep(
    call: Call, timer: TimerRecord | None, fire_at: datetime, now: datetime
) -> SleepFire | SleepSuspend:
    """Decide a ``ctx.sleep`` with no memo. ``fire_at`` is used only when no timer is pinned."""
    due = timer.fire_at if timer is not None else fire_at
    if due <= now:
        return SleepFire()
    return SleepSuspend(
        SuspendPlan(
            status=RunStatus.SLEEPING,
            reason="sleep",
            cursor_key=call.cursor_key,
            wake_at=due,
            waiting_for=f"timer:{call.cursor_key}",
            new_timers=() if timer is not None else (TimerRecord(call.cursor_key, due),),
            progress=timer is None,
        )
    )


# --- signals ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignalConsume:
    """Consume the oldest buffered signal of this name."""

    signal: SignalRecord


@dataclass(frozen=True, slots=True)
class SignalTimeoutNow:
    """The wait's timer is due and nothing arrived: record the timeout."""


@dataclass(frozen=True, slots=True)
class SignalSuspend:
    """Nothing to consume yet: end the attempt and wait for a delivery (or the timeout)."""

    plan: SuspendPlan


def decide_signal(
    call: Call,
    name: str,
    inbox: Sequence[SignalRecord],
    timer: TimerRecord | None,
    timeout_at: datetime | None,
    now: datetime,
) -> SignalConsume | SignalTimeoutNow | SignalSuspend:
    """Decide a ``ctx.signal`` with no memo. A buffered signal always wins over a due timeout."""
    for sig in inbox:  # inbox is ordered by arrival
        if sig.name == name and sig.consumed_at is None:
            return SignalConsume(sig)
    due = timer.fire_at if timer is not None else timeout_at
    if due is not None and due <= now:
        return SignalTimeoutNow()
    return SignalSuspend(
        SuspendPlan(
            status=RunStatus.AWAITING_SIGNAL,
            reason="signal",
            cursor_key=call.cursor_key,
            wake_at=due,
            waiting_for=f"signal:{name}",
            new_timers=(TimerRecord(call.cursor_key, due),) if timer is None and due else (),
            progress=timer is None,
        )
    )


# --- step retries -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryInline:
    """Wait ``delay`` in process, then try again."""

    delay: timedelta


@dataclass(frozen=True, slots=True)
class RetryLater:
    """End the attempt; a wake-up at ``plan.wake_at`` tries again."""

    plan: SuspendPlan


@dataclass(frozen=True, slots=True)
class Fail:
    """No attempts left (or not retryable): the step fails for good."""


def decide_retry(
    call: Call,
    policy: RetryPolicy,
    attempt: int,
    retryable: bool,
    rand: float,
    now: datetime,
    inline_max: timedelta,
) -> RetryInline | RetryLater | Fail:
    """After failed attempt ``attempt`` (1-based), decide what happens next."""
    if not retryable or attempt >= policy.max_attempts:
        return Fail()
    delay = policy.delay(attempt, rand)
    if delay <= inline_max:
        return RetryInline(delay)
    wake = now + delay
    key = f"retry:{call.cursor_key}"
    return RetryLater(
        SuspendPlan(
            status=RunStatus.RETRYING,
            reason="retry",
            cursor_key=call.cursor_key,
            wake_at=wake,
            waiting_for=f"timer:{key}",
            new_timers=(TimerRecord(key, wake),),
        )
    )


def memo_error(rec: StepRecord) -> FlowError:
    """The error stored in a failed memo, rebuilt with its code."""
    return FlowError.from_dict(rec.error or {"code": "STEP_FAILED", "message": "step failed"})
