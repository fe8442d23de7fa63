"""The attempt loop: claim → replay from the top → checkpoint → suspend / finish / fail.

Procrastinate runs it (``runtime/host.py``); this module knows nothing of the queue. How an
attempt's body ended is classified by :func:`iterflow.core.decisions.classify_attempt`; this
module performs the result (suspend, finish, park, abort) and reports an
:class:`~iterflow.core.decisions.AttemptOutcome`.

While the body runs, a renewer task renews the lease every lease/3; the attempt's first
checkpoint renews it too, later checkpoints are only fenced by it. A refused renewal (another
worker took the run) or the run's cancellation (terminal NOTIFY) cancels the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from iterflow.core import decisions, keys
from iterflow.core.decisions import AttemptOutcome
from iterflow.core.definition import FlowDef, Registry
from iterflow.core.errors import (
    Aborted,
    DataRejected,
    Drifted,
    FlowError,
    Halted,
    InputInvalid,
    LeaseLost,
    RunAttemptsExhausted,
    RunDeadlineExceeded,
    Suspended,
)
from iterflow.core.hooks import (
    TRACE_META_KEY,
    AttemptEndInfo,
    AttemptInfo,
    Hooks,
    RunFinishedInfo,
    SuspendInfo,
    clean_carrier,
    wait_reason,
)
from iterflow.core.keys import WAITING_RECOVERY
from iterflow.core.limits import Gate
from iterflow.core.models import RunRecord, RunStatus, SignalRecord, SuspendPlan
from iterflow.core.settings import Settings
from iterflow.runtime.context import FlowContext
from iterflow.runtime.executor import keep_traceback
from iterflow.store.base import Claim, Lease, Store

__all__ = ["SETTLED", "AttemptOutcome", "Worker", "default_owner"]

#: Outcomes whose attempt committed its last write (finish, suspend or park): the wake-up job
#: it ran, if any, was deleted in that write's transaction.
SETTLED = frozenset(
    {
        AttemptOutcome.DONE,
        AttemptOutcome.FAILED,
        AttemptOutcome.SUSPENDED,
        AttemptOutcome.PARKED,
    }
)

logger = logging.getLogger(__name__)


#: Subscribe to terminal notifications of a run: returns an event and an unsubscribe callback.
Watch = Callable[[uuid.UUID], tuple[asyncio.Event, Callable[[], None]]]


def default_owner() -> str:
    """``host:pid:random`` — who holds a lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Makes attempts on runs. Stateless between attempts: nothing stays resident while a run
    waits."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        settings: Settings,
        *,
        owner: str | None = None,
        rng: random.Random | None = None,
        watch: Watch | None = None,
        clock: Callable[[], datetime] | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.owner = owner or default_owner()
        self._rng = rng or random.Random()
        self._watch = watch
        self._clock = clock
        #: The engine's hooks (None when none is installed: the hot path tests only this).
        self.hooks = hooks
        self._serving: tuple[Sequence[str] | None, Sequence[str] | None] = (None, None)
        self._gate: Gate | None = None
        self._gate_size = 0

    def serve(
        self, queues: Sequence[str] | None = None, flows: Sequence[str] | None = None
    ) -> None:
        """Claim only the flow versions in ``queues`` and named in ``flows`` (None: all of those
        registered; ``CONFIG_INVALID`` for an unknown flow name)."""
        self.registry.serving(queues, flows)  # validates the names now
        self._serving = (queues, flows)
        self._gate = None

    @property
    def gate(self) -> Gate:
        """What this worker claims (:class:`~iterflow.core.limits.Gate`): the registered flow
        versions it serves and their limits; runs of any other version stay queued."""
        size = len(self.registry.all())
        if self._gate is None or self._gate_size != size:  # flows registered since
            self._gate, self._gate_size = self.registry.gate(*self._serving), size
        return self._gate

    async def advance(self, run_id: uuid.UUID, job_id: int | None = None) -> AttemptOutcome:
        """Make one attempt on ``run_id``; return what happened (for logs and tests).

        ``job_id`` is the procrastinate job that woke it: the attempt's last write deletes it
        (an outcome in :data:`SETTLED` says that write committed)."""
        gate = self.gate
        claim = await self.store.claim(run_id, self.owner, self.settings.lease_seconds, gate)
        if claim is None:
            return AttemptOutcome.SKIPPED
        if job_id is not None:
            lease = dataclasses.replace(claim.lease, job_id=job_id)
            claim = dataclasses.replace(claim, lease=lease)
        try:
            return await self._advance(claim)
        finally:  # its slot is free: wake the held runs of its flow and key there is room for
            run = claim.run
            limits = None if run.limit_key is None else gate.limits_of(run.name, run.version)
            if limits is not None and run.limit_key is not None:
                with contextlib.suppress(FlowError):
                    await self.store.release_limit(run.name, run.limit_key, limits)

    async def attempt(self, claim: Claim) -> AttemptOutcome:
        """Make the attempt of a claim taken elsewhere: the run :meth:`Store.start_claimed
        <iterflow.store.base.Store.start_claimed>` created already claimed by this worker
        (no flow-control limit, so no slot to release)."""
        return await self._advance(claim)

    async def _advance(self, claim: Claim) -> AttemptOutcome:
        run_id = claim.run.id
        if claim.run.waiting_for == WAITING_RECOVERY:
            last = claim.history[-1].cursor_key if claim.history else "-"
            logger.warning(
                "run recovered after its lease expired: run=%s flow=%s step=%s attempt=%d "
                "(resuming after that step)",
                run_id,
                claim.run.name,
                last,
                claim.run.claims,
                extra={"run_id": str(run_id), "flow": claim.run.name, "step": last},
            )
        hooks = self.hooks
        if hooks is None:
            return await self._guarded(claim)
        info = _attempt_info(claim)
        hooks.attempt_begin(info)
        began = time.monotonic()
        outcome = AttemptOutcome.ABORTED  # if the attempt raises (storage down at its end)
        try:
            outcome = await self._guarded(claim)
        finally:
            took = timedelta(seconds=time.monotonic() - began)
            hooks.attempt_end(AttemptEndInfo(info, outcome, took))
        return outcome

    async def _guarded(self, claim: Claim) -> AttemptOutcome:
        run_id = claim.run.id
        try:
            return await self._attempt(claim)
        except LeaseLost:
            logger.warning(
                "lease lost on run %s; another worker owns it now",
                run_id,
                extra={"run_id": str(run_id)},
            )
            return AttemptOutcome.LEASE_LOST

    async def _attempt(self, claim: Claim) -> AttemptOutcome:
        run = claim.run
        lease = claim.lease
        if run.deadline_at is not None and claim.db_now >= run.deadline_at:
            return await self._expire(claim)
        if run.stalled_claims > self.settings.max_stalled_claims:
            err = RunAttemptsExhausted(
                f"run was claimed {run.stalled_claims} times without progress (cap "
                f"{self.settings.max_stalled_claims}); fix the cause, then engine.retry(run_id)"
            )
            await self.store.fail_unclaimed(lease, err.to_dict())
            self._failed(run, err.to_dict(), None)
            return AttemptOutcome.FAILED
        flow = self.registry.get(run.name, run.version)
        if flow is None:  # pragma: no cover - the gate claims registered versions only
            raise AssertionError(f"claimed {run.name}@{run.version}, which is not registered")
        try:
            value = flow.validate_input(run.input)
        except InputInvalid as exc:
            await self.store.fail_unclaimed(lease, exc.to_dict())
            self._failed(run, exc.to_dict(), None)
            return AttemptOutcome.FAILED

        clock = self._clock_for(claim)  # one clock per attempt: it runs on from the claim
        ctx = FlowContext(
            claim,
            store=self.store,
            settings=self.settings,
            signal_models=flow.signals,
            clock=clock,
            rng=self._rng,
            hooks=self.hooks,
        )
        lost = asyncio.Event()
        renewer = asyncio.create_task(self._renew(claim, lost))
        try:
            return await self._run_body(flow, ctx, value, claim, lost, clock)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeaseLost, FlowError):
                await renewer

    def _clock_for(self, claim: Claim) -> Callable[[], datetime]:
        return self._clock or _db_clock(claim.db_now)

    async def _run_body(
        self,
        flow: FlowDef[Any, Any],
        ctx: FlowContext,
        value: Any,
        claim: Claim,
        lost: asyncio.Event,
        clock: Callable[[], datetime],
    ) -> AttemptOutcome:
        """Run the body, classify how it ended, and write that end."""
        result: Any = None
        raised: Suspended | Drifted | Aborted | Halted | LeaseLost | Exception | None = None
        canceled = False
        try:
            result = await self._body_unless_canceled(flow.body(ctx, value), claim, lost)
            ctx.check_complete()
        except _CanceledElsewhere:
            canceled = True
        except _DeadlinePassed:
            return await self._expire(claim)
        except (Suspended, Drifted, Aborted, Halted, LeaseLost, Exception) as exc:
            raised = exc
        end = decisions.classify_attempt(
            raised,
            ctx.interrupted,
            drift_policy=flow.drift_policy,
            canceled=canceled,
            halting=ctx.cancel is not None,
        )
        if isinstance(end, decisions.EndHalted) or (
            isinstance(end, decisions.EndFailed) and ctx.compensations
        ):
            compensated = await self._compensate(flow, ctx, claim, lost, end)
            if compensated is None:
                return await self._expire(claim)
            end = compensated
        lease = claim.lease
        run = claim.run
        match end:
            case decisions.EndReturned():
                return await self._finish(flow, lease, result, run)
            case decisions.EndSuspended(plan=plan):
                await self.store.suspend(lease, plan)
                if self.hooks is not None:
                    self.hooks.suspend(_suspend_info(run, plan))
            case decisions.EndDrifted(error=error, park=True):
                await self.store.park(lease, error.to_dict())
                _drifted(run, error, "parked")
            case decisions.EndDrifted(error=error):
                await self.store.finish(lease, RunStatus.FAILED, None, error.to_dict())
                _drifted(run, error, "failed")
                self._failed(run, error.to_dict(), _step_of(error))
            case decisions.EndFailed(error=error):
                keep_traceback(error, error.__cause__ or error)
                data = error.to_dict()
                await self.store.finish(lease, RunStatus.FAILED, None, data)
                self._failed(run, data, ctx.failed_step or _step_of(error))
            case decisions.EndCompensated(status=status, error=data):
                await self.store.finish(lease, status, None, data)
                self._failed(run, data, ctx.failed_step, status)
            case decisions.EndAborted(error=error):
                await self._abort(lease, error, claim, clock())
            case decisions.EndLeaseLost():
                raise LeaseLost(lease.run_id)
        return end.outcome

    async def _compensate(
        self,
        flow: FlowDef[Any, Any],
        ctx: FlowContext,
        claim: Claim,
        lost: asyncio.Event,
        end: decisions.EndHalted | decisions.EndFailed,
    ) -> decisions.AttemptEnd | None:
        """Run the compensation phase (the body failed, or halted for a pending
        ``cancel(compensate=True)``) under the same cancel/lease/deadline watch as the body;
        return how the attempt ends (None: the deadline passed meanwhile)."""
        if isinstance(end, decisions.EndFailed):
            keep_traceback(end.error, end.error.__cause__ or end.error)
            original = end.error.to_dict()
        else:
            original = decisions.canceled_error(ctx.cancel.reason if ctx.cancel else "canceled")
        raised: Suspended | Drifted | Aborted | LeaseLost | Exception | None = None
        try:
            outcome = await self._body_unless_canceled(ctx.compensate(), claim, lost)
        except _CanceledElsewhere:
            return decisions.EndCanceled()
        except _DeadlinePassed:
            return None
        except (Suspended, Drifted, Aborted, LeaseLost, Exception) as exc:
            raised = exc
        if raised is not None:
            return decisions.classify_attempt(
                raised, ctx.interrupted, drift_policy=flow.drift_policy
            )
        canceled = isinstance(end, decisions.EndHalted)
        return decisions.compensated_end(original, outcome, canceled=canceled)

    async def _finish(
        self, flow: FlowDef[Any, Any], lease: Lease, result: Any, run: RunRecord
    ) -> AttemptOutcome:
        try:
            data = flow.encode_output(result, limit=self.settings.max_payload_bytes)
        except FlowError as exc:  # OUTPUT_INVALID, PAYLOAD_INVALID, PAYLOAD_TOO_LARGE
            await self.store.finish(lease, RunStatus.FAILED, None, exc.to_dict())
            self._failed(run, exc.to_dict(), None)
            return AttemptOutcome.FAILED
        try:
            await self.store.finish(lease, RunStatus.DONE, data, None)
        except DataRejected as exc:  # refused by PostgreSQL itself: a failure, not an outage
            await self.store.finish(lease, RunStatus.FAILED, None, exc.to_dict())
            self._failed(run, exc.to_dict(), None)
            return AttemptOutcome.FAILED
        if self.hooks is not None:
            self.hooks.run_finished(
                RunFinishedInfo(
                    run.id, run.name, run.version, RunStatus.DONE, None, run.parent_run_id
                )
            )
        return AttemptOutcome.DONE

    async def _expire(self, claim: Claim) -> AttemptOutcome:
        """Fail the run at its deadline and cancel its live non-detached children."""
        run = claim.run
        at = run.deadline_at.isoformat() if run.deadline_at else "?"
        error = RunDeadlineExceeded(
            f"run was still live at its deadline {at}; its live children (unless detached) "
            "were canceled. engine.retry(run_id) replays it without a deadline",
            details={"deadline_at": at},
        ).to_dict()
        await self.store.expire(claim.lease, error)
        self._failed(run, error, None)
        return AttemptOutcome.FAILED

    def _failed(
        self,
        run: RunRecord,
        error: dict[str, Any],
        step: str | None,
        status: RunStatus = RunStatus.FAILED,
    ) -> None:
        """Log a failed run at WARNING and tell the hooks (``status``: ``failed``, or how a run
        with compensations ended)."""
        logger.warning(
            "run %s: run=%s flow=%s step=%s error=[%s] %s",
            status.value,
            run.id,
            run.name,
            step or "-",
            error.get("code"),
            error.get("message"),
            extra={"run_id": str(run.id), "flow": run.name, "step": step},
        )
        if self.hooks is not None:
            self.hooks.run_finished(
                RunFinishedInfo(run.id, run.name, run.version, status, error, run.parent_run_id)
            )

    async def _body_unless_canceled(
        self, work: Awaitable[Any], claim: Claim, lost: asyncio.Event
    ) -> Any:
        """Run the body; if the run is canceled (terminal NOTIFY) or the lease is lost (renewal
        refused) meanwhile, cancel the body task — an async step in progress receives
        ``CancelledError`` — and stop without writing anything. At the run's deadline, stop it
        the same way and raise ``_DeadlinePassed``."""
        body = asyncio.ensure_future(work)
        event, unsubscribe = self._watch(claim.run.id) if self._watch else (lost, _noop)
        deadline = _deadline_timer(claim)
        try:
            while True:
                waits: set[asyncio.Future[Any]] = {body, asyncio.ensure_future(event.wait())}
                if event is not lost:
                    waits.add(asyncio.ensure_future(lost.wait()))
                if deadline is not None:
                    waits.add(deadline)
                done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for task in pending - {body, deadline}:
                    task.cancel()
                if body in done:
                    return body.result()
                if deadline in done:
                    logger.info("run %s reached its deadline during its attempt", claim.run.id)
                    await _stop(body)
                    raise _DeadlinePassed
                event.clear()
                try:
                    run = await self.store.get_run(claim.run.id)
                except FlowError:
                    continue  # cannot tell now (e.g. the listener woke us on a reconnect)
                still_ours = (
                    run is not None
                    and run.status is RunStatus.RUNNING
                    and run.lease_owner == self.owner
                )
                if not still_ours:
                    await _stop(body)
                    if run is not None and run.status is RunStatus.CANCELED:
                        logger.info("run %s was canceled during its attempt", claim.run.id)
                        raise _CanceledElsewhere
                    raise LeaseLost(claim.run.id)
        finally:
            unsubscribe()
            if deadline is not None:
                deadline.cancel()
            if not body.done():
                await _stop(body)

    async def _abort(self, lease: Lease, error: FlowError, claim: Claim, now: datetime) -> None:
        """Release the run for a retry soon after ``now`` (the end of the attempt, not its
        claim); if storage is still down, lease expiry recovers it."""
        logger.warning("attempt on run %s aborted: %s", claim.run.id, error)
        with contextlib.suppress(FlowError, LeaseLost):
            await self.store.suspend(lease, decisions.outage_plan(now))

    async def _renew(self, claim: Claim, lost: asyncio.Event) -> None:
        """Renew the lease every lease/3 while the attempt lasts (the attempt's first checkpoint
        renews it too; later checkpoints do not). A refused renewal sets ``lost``, which cancels
        the body; a failed one (storage down) is retried at the next interval."""
        interval = max(claim.lease.seconds / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.store.renew(claim.lease)
            except LeaseLost:
                logger.warning("lease renewal refused for run %s", claim.run.id)
                lost.set()
                return
            except FlowError as exc:
                logger.warning("lease renewal failed for run %s: %s", claim.run.id, exc)


async def _stop(body: asyncio.Future[Any], grace: float = 5.0) -> None:
    """Cancel the body and wait a little for it. A body that swallows ``CancelledError`` is
    abandoned rather than awaited forever: every write it could still attempt is fenced."""
    body.cancel()
    done, _ = await asyncio.wait({body}, timeout=grace)
    if body in done:
        with contextlib.suppress(BaseException):
            body.result()
    else:
        logger.warning("a flow body ignored cancellation; abandoning it (its writes are fenced)")


def _noop() -> None:
    return None


def _step_of(error: FlowError) -> str | None:
    """The cursor key a drift error names (the recorded call, else the requested one)."""
    for side in ("recorded", "requested"):
        call = error.details.get(side)
        if isinstance(call, dict) and isinstance(call.get("cursor_key"), str):
            return str(call["cursor_key"])
    return None


def _drifted(run: RunRecord, error: FlowError, then: str) -> None:
    step = _step_of(error) or "-"
    logger.warning(
        "replay drifted from the recorded history: run=%s flow=%s step=%s error=%s; run %s",
        run.id,
        run.name,
        step,
        error,
        then,
        extra={"run_id": str(run.id), "flow": run.name, "step": step},
    )


def _attempt_info(claim: Claim) -> AttemptInfo:
    run = claim.run
    now = claim.db_now
    reason = wait_reason(run.waiting_for)
    waited = keys.parse_waiting_for(run.waiting_for) if run.waiting_for and reason else None
    # When the run was due: when the awaited signal came or child ended, else its wake-up time
    # (a sleep, a retry backoff, an outage, a signal's timeout), else its start for a first
    # attempt; never before it became claimable (``ready_at``: when it suspended, or the retry,
    # resume, unpark or recovery that set it pending, which alone count when nothing else does:
    # a recovered run's ``waiting_for`` and ``wake_at`` are those of its crashed attempt).
    came: datetime | None = None
    woken_by: SignalRecord | None = None
    if waited is not None and waited.kind is keys.WaitKind.SIGNAL:
        woken_by = min((s for s in claim.inbox if s.name == waited.ref), key=_id, default=None)
        came = None if woken_by is None else woken_by.received_at
    elif waited is not None and waited.kind is keys.WaitKind.CHILD:
        # the first child to end while the run waited (one that ended before did not wake it)
        since = claim.ready_at or run.created_at
        ended = (c.finished_at for c in claim.children.values() if c.finished_at)
        came = min((t for t in ended if t >= since), default=None)
    first = run.created_at if run.claims == 1 else None
    dues = (came or run.wake_at or first, claim.ready_at)
    due = max((t for t in dues if t is not None), default=None)
    return AttemptInfo(
        run_id=run.id,
        flow=run.name,
        version=run.version,
        attempt=run.claims,
        worker=claim.lease.owner,
        parent_run_id=run.parent_run_id,
        carrier=clean_carrier(run.meta.get(TRACE_META_KEY)),
        resumed_from=run.waiting_for,
        resumed_reason=reason,
        queue_lag=now - due if due is not None and due <= now else None,
        claimed_at=now,
        signal_id=None if woken_by is None else woken_by.id,
        signal_carrier={} if woken_by is None else clean_carrier(woken_by.meta.get(TRACE_META_KEY)),
    )


def _id(signal: SignalRecord) -> int:
    return signal.id


def _suspend_info(run: RunRecord, plan: SuspendPlan) -> SuspendInfo:
    return SuspendInfo(
        run_id=run.id,
        flow=run.name,
        reason=plan.reason,
        status=plan.status,
        cursor_key=plan.cursor_key,
        wake_at=plan.wake_at,
        waiting_for=plan.waiting_for,
    )


class _CanceledElsewhere(Exception):
    """The run was canceled while this attempt ran."""


class _DeadlinePassed(Exception):
    """The run reached its deadline while this attempt ran."""


def _deadline_timer(claim: Claim) -> asyncio.Future[None] | None:
    """A future done at the run's deadline (on the database's clock read at claim time)."""
    deadline_at = claim.run.deadline_at
    if deadline_at is None:
        return None
    return asyncio.ensure_future(asyncio.sleep((deadline_at - claim.db_now).total_seconds()))


def _db_clock(db_now: datetime) -> Callable[[], datetime]:
    """The database's clock, read once at claim time and advanced with a monotonic clock."""
    start = time.monotonic()

    def now() -> datetime:
        return db_now + timedelta(seconds=time.monotonic() - start)

    return now
