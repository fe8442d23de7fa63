"""``FlowContext``: the ``ctx`` a flow body receives — a thin interpreter of core decisions.

Each call takes its position and cursor key **synchronously, at the call site** from the
:class:`~iterflow.core.replay.Cursor` (the methods return coroutines), asks
:mod:`iterflow.core.decisions` what the call means given the history and the time, and performs
it: return the memo, run new work and checkpoint it, or suspend. Suspension and drift are
``BaseException``\\ s; if user code swallows one anyway (a bare ``except:``), the next ``ctx``
call and the end of the body re-raise it.

Misuse (a call never awaited, a call from inside a step function) is refused by the
:class:`~iterflow.runtime.calls.CallWatch` every call goes through.

Checkpoints are fenced by the attempt's lease. The attempt's first one also renews the lease (and
resets the run's no-progress count), as does one that consumes a signal, fires a timer or replaces
a ``retrying`` memo; any other later one is fenced by a share lock on the run row without renewing
it. Meanwhile the worker's renewer task renews the lease every lease/3.

About 510 lines: the typed overloads of the public ``ctx`` API take ~60 of them; decisions live
in the core, call watching in ``runtime/calls.py``.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import logging
import random as _random
import typing
import uuid as _uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar, TypeVarTuple, overload

from iterflow.core import codec, decisions, replay
from iterflow.core.ctx import STEP_ATTEMPT, HasDefinition, step_attempt
from iterflow.core.definition import FlowDef
from iterflow.core.durations import DurationLike, WhenLike, due_at, parse_duration
from iterflow.core.errors import (
    Aborted,
    DatabaseUnavailable,
    DataRejected,
    Drifted,
    FlowDefinitionError,
    FlowError,
    Halted,
    Interrupt,
    LeaseLost,
    Suspended,
)
from iterflow.core.hooks import TRACE_META_KEY, Hooks, StartInfo, StepEndInfo, StepInfo
from iterflow.core.keys import check_label
from iterflow.core.models import StepKind, StepRecord, StepStatus
from iterflow.core.retry import RetryPolicy
from iterflow.core.settings import Settings
from iterflow.core.signals import Signal, resolve
from iterflow.runtime.calls import CallWatch, ReplayQuietLogger, check_untyped, inside_step
from iterflow.runtime.executor import execute, keep_traceback
from iterflow.store.base import Claim, Store

__all__ = ["FlowContext", "step_attempt"]

T = TypeVar("T")
M = TypeVar("M")
T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
CI = TypeVar("CI")
CO = TypeVar("CO")
Ts = TypeVarTuple("Ts")


#: True inside the branches of a ``ctx.gather``: a sibling's suspension must not stop them.
_IN_GATHER: contextvars.ContextVar[bool] = contextvars.ContextVar("iterflow_gather", default=False)
logger = logging.getLogger("iterflow.flow")
_log = logging.getLogger(__name__)


class FlowContext:
    """The durable API of a flow body: ``step``, ``sleep``, ``signal``, ``now``, ``uuid``..."""

    def __init__(
        self,
        claim: Claim,
        *,
        store: Store,
        settings: Settings,
        signal_models: Mapping[str, Any],
        clock: Callable[[], datetime],
        rng: _random.Random,
        hooks: Hooks | None = None,
    ) -> None:
        run = claim.run
        self.run_id = run.id
        self.flow_name = run.name
        self.attempt = run.claims
        self.depth = int(run.meta.get("depth", 0))
        self._store = store
        self._lease = claim.lease
        self._cursor = replay.Cursor(claim.history)
        self._recorded = max((r.position for r in claim.history), default=-1)
        self._timers = dict(claim.timers)
        self._inbox = list(claim.inbox)
        self._children = dict(claim.children)
        self._settings = settings
        self._max_payload = settings.max_payload_bytes
        self._inline_retry_max = timedelta(seconds=settings.inline_retry_max_seconds)
        self._signal_models = signal_models
        self._clock = clock
        self._rng = rng
        self._hooks = hooks
        #: The cursor key of the last step that failed for good in this attempt (for logs).
        self.failed_step: str | None = None
        self._invokes = 0
        self._progressed = False  # has this attempt checkpointed yet (renewed its lease)?
        #: Earlier attempts lost (crash, outage) that may have begun the step(s) this attempt
        #: begins before its first checkpoint: they count in those steps' attempts.
        self._lost = decisions.lost_attempts(run)
        self.interrupted: Interrupt | LeaseLost | None = None
        self._calls = CallWatch(self)
        self.log = ReplayQuietLogger(logger, self)
        #: A pending ``cancel(compensate=True)``: the replay halts where the run stopped.
        self.cancel = decisions.cancel_request(run.meta)
        #: The completed steps with a compensation, by cursor key (rebuilt by each replay).
        self._undo: dict[str, _Undo] = {}
        self._compensating = False

    # -- guards -------------------------------------------------------------------------------

    @property
    def is_replaying(self) -> bool:
        """True while the body is re-walking calls already recorded in history."""
        return self._cursor.position <= self._recorded

    def _check(self) -> None:
        pending = self.interrupted
        if pending is None or (isinstance(pending, Suspended | Halted) and _IN_GATHER.get()):
            return
        raise pending

    def _halt_here(self) -> None:
        """At a call with no final memo (new work): halt if a ``cancel(compensate=True)`` is
        pending, so the run's compensations run instead."""
        if self.cancel is not None and not self._compensating:
            self._raise(Halted())

    def _label(self, label: object, what: str) -> None:
        check_label(label, what, max_chars=self._settings.max_label_chars)

    def _raise(self, exc: Interrupt | LeaseLost) -> typing.NoReturn:
        self.interrupted = exc
        raise exc

    def _next(self, kind: StepKind, label: str) -> tuple[replay.Call, StepRecord | None]:
        self._check()
        try:
            return self._cursor.next(kind, label)
        except FlowError as err:
            self._raise(Drifted(err))

    async def _write(self, write: Awaitable[T]) -> T:
        """A fenced store write: a lost lease stops the attempt, an outage aborts it."""
        try:
            return await write
        except LeaseLost as exc:
            self._raise(exc)
        except DatabaseUnavailable as exc:
            self._raise(Aborted(exc))

    async def _checkpoint(
        self, rec: StepRecord, *, consume_signal: int | None = None, fire_timer: str | None = None
    ) -> None:
        """Write a memo (consuming a signal / firing a timer with it), fenced by the lease."""
        await self._write(
            self._store.checkpoint(
                self._lease,
                rec,
                consume_signal=consume_signal,
                fire_timer=fire_timer,
                renew=not self._progressed,
            )
        )
        self._progressed = True
        self._cursor.record(rec)

    def check_complete(self) -> None:
        """Called by the worker when the body returns: pending interrupts, calls never awaited
        (or refused misuse the body swallowed) and leftover history."""
        self._check()
        self._calls.check(at_end=True)
        if self.cancel is not None:  # halting: the compensations' memos follow, recorded
            return
        try:
            self._cursor.check_complete()
        except FlowError as err:
            self._raise(Drifted(err))

    # -- step ---------------------------------------------------------------------------------

    @overload
    def step(
        self,
        label: str,
        fn: Callable[[*Ts], Coroutine[Any, Any, T]],
        *args: *Ts,
        retries: int = 0,
        backoff: DurationLike | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
        compensate: Callable[[T], object] | None = None,
    ) -> Coroutine[None, None, T]: ...

    @overload
    def step(
        self,
        label: str,
        fn: Callable[[*Ts], T],
        *args: *Ts,
        retries: int = 0,
        backoff: DurationLike | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
        compensate: Callable[[T], object] | None = None,
    ) -> Coroutine[None, None, T]: ...

    def step(
        self,
        label: str,
        fn: Callable[[*Ts], Any],
        *args: *Ts,
        retries: int = 0,
        backoff: DurationLike | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
        compensate: Callable[[Any], object] | None = None,
    ) -> Coroutine[None, None, Any]:
        """Run ``fn(*args)`` once, durably; on replay return the recorded result.

        The result is stored as JSON (pydantic-encoded, typed by ``fn``'s return annotation) and
        decoded the same way on the first run and on replays. ``retries`` extra attempts are made
        with exponential backoff and jitter (``backoff`` is the first wait or a
        :class:`RetryPolicy`); every attempt is recorded, so a crash never resets the count: a
        step re-run after its attempt was lost (worker crash, lease expiry, storage outage)
        counts the lost attempt(s), and the lost attempts count against ``retries``.
        A function without a return annotation must return JSON data (``STEP_RESULT_UNTYPED``).

        ``compensate=undo``: once the step completed, ``undo(result)`` is its compensation. When
        the run fails (or is canceled with ``compensate=True``) the compensations of its
        completed steps run in reverse call order, each as a durable step (key
        ``compensate:<step key>``) with this step's ``retries``/``backoff``/``timeout``, before
        the run ends with its original error and a ``compensation`` record.
        """
        self._calls.enter(f"ctx.step({label!r})")
        self._label(label, "ctx.step label")
        if compensate is not None and not callable(compensate):
            raise FlowDefinitionError(
                f"ctx.step({label!r}): compensate must be a function, got {compensate!r}"
            )
        policy = RetryPolicy.of(retries, backoff)
        limit = parse_duration(timeout) if timeout is not None else None
        call, memo = self._next(StepKind.STEP, label)
        undo = None if compensate is None else functools.partial(_Undo, compensate, policy, limit)
        return self._calls.issue(
            f"ctx.step({label!r})",
            call.position,
            lambda: self._run_step(call, memo, fn, args, policy, limit, undo),
        )

    async def _run_step(
        self,
        call: replay.Call,
        memo: StepRecord | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        policy: RetryPolicy,
        timeout: timedelta | None,
        undo: Callable[[decisions.Undo, Any], _Undo] | None = None,
    ) -> Any:
        self._check()
        out_type = codec.return_type(fn)
        if memo is not None and memo.status is not StepStatus.RETRYING:
            value = replay.memo_value(memo, lambda out: codec.load(out, out_type))
            return self._completed(call, undo, value)
        self._halt_here()
        lost = 0 if self._progressed else self._lost
        start = decisions.resume_step(call, memo, self._timers, self._clock(), lost)
        if isinstance(start, decisions.StepWait):
            self._raise(Suspended(start.plan))
        attempt, fired = start.attempt, start.fire_timer
        what = f"result of step {call.label!r}"
        while True:
            started_at = self._clock()
            record = functools.partial(call.memo, attempts=attempt, started_at=started_at)
            STEP_ATTEMPT.set(attempt)  # copied into the thread of a sync step
            step = None if self._hooks is None else self._step_begin(call, attempt, fn)
            try:
                try:
                    with inside_step(self):
                        value = await execute(fn, args, timeout)
                    data = codec.encode(value, out_type, what=what, limit=self._max_payload)
                    if not codec.has_return_annotation(fn):
                        check_untyped(value, call.label)
                except Exception as exc:
                    failure = decisions.step_failure(call.label, attempt, exc)
                    keep_traceback(failure.error, exc)
                    rand, now = self._rng.random(), self._clock()
                    decision = decisions.decide_retry(
                        call, policy, attempt, failure.retryable, rand, now, self._inline_retry_max
                    )
                    final = isinstance(decision, decisions.Fail)
                    status = StepStatus.FAILED if final else StepStatus.RETRYING
                    error = failure.error.to_dict()
                    await self._checkpoint(record(status, error=error), fire_timer=fired)
                    fired = None
                    retry_in = self._failed_attempt(call, attempt, failure.error, decision, now)
                    if step is not None:
                        self._step_end(step, status, started_at, error, retry_in)
                        step = None
                    if isinstance(decision, decisions.Fail):
                        self.failed_step = call.cursor_key
                        raise failure.error from None if failure.error is exc else exc
                    if isinstance(decision, decisions.RetryLater):
                        self._raise(Suspended(decision.plan))
                    delay = decision.delay
                else:
                    try:
                        await self._checkpoint(record(StepStatus.OK, output=data), fire_timer=fired)
                    except DataRejected as rejected:
                        # PostgreSQL refused what the codec let through: the step ran and must
                        # not run again, so its memo records the refusal and the body gets it.
                        error = rejected.to_dict()
                        await self._checkpoint(
                            record(StepStatus.FAILED, error=error), fire_timer=fired
                        )
                        self.failed_step = call.cursor_key
                        if step is not None:
                            self._step_end(step, StepStatus.FAILED, started_at, error, None)
                            step = None
                        raise
                    if step is not None:
                        self._step_end(step, StepStatus.OK, started_at, None, None)
                        step = None
                    return self._completed(call, undo, codec.load(data, out_type))
            finally:
                if step is not None:  # interrupted: lease lost, canceled, storage down
                    self._step_end(step, StepStatus.FAILED, started_at, None, None)
            await asyncio.sleep(delay.total_seconds())
            attempt += 1

    def _completed(
        self, call: replay.Call, undo: Callable[[decisions.Undo, Any], _Undo] | None, value: T
    ) -> T:
        """A step completed (now or in the history): register its compensation, if any."""
        if undo is not None:
            step = decisions.Undo(call.cursor_key, call.position)
            self._undo[call.cursor_key] = undo(step, value)
        return value

    @property
    def compensations(self) -> int:
        """How many completed steps of this replay have a compensation."""
        return len(self._undo)

    async def compensate(self) -> decisions.CompensationOutcome:
        """Run the compensations of the completed steps (after the body failed, or halted for
        a ``cancel(compensate=True)``) in :func:`~iterflow.core.decisions.compensation_plan`
        order, each as a durable step at the next history positions: a replay returns the
        memo of a finished one instead of running it again. Stops at the first that fails for
        good. Suspends (a long retry backoff), drift and lost leases propagate as usual."""
        self._compensating = True
        if isinstance(self.interrupted, Halted):
            self.interrupted = None
        plan = decisions.compensation_plan([u.undo for u in self._undo.values()])
        done: list[str] = []
        for step in plan:
            u = self._undo[step.step_key]
            call, memo = self._next(StepKind.COMPENSATE, step.step_key)
            try:
                await self._run_step(call, memo, u.fn, (u.value,), u.policy, u.timeout)
            except FlowError as err:
                return decisions.CompensationOutcome(tuple(done), call.cursor_key, err.to_dict())
            done.append(call.cursor_key)
        return decisions.CompensationOutcome(tuple(done))

    def _step_begin(self, call: replay.Call, attempt: int, fn: Callable[..., Any]) -> StepInfo:
        module = getattr(fn, "__module__", None) or ""
        name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        info = StepInfo(
            run_id=self.run_id,
            flow=self.flow_name,
            cursor_key=call.cursor_key,
            label=call.label,
            position=call.position,
            attempt=attempt,
            run_attempt=self.attempt,
            function=f"{module}.{name}" if module else name,
        )
        if self._hooks is not None:
            self._hooks.step_begin(info)
        return info

    def _step_end(
        self,
        step: StepInfo,
        status: StepStatus,
        started_at: datetime,
        error: dict[str, Any] | None,
        retry_in: timedelta | None,
    ) -> None:
        if self._hooks is not None:
            duration = self._clock() - started_at
            self._hooks.step_end(StepEndInfo(step, status, duration, error, retry_in))

    def _failed_attempt(
        self,
        call: replay.Call,
        attempt: int,
        error: FlowError,
        decision: decisions.RetryInline | decisions.RetryLater | decisions.Fail,
        now: datetime,
    ) -> timedelta | None:
        """Log a failed step attempt at WARNING (and the retry it scheduled); return how long
        until that retry."""
        retry_in: timedelta | None = None
        if isinstance(decision, decisions.RetryInline):
            retry_in = decision.delay
            then = f"retry scheduled in {retry_in.total_seconds():g}s"
        elif isinstance(decision, decisions.RetryLater):
            wake = decision.plan.wake_at
            retry_in = None if wake is None else wake - now
            then = f"retry scheduled at {wake.isoformat() if wake else 'once woken'}"
        else:
            then = "no retry left"
        _log.warning(
            "step attempt failed: run=%s flow=%s step=%s attempt=%d error=%s; %s",
            self.run_id,
            self.flow_name,
            call.cursor_key,
            attempt,
            error,
            then,
            extra={"run_id": str(self.run_id), "flow": self.flow_name, "step": call.cursor_key},
        )
        return retry_in

    # -- sleep --------------------------------------------------------------------------------

    def sleep(self, duration: WhenLike, label: str | None = None) -> Coroutine[None, None, None]:
        """Durably wait ``duration`` (``"3d"``, ``timedelta``, seconds) or until a datetime.

        The run leaves memory; a wake-up job scheduled at the due time resumes it.
        """
        self._calls.enter("ctx.sleep()" if not label else f"ctx.sleep(label={label!r})")
        if isinstance(duration, datetime):
            due_at(duration, duration)  # validates tz-awareness now, at the call site
        else:
            parse_duration(duration)
        if label:
            self._label(label, "ctx.sleep label")
        call, memo = self._next(StepKind.SLEEP, label or "")
        what = "ctx.sleep()" if not label else f"ctx.sleep(label={label!r})"
        return self._calls.issue(what, call.position, lambda: self._run_sleep(call, memo, duration))

    async def _run_sleep(
        self, call: replay.Call, memo: StepRecord | None, duration: WhenLike
    ) -> None:
        self._check()
        if memo is not None:
            return
        self._halt_here()
        now = self._clock()
        timer = self._timers.get(call.cursor_key)
        decision = decisions.decide_sleep(call, timer, due_at(duration, now), now)
        if isinstance(decision, decisions.SleepSuspend):
            self._raise(Suspended(decision.plan))
        await self._checkpoint(
            call.memo(StepStatus.OK, output={"fire_at": decision.fire_at.isoformat()}),
            fire_timer=decision.fire_timer,
        )

    # -- signal -------------------------------------------------------------------------------

    @overload
    def signal(
        self, name: Signal[M], /, *, timeout: DurationLike | None = None
    ) -> Coroutine[None, None, M]: ...

    @overload
    def signal(
        self, name: str, model: type[M], *, timeout: DurationLike | None = None
    ) -> Coroutine[None, None, M]: ...

    def signal(
        self,
        name: str | Signal[M],
        model: type[M] | None = None,
        *,
        timeout: DurationLike | None = None,
    ) -> Coroutine[None, None, M]:
        """Wait for a signal and return its payload: ``await ctx.signal(approve)`` for a
        :class:`~iterflow.core.signals.Signal` descriptor, ``await ctx.signal("approve",
        Approval)`` by name and model. The flow must declare it with that model.

        Signals are consumed FIFO from the run's inbox, so one sent before the wait is not lost.
        With ``timeout``, raises :class:`~iterflow.core.errors.SignalTimeout`
        (``SIGNAL_TIMEOUT``) when nothing arrives in time; delivery and timeout never both win.
        """
        what = f"ctx.signal({(name.name if isinstance(name, Signal) else name)!r})"
        self._calls.enter(what)
        label, tp = resolve(name, model)
        refused = decisions.check_signal_wait(self.flow_name, self._signal_models, label, tp)
        if refused is not None:
            raise refused
        limit = parse_duration(timeout) if timeout is not None else None
        call, memo = self._next(StepKind.SIGNAL, label)
        run = functools.partial(self._run_signal, call, memo, label, tp, limit)
        return self._calls.issue(what, call.position, run)

    async def _run_signal(
        self, call: replay.Call, memo: StepRecord | None, name: str, model: type[M], timeout: Any
    ) -> M:
        self._check()
        if memo is not None:
            return typing.cast(M, replay.memo_value(memo, functools.partial(codec.load, tp=model)))
        self._halt_here()
        timer = self._timers.get(call.cursor_key)
        decision = decisions.decide_signal(
            call, name, model, self._inbox, timer, timeout, self._clock()
        )
        if isinstance(decision, decisions.SignalSuspend):
            self._raise(Suspended(decision.plan))
        if isinstance(decision, decisions.SignalTimeoutNow):
            failed = call.memo(StepStatus.FAILED, error=decision.error.to_dict())
            await self._checkpoint(failed, fire_timer=decision.fire_timer)
            raise decision.error
        sig = decision.signal
        self._inbox.remove(sig)
        if decision.error is not None:
            failed = call.memo(StepStatus.FAILED, error=decision.error.to_dict())
            await self._checkpoint(failed, consume_signal=sig.id, fire_timer=decision.fire_timer)
            raise decision.error
        ok = call.memo(StepStatus.OK, output=sig.payload)
        await self._checkpoint(ok, consume_signal=sig.id, fire_timer=decision.fire_timer)
        return typing.cast(M, decision.value)

    # -- child flows --------------------------------------------------------------------------

    def invoke(
        self,
        flow: FlowDef[CI, CO] | HasDefinition[CI, CO],
        input: CI | Mapping[str, Any],
        *,
        detached: bool = False,
    ) -> Coroutine[None, None, CO]:
        """Start ``flow`` as a child run (own id and history) and return its output.

        The parent leaves memory in ``awaiting_child``; the child's terminal transaction wakes
        it. A failed or canceled child raises its error (code preserved) in the parent. Canceling
        the parent cancels the child unless ``detached=True``.
        """
        definition = flow if isinstance(flow, FlowDef) else flow.definition
        self._calls.enter(f"ctx.invoke({definition.key!r})")
        call, memo = self._next(StepKind.INVOKE, definition.key)
        self._invokes += 1
        run = functools.partial(
            self._run_invoke, call, memo, definition, input, detached, self._invokes
        )
        return self._calls.issue(f"ctx.invoke({definition.key!r})", call.position, run)

    async def _run_invoke(
        self,
        call: replay.Call,
        memo: StepRecord | None,
        definition: FlowDef[CI, CO],
        input: Any,
        detached: bool,
        ordinal: int,
    ) -> CO:
        self._check()
        if memo is not None:
            return replay.memo_value(memo, definition.decode_output)
        self._halt_here()
        decision = decisions.decide_invoke(
            call,
            definition,
            input,
            run_id=self.run_id,
            child=self._children.get(call.cursor_key),
            depth=self.depth,
            ordinal=ordinal,
            detached=detached,
            settings=self._settings,
        )
        if isinstance(decision, decisions.InvokeStart):
            child = decision.child
            hooks = self._hooks
            if hooks is not None and (carrier := hooks.inject()):
                child = dataclasses.replace(child, meta={**child.meta, TRACE_META_KEY: carrier})
            created = await self._write(self._store.spawn_child(self._lease, child))
            if hooks is not None:
                hooks.start(StartInfo(child.id, child.name, child.version, created, self.run_id))
            self._raise(Suspended(decisions.await_child(call, child.id, created=created)))
        if isinstance(decision, decisions.InvokeRefused):
            await self._checkpoint(call.memo(StepStatus.FAILED, error=decision.error.to_dict()))
            raise decision.error
        rec = call.memo(decision.status, output=decision.output, error=decision.error)
        await self._checkpoint(rec)
        return replay.memo_value(rec, definition.decode_output)

    # -- parallelism --------------------------------------------------------------------------

    @overload
    def gather(
        self, a: Awaitable[T1], b: Awaitable[T2], /
    ) -> Coroutine[None, None, tuple[T1, T2]]: ...

    @overload
    def gather(
        self, a: Awaitable[T1], b: Awaitable[T2], c: Awaitable[T3], /
    ) -> Coroutine[None, None, tuple[T1, T2, T3]]: ...

    @overload
    def gather(self, *aws: Awaitable[T]) -> Coroutine[None, None, tuple[T, ...]]: ...

    def gather(self, *aws: Awaitable[Any]) -> Coroutine[None, None, tuple[Any, ...]]:
        """Run ``ctx`` calls concurrently; results in argument order.

        Keys are taken when each call is made (argument order), so replay is identical whatever
        order they finish in. Branches that must wait suspend the run once, together, after the
        others have finished; the first failure (in argument order) is raised.
        """
        self._calls.enter("ctx.gather()")
        return self._calls.issue("ctx.gather()", None, lambda: self._run_gather(aws))

    async def _run_gather(self, aws: tuple[Awaitable[Any], ...]) -> tuple[Any, ...]:
        self._check()
        token = _IN_GATHER.set(True)
        try:
            results = await asyncio.gather(*aws, return_exceptions=True)
        finally:
            _IN_GATHER.reset(token)
        raised = decisions.join_branches(results)
        if isinstance(raised, Interrupt | LeaseLost):
            self._raise(raised)
        if raised is not None:
            raise raised
        return tuple(results)

    # -- deterministic values -------------------------------------------------------------------

    def now(self) -> Coroutine[None, None, datetime]:
        """The current time, recorded on first run and replayed unchanged."""
        return self._recorded_value(StepKind.NOW, "ctx.now()", lambda: self._clock(), datetime)

    def uuid(self) -> Coroutine[None, None, _uuid.UUID]:
        """A random UUID, recorded on first run and replayed unchanged."""
        return self._recorded_value(StepKind.UUID, "ctx.uuid()", _uuid.uuid4, _uuid.UUID)

    def random(self) -> Coroutine[None, None, float]:
        """A float in [0, 1), recorded on first run and replayed unchanged."""
        return self._recorded_value(StepKind.RANDOM, "ctx.random()", self._rng.random, float)

    def _recorded_value(
        self, kind: StepKind, what: str, make: Callable[[], T], tp: type[T]
    ) -> Coroutine[None, None, T]:
        self._calls.enter(what)
        call, memo = self._next(kind, "")
        return self._calls.issue(what, call.position, lambda: self._value(call, memo, make, tp))

    def patched(self, change_id: str) -> Coroutine[None, None, bool]:
        """Branch safely on a code change: ``if await ctx.patched("fraud-check"): ...``.

        True for runs that reach this point under the new code (recorded, so their replays
        agree); False, without taking a position or writing anything, for runs whose history
        shows they passed this point before the change.
        """
        what = f"ctx.patched({change_id!r})"
        self._calls.enter(what)
        self._label(change_id, "ctx.patched change id")
        self._check()
        if not self._cursor.takes_patch(change_id):
            return self._calls.issue(what, None, self._unpatched)
        call, memo = self._next(StepKind.PATCH, change_id)
        return self._calls.issue(
            what, call.position, lambda: self._value(call, memo, lambda: True, bool)
        )

    async def _unpatched(self) -> bool:
        self._check()
        return False

    async def _value(
        self,
        call: replay.Call,
        memo: StepRecord | None,
        make: Callable[[], T],
        tp: type[T],
    ) -> T:
        self._check()
        if memo is not None:
            return typing.cast(T, codec.load(memo.output, tp))
        self._halt_here()
        data = codec.encode(make(), tp, what=f"ctx.{call.kind.value}()", limit=self._max_payload)
        await self._checkpoint(call.memo(StepStatus.OK, output=data))
        return typing.cast(T, codec.load(data, tp))


@dataclasses.dataclass(frozen=True, slots=True)
class _Undo:
    """A registered compensation: the function, the step's retry policy and timeout, the
    completed step and its result (what the function receives)."""

    fn: Callable[[Any], object]
    policy: RetryPolicy
    timeout: timedelta | None
    undo: decisions.Undo
    value: Any
