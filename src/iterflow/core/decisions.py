"""Pure decisions: what a ``ctx`` call, the end of an attempt or a retry means.

Each function is given the recorded history (memo rows, timers, inbox, children), the inputs and
the time, and returns a small frozen value saying what to do; the runtime performs it (return a
memo, run new work and checkpoint it, suspend, write the run's end) and the stores apply it
(:func:`retry_cut`). Nothing here does I/O or reads a clock or randomness: the caller passes
``now`` and any random number.

One module (~850 lines) on purpose: every decision the runtime and the stores act on is found
here, next to the small result types it returns; splitting it per ``ctx`` call would scatter the
shared pieces (suspend plans, retry policy, the cut) across files that import each other.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Literal

from pydantic import ValidationError

from iterflow.core import codec, keys
from iterflow.core.definition import FlowDef
from iterflow.core.errors import (
    Aborted,
    CtxNested,
    Drifted,
    FlowDefinitionError,
    FlowError,
    FlowFailed,
    ForkStepUnknown,
    Halted,
    InputInvalid,
    Interrupt,
    InvokeDepthExceeded,
    InvokeFanoutExceeded,
    LeaseLost,
    NonRetryable,
    PayloadInvalid,
    PayloadTooLarge,
    SignalPayloadInvalid,
    SignalTimeout,
    SignalUnknown,
    StepFailed,
    StepResultUntyped,
    Suspended,
    safe_text,
)
from iterflow.core.models import (
    ChildRecord,
    NewRun,
    RunRecord,
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
from iterflow.core.states import RETRYABLE_STATUSES

__all__ = [
    "CANCEL_META_KEY",
    "NO_CUT",
    "AttemptEnd",
    "AttemptOutcome",
    "CancelRequest",
    "CompensationOutcome",
    "EndAborted",
    "EndCanceled",
    "EndCompensated",
    "EndDrifted",
    "EndFailed",
    "EndHalted",
    "EndLeaseLost",
    "EndReturned",
    "EndSuspended",
    "Fail",
    "ForkCut",
    "InvokeRecord",
    "InvokeRefused",
    "InvokeStart",
    "RetryCut",
    "RetryInline",
    "RetryLater",
    "SignalConsume",
    "SignalSuspend",
    "SignalTimeoutNow",
    "SleepFire",
    "SleepSuspend",
    "StepFailure",
    "StepRun",
    "StepWait",
    "Undo",
    "await_child",
    "cancel_meta",
    "cancel_request",
    "canceled_error",
    "check_signal_wait",
    "child_run_id",
    "classify_attempt",
    "compensated_end",
    "compensation_plan",
    "cut_at",
    "decide_invoke",
    "decide_retry",
    "decide_signal",
    "decide_sleep",
    "fork_cut",
    "forked_run",
    "join_branches",
    "lost_attempts",
    "outage_plan",
    "resume_children",
    "resume_step",
    "retry_cut",
    "step_failure",
    "was_compensated",
]


# --- sleep ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SleepFire:
    """The sleep is due: record it (its memo is progress) and continue. The memo records
    ``fire_at``; its checkpoint fires ``fire_timer`` (the pinned timer, if any)."""

    fire_at: datetime
    fire_timer: str | None = None


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
        if timer is None:
            return SleepFire(now)
        return SleepFire(timer.fire_at, fire_timer=call.cursor_key)
    return SleepSuspend(
        SuspendPlan(
            status=RunStatus.SLEEPING,
            reason="sleep",
            cursor_key=call.cursor_key,
            wake_at=due,
            waiting_for=keys.waiting_for_timer(call.cursor_key),
            new_timers=() if timer is not None else (TimerRecord(call.cursor_key, due),),
            progress=timer is None,
        )
    )


# --- signals ----------------------------------------------------------------------------------


def check_signal_wait(
    flow_name: str, declared: Mapping[str, Any], name: str, model: Any
) -> FlowError | None:
    """Why ``ctx.signal(name, model)`` is not allowed in this flow (undeclared name, or a model
    other than the declared one), or None."""
    if name not in declared:
        return SignalUnknown(
            f"flow {flow_name!r} does not declare signal {name!r}; add it to "
            f"signals={{{name!r}: {getattr(model, '__name__', model)}}} when defining the flow"
        )
    if declared[name] is not model:
        return FlowDefinitionError(
            f"signal {name!r} is declared with {declared[name]!r} but awaited with {model!r}; "
            "await it with the model the flow declares (share one Signal descriptor between "
            "the flow's signals= and ctx.signal)"
        )
    return None


@dataclass(frozen=True, slots=True)
class SignalConsume:
    """Consume the oldest buffered signal of this name: record ``ok`` with its payload, or, when
    the payload no longer matches the model, ``failed`` with ``error``. The checkpoint fires
    ``fire_timer`` (the wait's timeout timer, if one is pinned)."""

    signal: SignalRecord
    value: Any = None
    fire_timer: str | None = None
    error: FlowError | None = None


@dataclass(frozen=True, slots=True)
class SignalTimeoutNow:
    """The wait's timer is due and nothing arrived: record ``error`` (``SIGNAL_TIMEOUT``),
    firing ``fire_timer``."""

    fire_timer: str
    error: FlowError


@dataclass(frozen=True, slots=True)
class SignalSuspend:
    """Nothing to consume yet: end the attempt and wait for a delivery (or the timeout)."""

    plan: SuspendPlan


def decide_signal(
    call: Call,
    name: str,
    model: Any,
    inbox: Sequence[SignalRecord],
    timer: TimerRecord | None,
    timeout: timedelta | None,
    now: datetime,
) -> SignalConsume | SignalTimeoutNow | SignalSuspend:
    """Decide a ``ctx.signal`` with no memo. A buffered signal always wins over a due timeout;
    the timeout counts from ``now`` unless a timer is pinned already."""
    fire_timer = call.cursor_key if timer is not None else None
    for sig in inbox:  # inbox is ordered by arrival
        if sig.name == name and sig.consumed_at is None:
            try:
                value = codec.load(sig.payload, model)
            except ValidationError as exc:
                invalid = SignalPayloadInvalid(
                    f"signal {name!r} payload does not match "
                    f"{getattr(model, '__name__', None) or model!r}, the model this run's flow "
                    f"declares (it was sent by a process that does not register this version, "
                    f"or stored before the model changed): {codec.validation_message(exc)}",
                    details={"where": f"signal {name!r}"},
                )
                invalid.__cause__ = exc
                return SignalConsume(sig, fire_timer=fire_timer, error=invalid)
            return SignalConsume(sig, value, fire_timer)
    due = timer.fire_at if timer is not None else now + timeout if timeout else None
    if due is not None and due <= now:
        error = SignalTimeout(
            f"signal {name!r} did not arrive within {timeout or 'its timeout'}"
            f" (cursor {call.cursor_key})"
        )
        return SignalTimeoutNow(call.cursor_key, error)
    return SignalSuspend(
        SuspendPlan(
            status=RunStatus.AWAITING_SIGNAL,
            reason="signal",
            cursor_key=call.cursor_key,
            wake_at=due,
            waiting_for=keys.waiting_for_signal(name),
            new_timers=(TimerRecord(call.cursor_key, due),) if timer is None and due else (),
            progress=timer is None,
        )
    )


# --- steps and their retries ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepRun:
    """Run attempt ``attempt`` of the step now; its checkpoint fires ``fire_timer`` (the due
    backoff timer of a step resumed after a long retry wait)."""

    attempt: int
    fire_timer: str | None = None


@dataclass(frozen=True, slots=True)
class StepWait:
    """The step's backoff timer is not due yet (an early wake-up): wait for it again."""

    plan: SuspendPlan


def lost_attempts(run: RunRecord) -> int:
    """How many earlier attempts of a just-claimed ``run`` may have begun, without recording
    it, the step(s) this attempt begins before its first checkpoint (where the run stopped).

    0 unless the previous attempt was lost: its lease expired (the reconciler's recovery,
    ``waiting_for`` = ``recovery``) or a storage outage aborted it (``storage``: its step may
    have run, then failed to checkpoint). Then each claim since the run last recorded progress
    but this one (``stalled_claims`` counts this claim too), plus the attempt that recorded that
    progress, if an attempt did (an earlier claim): it may have been lost after it. An attempt
    lost before it reached the step (killed while replaying) cannot be told apart and is
    counted: a step that may be a duplicate says so. :func:`resume_step` discounts the attempt
    that scheduled a due backoff, which ended cleanly."""
    if run.waiting_for not in (keys.WAITING_RECOVERY, keys.WAITING_STORAGE):
        return 0
    return run.stalled_claims - 1 + (run.claims > run.stalled_claims)


def resume_step(
    call: Call,
    memo: StepRecord | None,
    timers: Mapping[str, TimerRecord],
    now: datetime,
    lost: int = 0,
) -> StepRun | StepWait:
    """Where a step without a final memo starts: attempt 1, or after a ``retrying`` memo (a
    long backoff ended the attempt that failed) the next attempt once its ``retry:<key>`` timer
    is due; plus the ``lost`` attempts (:func:`lost_attempts`) that may have begun it since its
    last recorded attempt."""
    if memo is None or memo.status is not StepStatus.RETRYING:
        return StepRun(1 + lost)
    retry_key = keys.retry_timer_key(call.cursor_key)
    timer = timers.get(retry_key)
    if timer is None:  # already fired (or never pinned): go on
        return StepRun(memo.attempts + 1 + lost)
    if timer.fire_at > now:
        return StepWait(
            SuspendPlan(
                status=RunStatus.RETRYING,
                reason="retry",
                cursor_key=call.cursor_key,
                wake_at=timer.fire_at,
                waiting_for=keys.waiting_for_timer(retry_key),
                progress=False,
            )
        )
    # The attempt that scheduled this backoff suspended cleanly: not one of the lost ones.
    lost = max(lost - 1, 1) if lost else 0
    return StepRun(memo.attempts + 1 + lost, fire_timer=retry_key)


@dataclass(frozen=True, slots=True)
class StepFailure:
    """A failed step attempt: the error its memo records and whether another attempt may fix
    it."""

    error: FlowError
    retryable: bool


def step_failure(label: str, attempt: int, exc: Exception) -> StepFailure:
    """Classify what a step attempt raised. A ``FlowError`` is kept as is; anything else becomes
    ``STEP_FAILED`` (with ``exc`` as its cause). ``NonRetryable``, a result that cannot be
    stored or decoded as itself, and a ``ctx`` call made inside the step (programming errors: the
    body ran once and is not run again for them) are final."""
    retryable = not isinstance(
        exc, NonRetryable | PayloadTooLarge | PayloadInvalid | StepResultUntyped | CtxNested
    )
    if isinstance(exc, FlowError):
        return StepFailure(exc, retryable)
    err = StepFailed(
        f"step {label!r} failed after {attempt} attempt(s): {type(exc).__name__}: {safe_text(exc)}"
    )
    err.__cause__ = exc
    return StepFailure(err, retryable)


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
    key = keys.retry_timer_key(call.cursor_key)
    return RetryLater(
        SuspendPlan(
            status=RunStatus.RETRYING,
            reason="retry",
            cursor_key=call.cursor_key,
            wake_at=wake,
            waiting_for=keys.waiting_for_timer(key),
            new_timers=(TimerRecord(key, wake),),
        )
    )


# --- child runs -------------------------------------------------------------------------------


def child_run_id(run_id: uuid.UUID, cursor_key: str) -> uuid.UUID:
    """The id of the child started by the ``ctx.invoke`` at ``cursor_key``: derived, so a replay
    (or a crash between starting the child and suspending) finds the same child."""
    return uuid.uuid5(run_id, cursor_key)


@dataclass(frozen=True, slots=True)
class InvokeRecord:
    """The child is terminal: record its outcome (``ok`` with its output, or ``failed`` with its
    error) and return or raise it in the parent."""

    status: StepStatus
    output: Any = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class InvokeRefused:
    """The child may not start (nesting depth, fan-out, invalid or unstorable input): the call
    fails for good with ``error``."""

    error: FlowError


@dataclass(frozen=True, slots=True)
class InvokeStart:
    """Start (or find again) the child ``child``, then wait for it."""

    child: NewRun


def decide_invoke(
    call: Call,
    definition: FlowDef[Any, Any],
    input: Any,
    *,
    run_id: uuid.UUID,
    child: ChildRecord | None,
    depth: int,
    ordinal: int,
    detached: bool,
    settings: Settings,
) -> InvokeRecord | InvokeRefused | InvokeStart:
    """Decide a ``ctx.invoke`` of ``definition`` with no memo: ``child`` is the terminal child
    at this cursor key (if any), ``depth`` the parent's nesting and ``ordinal`` how many invokes
    this attempt has made so far, this one included."""
    if child is not None:
        if child.status is RunStatus.DONE:
            return InvokeRecord(StepStatus.OK, output=child.output)
        error = child.error or {"code": "RUN_CANCELED", "message": "child canceled"}
        return InvokeRecord(StepStatus.FAILED, error=dict(error))
    if depth + 1 > settings.max_invoke_depth:
        return InvokeRefused(
            InvokeDepthExceeded(
                f"invoking {definition.key} would nest {depth + 1} levels deep "
                f"(max {settings.max_invoke_depth})"
            )
        )
    if ordinal > settings.max_children_per_run:
        return InvokeRefused(
            InvokeFanoutExceeded(
                f"run would start more than {settings.max_children_per_run} child runs"
            )
        )
    try:
        value = definition.validate_input(input)
        limit_key = definition.limit_key(value)
        data = codec.encode(
            value,
            definition.input_type,
            what=f"input of child {definition.key}",
            limit=settings.max_payload_bytes,
        )
    except (InputInvalid, PayloadTooLarge, PayloadInvalid) as err:
        return InvokeRefused(err)
    return InvokeStart(
        NewRun(
            id=child_run_id(run_id, call.cursor_key),
            name=definition.name,
            version=definition.version,
            input=data,
            parent_run_id=run_id,
            parent_cursor_key=call.cursor_key,
            meta={"depth": depth + 1, "detached": detached},
            deadline=definition.deadline,
            limit_key=limit_key,
        )
    )


def await_child(call: Call, child_id: uuid.UUID, *, created: bool) -> SuspendPlan:
    """Wait for the child; starting it (``created``) is progress, finding it again is not."""
    return SuspendPlan(
        status=RunStatus.AWAITING_CHILD,
        reason="child",
        cursor_key=call.cursor_key,
        wake_at=None,
        waiting_for=keys.waiting_for_child(child_id),
        progress=created,
    )


# --- the end of an attempt --------------------------------------------------------------------


class AttemptOutcome(Enum):
    """What one attempt on a run did (``Worker.advance``'s result)."""

    SKIPPED = "skipped"  #: not claimable: terminal, or another worker's live lease
    DONE = "done"
    FAILED = "failed"
    SUSPENDED = "suspended"  #: sleeping, awaiting a signal or child, or retrying later
    PARKED = "parked"  #: drifted (or unknown flow) under the ``park`` policy
    ABORTED = "aborted"  #: storage failed mid-attempt; retried shortly
    CANCELED = "canceled"  #: canceled by someone else during the attempt
    LEASE_LOST = "lease_lost"  #: another worker owns the run now; nothing more was written


@dataclass(frozen=True, slots=True)
class EndReturned:
    """The body returned and matched the whole history: store its output and finish."""

    @property
    def outcome(self) -> AttemptOutcome:
        """``done``, unless the output cannot be stored (then the runtime fails the run)."""
        return AttemptOutcome.DONE


@dataclass(frozen=True, slots=True)
class EndSuspended:
    """The run waits: write ``plan``."""

    plan: SuspendPlan

    @property
    def outcome(self) -> AttemptOutcome:
        """``suspended``."""
        return AttemptOutcome.SUSPENDED


@dataclass(frozen=True, slots=True)
class EndDrifted:
    """The body no longer matches the history: park the run (``park`` policy) or fail it."""

    error: FlowError
    park: bool

    @property
    def outcome(self) -> AttemptOutcome:
        """``parked`` or ``failed``."""
        return AttemptOutcome.PARKED if self.park else AttemptOutcome.FAILED


@dataclass(frozen=True, slots=True)
class EndAborted:
    """Storage failed mid-attempt: release the run for a retry soon (:func:`outage_plan`)."""

    error: FlowError

    @property
    def outcome(self) -> AttemptOutcome:
        """``aborted``."""
        return AttemptOutcome.ABORTED


@dataclass(frozen=True, slots=True)
class EndFailed:
    """The body raised: the run fails with ``error``."""

    error: FlowError

    @property
    def outcome(self) -> AttemptOutcome:
        """``failed``."""
        return AttemptOutcome.FAILED


@dataclass(frozen=True, slots=True)
class EndLeaseLost:
    """Another worker owns the run: stop without writing."""

    @property
    def outcome(self) -> AttemptOutcome:
        """``lease_lost``."""
        return AttemptOutcome.LEASE_LOST


@dataclass(frozen=True, slots=True)
class EndCanceled:
    """The run was canceled during the attempt: nothing more to write."""

    @property
    def outcome(self) -> AttemptOutcome:
        """``canceled``."""
        return AttemptOutcome.CANCELED


@dataclass(frozen=True, slots=True)
class EndHalted:
    """A ``cancel(compensate=True)`` is pending and the replay reached where the run stopped (or
    the body ended): run the compensations, then end the run ``canceled``."""

    @property
    def outcome(self) -> AttemptOutcome:
        """``canceled`` (what the run ends as once its compensations ran)."""
        return AttemptOutcome.CANCELED


@dataclass(frozen=True, slots=True)
class EndCompensated:
    """The compensations ran (or one failed for good): write ``status`` (``failed``,
    ``canceled`` or ``compensation_failed``) with ``error``, the original error carrying the
    compensation record in ``details.compensation``."""

    status: RunStatus
    error: dict[str, Any]

    @property
    def outcome(self) -> AttemptOutcome:
        """``canceled`` for a cancel, else ``failed``."""
        canceled = self.status is RunStatus.CANCELED
        return AttemptOutcome.CANCELED if canceled else AttemptOutcome.FAILED


#: How an attempt's body ended, before anything is written.
AttemptEnd = (
    EndReturned
    | EndSuspended
    | EndDrifted
    | EndAborted
    | EndFailed
    | EndLeaseLost
    | EndCanceled
    | EndHalted
    | EndCompensated
)


def classify_attempt(
    raised: Suspended | Drifted | Aborted | Halted | LeaseLost | Exception | None,
    interrupted: Interrupt | LeaseLost | None,
    *,
    drift_policy: Literal["fail", "park"] = "fail",
    canceled: bool = False,
    halting: bool = False,
) -> AttemptEnd:
    """Classify the end of a body: ``raised`` is what the body (or the end-of-body check)
    raised, None when it returned; ``interrupted`` is the interrupt the context raised last.
    ``halting``: a ``cancel(compensate=True)`` is pending, so a body that halted, returned or
    raised ends in its compensations (:class:`EndHalted`).

    A suspension, drift or storage abort the body swallowed and turned into another exception
    (``except BaseException: raise ValueError``) still wins over that exception.
    """
    if canceled:
        return EndCanceled()
    if isinstance(raised, Exception) and isinstance(
        interrupted, Suspended | Drifted | Aborted | LeaseLost | Halted
    ):
        raised = interrupted
    if halting and (raised is None or isinstance(raised, Halted | Exception)):
        return EndHalted()
    match raised:
        case None:
            return EndReturned()
        case Suspended():
            return EndSuspended(raised.plan)
        case Drifted():
            return EndDrifted(raised.error, park=drift_policy == "park")
        case Aborted():
            return EndAborted(raised.error)
        case LeaseLost():
            return EndLeaseLost()
        case FlowError():
            return EndFailed(raised)
    err = FlowFailed(f"flow body raised {type(raised).__name__}: {safe_text(raised)}")
    err.__cause__ = raised
    return EndFailed(err)


def join_branches(results: Sequence[object]) -> BaseException | None:
    """What a ``ctx.gather`` raises once every branch has finished (``results`` in argument
    order, exceptions included), or None to return the results. A drift, storage abort or lost
    lease stops the run at once; waiting branches suspend it together, at the earliest due
    time, before any branch's failure is raised."""
    plans: list[SuspendPlan] = []
    for result in results:
        if isinstance(result, Drifted | Aborted | LeaseLost):
            return result
        if isinstance(result, Suspended):
            plans.append(result.plan)
        elif isinstance(result, BaseException) and not isinstance(result, Exception):
            return result
    if plans:
        return Suspended(functools.reduce(SuspendPlan.merge, plans))
    return next((r for r in results if isinstance(r, Exception)), None)


#: How long an attempt aborted by a storage outage waits before its run is tried again.
OUTAGE_RETRY = timedelta(seconds=2)


def outage_plan(now: datetime) -> SuspendPlan:
    """Release a run whose attempt storage aborted: ``retrying`` shortly (if even this write
    fails, lease expiry recovers the run)."""
    return SuspendPlan(
        status=RunStatus.RETRYING,
        reason="storage",
        cursor_key="",
        wake_at=now + OUTAGE_RETRY,
        waiting_for=keys.WAITING_STORAGE,
        progress=False,
    )


# --- the retry cut ----------------------------------------------------------------------------

#: ``RetryCut.position`` when no memo failed: nothing is cut (the value the ``retried`` event
#: records then).
NO_CUT = 2**31 - 1


@dataclass(frozen=True, slots=True)
class RetryCut:
    """What ``retry`` resets in a failed run: the memo rows from ``position`` on, the signals
    they consumed (back to the inbox), their timers and every unfired one, and their failed (or
    ``compensation_failed``) children (retried first, each with its own cut)."""

    position: int
    positions: tuple[int, ...] = ()
    cursor_keys: frozenset[str] = frozenset()
    signal_ids: tuple[int, ...] = ()
    timer_keys: tuple[str, ...] = ()
    child_ids: tuple[uuid.UUID, ...] = ()


def retry_cut(
    steps: Sequence[StepRecord],
    signals: Sequence[SignalRecord],
    timers: Sequence[TimerRecord],
    children: Sequence[ChildRecord],
) -> RetryCut:
    """The cut of ``retry``: from the last memo that is not ``ok`` (the failure that ended the
    run; earlier failures were caught by the body) to the end of the history.

    After compensations (sagas): a failed compensation is that last memo, so the replay
    resumes the compensation from it (``compensation_failed``); when every compensation ran,
    the steps they undid are redone: the cut starts at the earliest compensated step."""
    failed = [s for s in steps if s.status is not StepStatus.OK]
    last = max(failed, key=lambda s: s.position) if failed else None
    position = NO_CUT if last is None else last.position
    undone = {s.label for s in steps if s.kind == StepKind.COMPENSATE}
    if undone and (last is None or last.kind != StepKind.COMPENSATE):
        position = min((s.position for s in steps if s.cursor_key in undone), default=position)
    return cut_at(position, steps, signals, timers, children)


def cut_at(
    position: int,
    steps: Sequence[StepRecord],
    signals: Sequence[SignalRecord],
    timers: Sequence[TimerRecord],
    children: Sequence[ChildRecord],
) -> RetryCut:
    """Everything a replay from ``position`` must redo. ``children`` are the run's child runs
    (``cursor_key`` = the invoke that started them); failed ones in the cut are listed."""
    cut = sorted((s for s in steps if s.position >= position), key=lambda s: s.position)
    owned = frozenset(s.cursor_key for s in cut)
    return RetryCut(
        position=position,
        positions=tuple(s.position for s in cut),
        cursor_keys=owned,
        signal_ids=tuple(g.id for g in signals if g.consumed_by in owned),
        timer_keys=tuple(
            t.cursor_key
            for t in timers
            if t.fired_at is None or keys.parse_timer_key(t.cursor_key).owner in owned
        ),
        child_ids=tuple(
            c.id for c in children if c.status in RETRYABLE_STATUSES and c.cursor_key in owned
        ),
    )


@dataclass(frozen=True, slots=True)
class ForkCut:
    """What ``fork`` copies into the new run: the memo rows at ``kept`` positions (those before
    the cut), nothing else; ``cut`` is the same cut ``retry`` would apply from that point."""

    cut: RetryCut
    kept: tuple[int, ...]
    from_step: str | None


def fork_cut(
    steps: Sequence[StepRecord],
    signals: Sequence[SignalRecord],
    timers: Sequence[TimerRecord],
    children: Sequence[ChildRecord],
    from_step: str | None,
) -> ForkCut:
    """The cut of ``fork``: from the memo row of cursor key ``from_step`` (``FORK_STEP_UNKNOWN``
    if the run never recorded it), or, with None, the cut :func:`retry_cut` computes. The new
    run keeps a copy of every memo row before the cut (their outputs make the replay return the
    same values without running the steps again: signals, timers and children they used are not
    needed) and redoes everything from it."""
    if from_step is None:
        cut = retry_cut(steps, signals, timers, children)
    else:
        position = next((s.position for s in steps if s.cursor_key == from_step), None)
        if position is None:
            recorded = ", ".join(s.cursor_key for s in sorted(steps, key=lambda s: s.position))
            raise ForkStepUnknown(
                f"the run has no memo row with cursor key {codec.shown(from_step)}; its recorded "
                f"keys, in order: {recorded or 'none'}"
            )
        cut = cut_at(position, steps, signals, timers, children)
    kept = tuple(sorted(s.position for s in steps if s.position < cut.position))
    return ForkCut(cut, kept, from_step)


def forked_run(source: RunRecord, new_id: uuid.UUID, fork: ForkCut) -> NewRun:
    """The run ``fork`` creates: the source's flow, version, input, tags and priority, top-level
    (no parent, no idempotency key), linked to the source in ``meta``."""
    return NewRun(
        id=new_id,
        name=source.name,
        version=source.version,
        input=source.input,
        tags=source.tags,
        priority=source.priority,
        meta={"forked_from": str(source.id), "fork_step": fork.from_step},
        limit_key=source.limit_key,
    )


def resume_children(
    steps: Sequence[StepRecord], children: Sequence[ChildRecord]
) -> tuple[uuid.UUID, ...]:
    """The children to resume with a canceled run (``retry(resume=True)``): those canceled whose
    invoke has no memo row yet (the cancel reached them through the run), so the replayed
    invoke waits for them again instead of recording their cancellation."""
    recorded = {s.cursor_key for s in steps}
    return tuple(
        c.id for c in children if c.status is RunStatus.CANCELED and c.cursor_key not in recorded
    )


# --- compensation (sagas) ---------------------------------------------------------------------

#: The key of ``runs.meta`` holding a pending ``cancel(compensate=True)``: ``{"reason"}``.
CANCEL_META_KEY = "cancel"


@dataclass(frozen=True, slots=True)
class Undo:
    """A step that completed (``ok``) with a ``compensate=`` function: its cursor key and
    position in the history."""

    step_key: str
    position: int

    @property
    def cursor_key(self) -> str:
        """The compensation's own cursor key (``compensate:<step key>``)."""
        return keys.compensation_key(self.step_key)


def compensation_plan(completed: Sequence[Undo]) -> tuple[Undo, ...]:
    """The compensations to run, in order: those of the completed steps, each once, in reverse
    call order (history position, not completion order: steps finished by a ``ctx.gather`` in
    any order are undone in reverse argument order, the same on every replay). A step that
    failed, or has no ``compensate=``, is not listed by the caller and is not undone."""
    unique = {u.step_key: u for u in completed}
    return tuple(sorted(unique.values(), key=lambda u: u.position, reverse=True))


@dataclass(frozen=True, slots=True)
class CompensationOutcome:
    """What the compensation phase did: the compensations that completed (cursor keys, in the
    order they ran) and the one that failed for good (its key and error), if any."""

    done: tuple[str, ...] = ()
    failed: str | None = None
    error: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """The ``compensation`` record stored in the run's error ``details`` (and its terminal
        event): ``{"status": "compensated" | "failed", "steps": [...], "failed"?: {"step",
        "error"}}``."""
        data: dict[str, Any] = {
            "status": "failed" if self.failed is not None else "compensated",
            "steps": list(self.done),
        }
        if self.failed is not None:
            data["failed"] = {"step": self.failed, "error": self.error}
        return data


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """A pending ``cancel(compensate=True)`` (read from ``runs.meta``)."""

    reason: str


def cancel_meta(reason: str) -> dict[str, Any]:
    """What ``cancel(compensate=True)`` merges into the run's ``meta``."""
    return {CANCEL_META_KEY: {"reason": reason}}


def cancel_request(meta: Mapping[str, Any]) -> CancelRequest | None:
    """The pending ``cancel(compensate=True)`` of a run with this ``meta``, or None."""
    data = meta.get(CANCEL_META_KEY)
    if not isinstance(data, Mapping):
        return None
    reason = data.get("reason")
    return CancelRequest(reason if isinstance(reason, str) else "canceled")


def canceled_error(reason: str) -> dict[str, Any]:
    """The error a canceled run records (``RUN_CANCELED`` with the reason as message)."""
    return {"code": "RUN_CANCELED", "message": reason}


def compensated_end(
    original: Mapping[str, Any], outcome: CompensationOutcome, *, canceled: bool
) -> EndCompensated:
    """How a run ends after its compensation phase: with its original error (the failure, or
    ``RUN_CANCELED``) plus the record in ``details.compensation``; ``compensation_failed`` when
    a compensation failed for good (``engine.retry`` resumes it), else ``failed`` or
    ``canceled``."""
    details = original.get("details")
    error = dict(original)
    error["details"] = {
        **(details if isinstance(details, Mapping) else {}),
        "compensation": outcome.record(),
    }
    if outcome.failed is not None:
        status = RunStatus.COMPENSATION_FAILED
    else:
        status = RunStatus.CANCELED if canceled else RunStatus.FAILED
    return EndCompensated(status, error)


def was_compensated(steps: Sequence[StepRecord]) -> bool:
    """Whether compensations ran in this history (then ``retry(resume=True)`` may not resume
    the canceled run where it stopped: its completed steps were undone)."""
    return any(s.kind == StepKind.COMPENSATE for s in steps)
