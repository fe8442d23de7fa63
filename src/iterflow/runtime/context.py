"""``FlowContext``: the ``ctx`` a flow body receives.

Each call takes its position and cursor key **synchronously, at the call site** (the methods are
plain functions returning awaitables), asks :mod:`iterflow.core.replay` what the call means given
the history, and performs the decision: return a memo, run new work and checkpoint it, or suspend.
Suspension and drift are ``BaseException``\\ s; if user code swallows one anyway (a bare
``except:``), the next ``ctx`` call and the end of the body re-raise it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import random as _random
import typing
import uuid as _uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

from pydantic import ValidationError

from iterflow.core import codec, replay
from iterflow.core.ctx import STEP_ATTEMPT, step_attempt
from iterflow.core.definition import FlowDef
from iterflow.core.durations import DurationLike, WhenLike, due_at, parse_duration
from iterflow.core.errors import (
    Aborted,
    DatabaseUnavailable,
    DataRejected,
    Drifted,
    FlowDefinitionError,
    FlowError,
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
    Suspended,
    safe_text,
)
from iterflow.core.models import (
    ChildRecord,
    NewRun,
    RunStatus,
    SignalRecord,
    StepKind,
    StepRecord,
    StepStatus,
    SuspendPlan,
    TimerRecord,
)
from iterflow.core.retry import RetryPolicy
from iterflow.store.base import Lease, Store

__all__ = ["FlowContext", "step_attempt"]


T = TypeVar("T")
M = TypeVar("M")
T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
CI = TypeVar("CI")
CO = TypeVar("CO")

#: True inside the branches of a ``ctx.gather``: a sibling's suspension must not stop them.
_IN_GATHER: contextvars.ContextVar[bool] = contextvars.ContextVar("iterflow_gather", default=False)


class _HasDefinition(typing.Protocol[CI, CO]):
    @property
    def definition(self) -> FlowDef[CI, CO]: ...


logger = logging.getLogger("iterflow.flow")


def _step_error(label: str, attempts: int, exc: BaseException) -> FlowError:
    if isinstance(exc, FlowError):
        return exc
    err = StepFailed(
        f"step {label!r} failed after {attempts} attempt(s): {type(exc).__name__}: {safe_text(exc)}"
    )
    err.__cause__ = exc
    return err


class FlowContext:
    """The durable API of a flow body: ``step``, ``sleep``, ``signal``, ``now``, ``uuid``..."""

    def __init__(
        self,
        *,
        run_id: _uuid.UUID,
        flow_name: str,
        attempt: int,
        store: Store,
        lease: Lease,
        history: Sequence[StepRecord],
        timers: Mapping[str, TimerRecord],
        inbox: Sequence[SignalRecord],
        signal_models: Mapping[str, Any],
        clock: Callable[[], datetime],
        rng: _random.Random,
        max_payload_bytes: int,
        inline_retry_max: timedelta,
        children: Mapping[str, ChildRecord] | None = None,
        depth: int = 0,
        max_depth: int = 10,
        max_children: int = 1000,
        max_label_chars: int = 200,
    ) -> None:
        self.run_id = run_id
        self.flow_name = flow_name
        self.attempt = attempt
        self._store = store
        self._lease = lease
        self._cursor = replay.Cursor(history)
        self._recorded = max((r.position for r in history), default=-1)
        self._timers = dict(timers)
        self._inbox = list(inbox)
        self._signal_models = signal_models
        self._clock = clock
        self._rng = rng
        self._max_payload = max_payload_bytes
        self._inline_retry_max = inline_retry_max
        self._children = dict(children or {})
        self.depth = depth
        self._max_depth = max_depth
        self._max_children = max_children
        self._max_label = max_label_chars
        self._invokes = 0
        self._progressed = False  # has this attempt checkpointed yet (renewed its lease)?
        self.interrupted: Interrupt | LeaseLost | None = None
        self.log = _ReplayQuietLogger(self)

    # -- guards -------------------------------------------------------------------------------

    @property
    def is_replaying(self) -> bool:
        """True while the body is re-walking calls already recorded in history."""
        return self._cursor.position <= self._recorded

    def _check(self) -> None:
        pending = self.interrupted
        if pending is None or (isinstance(pending, Suspended) and _IN_GATHER.get()):
            return
        raise pending

    def _label(self, label: object, what: str) -> None:
        """Labels become cursor keys, stored as text: refuse what PostgreSQL would refuse."""
        try:
            codec.check_text(label, what=what, max_chars=self._max_label)
        except InputInvalid as exc:
            raise FlowDefinitionError(exc.message) from None

    def _raise(self, exc: Interrupt | LeaseLost) -> typing.NoReturn:
        self.interrupted = exc
        raise exc

    def _next(self, kind: StepKind, label: str) -> tuple[replay.Call, StepRecord | None]:
        self._check()
        try:
            return self._cursor.next(kind, label)
        except FlowError as err:
            self._raise(Drifted(err))

    async def _checkpoint(
        self, rec: StepRecord, *, consume_signal: int | None = None, fire_timer: str | None = None
    ) -> None:
        try:
            await self._store.checkpoint(
                self._lease,
                rec,
                consume_signal=consume_signal,
                fire_timer=fire_timer,
                renew=not self._progressed,
            )
        except LeaseLost as exc:
            self._raise(exc)
        except DatabaseUnavailable as exc:
            self._raise(Aborted(exc))
        self._progressed = True
        self._cursor.record(rec)

    def check_complete(self) -> None:
        """Called by the worker when the body returns: pending interrupts and leftover history."""
        self._check()
        try:
            self._cursor.check_complete()
        except FlowError as err:
            self._raise(Drifted(err))

    # -- step ---------------------------------------------------------------------------------

    @overload
    def step(
        self,
        label: str,
        fn: Callable[..., Coroutine[Any, Any, T]],
        *args: Any,
        retries: int = 0,
        backoff: DurationLike | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
    ) -> Awaitable[T]: ...

    @overload
    def step(
        self,
        label: str,
        fn: Callable[..., T],
        *args: Any,
        retries: int = 0,
        backoff: DurationLike | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
    ) -> Awaitable[T]: ...

    def step(
        self,
        label: str,
        fn: Callable[..., Any],
        *args: Any,
        retries: int = 0,
        backoff: DurationLike | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
    ) -> Awaitable[Any]:
        """Run ``fn(*args)`` once, durably; on replay return the recorded result.

        The result is stored as JSON (pydantic-encoded, typed by ``fn``'s return annotation) and
        decoded the same way on the first run and on replays. ``retries`` extra attempts are made
        with exponential backoff and jitter (``backoff`` is the first wait or a
        :class:`RetryPolicy`); every attempt is recorded, so a crash never resets the count.
        """
        self._label(label, "ctx.step label")
        policy = RetryPolicy.of(retries, backoff)
        limit = parse_duration(timeout) if timeout is not None else None
        call, memo = self._next(StepKind.STEP, label)
        return self._run_step(call, memo, fn, args, policy, limit)

    async def _run_step(
        self,
        call: replay.Call,
        memo: StepRecord | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        policy: RetryPolicy,
        timeout: timedelta | None,
    ) -> Any:
        from iterflow.runtime.executor import execute

        self._check()
        out_type = codec.return_type(fn)
        retry_key = f"retry:{call.cursor_key}"
        fire_timer: str | None = None
        done = 0
        if memo is not None:
            if memo.status is StepStatus.OK:
                return codec.load(memo.output, out_type)
            if memo.status is StepStatus.FAILED:
                raise replay.memo_error(memo)
            done = memo.attempts
            timer = self._timers.get(retry_key)
            if timer is not None:
                if timer.fire_at > self._clock():
                    self._raise(
                        Suspended(
                            SuspendPlan(
                                status=RunStatus.RETRYING,
                                reason="retry",
                                cursor_key=call.cursor_key,
                                wake_at=timer.fire_at,
                                waiting_for=f"timer:{retry_key}",
                                progress=False,
                            )
                        )
                    )
                fire_timer = retry_key
        attempt = done + 1
        while True:
            started = self._clock()
            STEP_ATTEMPT.set(attempt)  # copied into the thread of a sync step
            try:
                value = await execute(fn, args, timeout)
                data = codec.encode(
                    value, out_type, what=f"result of step {call.label!r}", limit=self._max_payload
                )
            except Exception as exc:
                # A result that cannot be stored is a programming error, not a transient one:
                # the body ran once and is not run again for it.
                retryable = not isinstance(exc, NonRetryable | PayloadTooLarge | PayloadInvalid)
                decision = replay.decide_retry(
                    call,
                    policy,
                    attempt,
                    retryable,
                    self._rng.random(),
                    self._clock(),
                    self._inline_retry_max,
                )
                error = _step_error(call.label, attempt, exc)
                failed = isinstance(decision, replay.Fail)
                status = StepStatus.FAILED if failed else StepStatus.RETRYING
                await self._checkpoint(
                    self._memo(
                        call,
                        StepKind.STEP,
                        status,
                        error=error.to_dict(),
                        attempts=attempt,
                        started_at=started,
                    ),
                    fire_timer=fire_timer,
                )
                fire_timer = None
                if isinstance(decision, replay.Fail):
                    raise error from None if error is exc else exc
                if isinstance(decision, replay.RetryLater):
                    self._raise(Suspended(decision.plan))
                await asyncio.sleep(decision.delay.total_seconds())
                attempt += 1
                continue
            ok = self._memo(
                call,
                StepKind.STEP,
                StepStatus.OK,
                output=data,
                attempts=attempt,
                started_at=started,
            )
            try:
                await self._checkpoint(ok, fire_timer=fire_timer)
            except DataRejected as rejected:
                # PostgreSQL refused what the codec let through: the step ran and must not run
                # again, so its memo records the refusal and the body gets the error.
                await self._checkpoint(
                    self._memo(
                        call,
                        StepKind.STEP,
                        StepStatus.FAILED,
                        error=rejected.to_dict(),
                        attempts=attempt,
                        started_at=started,
                    ),
                    fire_timer=fire_timer,
                )
                raise
            return codec.load(data, out_type)

    # -- sleep --------------------------------------------------------------------------------

    def sleep(self, duration: WhenLike, label: str | None = None) -> Awaitable[None]:
        """Durably wait ``duration`` (``"3d"``, ``timedelta``, seconds) or until a datetime.

        The run leaves memory; a wake-up job scheduled at the due time resumes it.
        """
        if isinstance(duration, datetime):
            due_at(duration, duration)  # validates tz-awareness now, at the call site
        else:
            parse_duration(duration)
        if label:
            self._label(label, "ctx.sleep label")
        call, memo = self._next(StepKind.SLEEP, label or "")
        return self._run_sleep(call, memo, duration)

    async def _run_sleep(
        self, call: replay.Call, memo: StepRecord | None, duration: WhenLike
    ) -> None:
        self._check()
        if memo is not None:
            return
        now = self._clock()
        timer = self._timers.get(call.cursor_key)
        decision = replay.decide_sleep(call, timer, due_at(duration, now), now)
        if isinstance(decision, replay.SleepSuspend):
            self._raise(Suspended(decision.plan))
        await self._checkpoint(
            self._memo(
                call,
                StepKind.SLEEP,
                StepStatus.OK,
                output={"fire_at": (timer.fire_at if timer else now).isoformat()},
            ),
            fire_timer=call.cursor_key if timer is not None else None,
        )

    # -- signal -------------------------------------------------------------------------------

    def signal(
        self, name: str, model: type[M], *, timeout: DurationLike | None = None
    ) -> Awaitable[M]:
        """Wait for the signal ``name`` and return its payload as ``model``.

        Signals are consumed FIFO from the run's inbox, so one sent before the wait is not lost.
        With ``timeout``, raises :class:`~iterflow.core.errors.SignalTimeout`
        (``SIGNAL_TIMEOUT``) when nothing arrives in time; delivery and timeout never both win.
        """
        declared = self._signal_models.get(name)
        if declared is None:
            raise SignalUnknown(
                f"flow {self.flow_name!r} does not declare signal {name!r}; add it to "
                f"signals={{{name!r}: {getattr(model, '__name__', model)}}} when defining the flow"
            )
        if declared is not model:
            raise FlowDefinitionError(
                f"signal {name!r} is declared with {declared!r} but awaited with {model!r}"
            )
        limit = parse_duration(timeout) if timeout is not None else None
        call, memo = self._next(StepKind.SIGNAL, name)
        return self._run_signal(call, memo, name, model, limit)

    async def _run_signal(
        self,
        call: replay.Call,
        memo: StepRecord | None,
        name: str,
        model: type[M],
        timeout: timedelta | None,
    ) -> M:
        self._check()
        if memo is not None:
            if memo.status is StepStatus.OK:
                return typing.cast(M, codec.load(memo.output, model))
            raise replay.memo_error(memo)
        now = self._clock()
        timer = self._timers.get(call.cursor_key)
        decision = replay.decide_signal(
            call, name, self._inbox, timer, now + timeout if timeout else None, now
        )
        if isinstance(decision, replay.SignalSuspend):
            self._raise(Suspended(decision.plan))
        if isinstance(decision, replay.SignalTimeoutNow):
            error = SignalTimeout(
                f"signal {name!r} did not arrive within {timeout or 'its timeout'}"
                f" (cursor {call.cursor_key})"
            )
            await self._checkpoint(
                self._memo(call, StepKind.SIGNAL, StepStatus.FAILED, error=error.to_dict()),
                fire_timer=call.cursor_key,
            )
            raise error
        sig = decision.signal
        self._inbox.remove(sig)
        try:
            value = codec.load(sig.payload, model)
        except ValidationError as exc:
            error2 = SignalPayloadInvalid(
                f"buffered signal {name!r} no longer matches {model!r}: "
                f"{codec.validation_message(exc)}"
            )
            await self._checkpoint(
                self._memo(call, StepKind.SIGNAL, StepStatus.FAILED, error=error2.to_dict()),
                consume_signal=sig.id,
                fire_timer=call.cursor_key if timer else None,
            )
            raise error2 from exc
        await self._checkpoint(
            self._memo(call, StepKind.SIGNAL, StepStatus.OK, output=sig.payload),
            consume_signal=sig.id,
            fire_timer=call.cursor_key if timer else None,
        )
        return typing.cast(M, value)

    # -- child flows --------------------------------------------------------------------------

    def invoke(
        self,
        flow: FlowDef[CI, CO] | _HasDefinition[CI, CO],
        input: CI | Mapping[str, Any],
        *,
        detached: bool = False,
    ) -> Awaitable[CO]:
        """Start ``flow`` as a child run (own id and history) and return its output.

        The parent leaves memory in ``awaiting_child``; the child's terminal transaction wakes
        it. A failed or canceled child raises its error (code preserved) in the parent. Canceling
        the parent cancels the child unless ``detached=True``.
        """
        definition = flow if isinstance(flow, FlowDef) else flow.definition
        call, memo = self._next(StepKind.INVOKE, definition.key)
        self._invokes += 1
        return self._run_invoke(call, memo, definition, input, detached, self._invokes)

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
            if memo.status is StepStatus.OK:
                return definition.decode_output(memo.output)
            raise replay.memo_error(memo)
        child = self._children.get(call.cursor_key)
        if child is not None:
            if child.status is RunStatus.DONE:
                await self._checkpoint(
                    self._memo(call, StepKind.INVOKE, StepStatus.OK, output=child.output)
                )
                return definition.decode_output(child.output)
            error = child.error or {"code": "RUN_CANCELED", "message": "child canceled"}
            await self._checkpoint(
                self._memo(call, StepKind.INVOKE, StepStatus.FAILED, error=error)
            )
            raise FlowError.from_dict(error)
        try:
            if self.depth + 1 > self._max_depth:
                raise InvokeDepthExceeded(
                    f"invoking {definition.key} would nest {self.depth + 1} levels deep "
                    f"(max {self._max_depth})"
                )
            if ordinal > self._max_children:
                raise InvokeFanoutExceeded(
                    f"run would start more than {self._max_children} child runs"
                )
            data = codec.encode(
                definition.validate_input(input),
                definition.input_type,
                what=f"input of child {definition.key}",
                limit=self._max_payload,
            )
        except (
            InvokeDepthExceeded,
            InvokeFanoutExceeded,
            InputInvalid,
            PayloadTooLarge,
            PayloadInvalid,
        ) as err:
            await self._checkpoint(
                self._memo(call, StepKind.INVOKE, StepStatus.FAILED, error=err.to_dict())
            )
            raise
        child_id = _uuid.uuid5(self.run_id, call.cursor_key)
        try:
            created = await self._store.spawn_child(
                self._lease,
                NewRun(
                    id=child_id,
                    name=definition.name,
                    version=definition.version,
                    input=data,
                    parent_run_id=self.run_id,
                    parent_cursor_key=call.cursor_key,
                    meta={"depth": self.depth + 1, "detached": detached},
                ),
            )
        except LeaseLost as exc:
            self._raise(exc)
        except DatabaseUnavailable as exc:
            self._raise(Aborted(exc))
        self._raise(
            Suspended(
                SuspendPlan(
                    status=RunStatus.AWAITING_CHILD,
                    reason="child",
                    cursor_key=call.cursor_key,
                    wake_at=None,
                    waiting_for=f"child:{child_id}",
                    progress=created,
                )
            )
        )

    # -- parallelism --------------------------------------------------------------------------

    @overload
    async def gather(self, a: Awaitable[T1], b: Awaitable[T2], /) -> tuple[T1, T2]: ...

    @overload
    async def gather(
        self, a: Awaitable[T1], b: Awaitable[T2], c: Awaitable[T3], /
    ) -> tuple[T1, T2, T3]: ...

    @overload
    async def gather(self, *aws: Awaitable[T]) -> tuple[T, ...]: ...

    async def gather(self, *aws: Awaitable[Any]) -> tuple[Any, ...]:
        """Run ``ctx`` calls concurrently; results in argument order.

        Keys are taken when each call is made (argument order), so replay is identical whatever
        order they finish in. Branches that must wait suspend the run once, together, after the
        others have finished; the first failure (in argument order) is raised.
        """
        self._check()
        token = _IN_GATHER.set(True)
        try:
            results = await asyncio.gather(*aws, return_exceptions=True)
        finally:
            _IN_GATHER.reset(token)
        plans: list[SuspendPlan] = []
        for result in results:
            if isinstance(result, Drifted | Aborted | LeaseLost):
                self._raise(result)
            if isinstance(result, Suspended):
                plans.append(result.plan)
            elif isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        if plans:
            merged = functools.reduce(SuspendPlan.merge, plans)
            self.interrupted = None
            self._raise(Suspended(merged))
        for result in results:
            if isinstance(result, Exception):
                raise result
        return tuple(results)

    # -- deterministic values -------------------------------------------------------------------

    def now(self) -> Awaitable[datetime]:
        """The current time, recorded on first run and replayed unchanged."""
        call, memo = self._next(StepKind.NOW, "")
        return self._value(call, memo, lambda: self._clock(), datetime)

    def uuid(self) -> Awaitable[_uuid.UUID]:
        """A random UUID, recorded on first run and replayed unchanged."""
        call, memo = self._next(StepKind.UUID, "")
        return self._value(call, memo, _uuid.uuid4, _uuid.UUID)

    def random(self) -> Awaitable[float]:
        """A float in [0, 1), recorded on first run and replayed unchanged."""
        call, memo = self._next(StepKind.RANDOM, "")
        return self._value(call, memo, self._rng.random, float)

    def patched(self, change_id: str) -> Awaitable[bool]:
        """Branch safely on a code change: ``if await ctx.patched("fraud-check"): ...``.

        True for runs that reach this point under the new code (recorded, so their replays
        agree); False, without taking a position or writing anything, for runs whose history
        shows they passed this point before the change.
        """
        self._label(change_id, "ctx.patched change id")
        self._check()
        if not self._cursor.takes_patch(change_id):
            return self._unpatched()
        call, memo = self._next(StepKind.PATCH, change_id)
        return self._value(call, memo, lambda: True, bool)

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
        data = codec.encode(make(), tp, what=f"ctx.{call.kind.value}()", limit=self._max_payload)
        await self._checkpoint(self._memo(call, call.kind, StepStatus.OK, output=data))
        return typing.cast(T, codec.load(data, tp))

    def _memo(
        self,
        call: replay.Call,
        kind: StepKind,
        status: StepStatus,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        attempts: int = 1,
        started_at: datetime | None = None,
    ) -> StepRecord:
        return StepRecord(
            position=call.position,
            cursor_key=call.cursor_key,
            kind=kind,
            label=call.label,
            status=status,
            output=output,
            error=error,
            attempts=attempts,
            started_at=started_at,
        )


class _ReplayQuietLogger:
    """``ctx.log``: a logger that stays silent while the body replays recorded calls."""

    def __init__(self, ctx: FlowContext) -> None:
        self._ctx = ctx

    def _emit(self, level: int, msg: str, *args: Any) -> None:
        if not self._ctx.is_replaying:
            logger.log(
                level,
                msg,
                *args,
                extra={"run_id": str(self._ctx.run_id), "flow": self._ctx.flow_name},
            )

    def debug(self, msg: str, *args: Any) -> None:
        """Log at DEBUG unless replaying."""
        self._emit(logging.DEBUG, msg, *args)

    def info(self, msg: str, *args: Any) -> None:
        """Log at INFO unless replaying."""
        self._emit(logging.INFO, msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        """Log at WARNING unless replaying."""
        self._emit(logging.WARNING, msg, *args)

    def error(self, msg: str, *args: Any) -> None:
        """Log at ERROR unless replaying."""
        self._emit(logging.ERROR, msg, *args)
