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
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
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
    FlowUnknown,
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
from iterflow.core.models import RunRecord, RunStatus, SuspendPlan
from iterflow.core.settings import Settings
from iterflow.runtime.context import FlowContext
from iterflow.runtime.executor import keep_traceback
from iterflow.store.base import Claim, Lease, Store

__all__ = ["AttemptOutcome", "Worker", "default_owner"]

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

    async def advance(self, run_id: uuid.UUID) -> AttemptOutcome:
        """Make one attempt on ``run_id``; return what happened (for logs and tests)."""
        claim = await self.store.claim(run_id, self.owner, self.settings.lease_seconds)
        if claim is None:
            return AttemptOutcome.SKIPPED
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
        if flow is None:
            latest = self.registry.latest(run.name)
            hint = f" (registered: {latest.key})" if latest else ""
            err2 = FlowUnknown(
                f"flow {run.name}@{run.version} is not registered in this worker{hint}; deploy "
                "a worker that registers it, then engine.retry(run_id)",
                details={"name": run.name, "version": run.version},
            )
            if latest is not None and latest.drift_policy == "park":  # policy of the flow name
                await self.store.park(lease, err2.to_dict())
                return AttemptOutcome.PARKED
            await self.store.fail_unclaimed(lease, err2.to_dict())
            self._failed(run, err2.to_dict(), None)
            return AttemptOutcome.FAILED
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
        raised: Suspended | Drifted | Aborted | LeaseLost | Exception | None = None
        canceled = False
        try:
            result = await self._body_unless_canceled(flow, ctx, value, claim, lost)
            ctx.check_complete()
        except _CanceledElsewhere:
            canceled = True
        except _DeadlinePassed:
            return await self._expire(claim)
        except (Suspended, Drifted, Aborted, LeaseLost, Exception) as exc:
            raised = exc
        end = decisions.classify_attempt(
            raised, ctx.interrupted, drift_policy=flow.drift_policy, canceled=canceled
        )
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
            case decisions.EndAborted(error=error):
                await self._abort(lease, error, claim, clock())
            case decisions.EndLeaseLost():
                raise LeaseLost(lease.run_id)
        return end.outcome

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

    def _failed(self, run: RunRecord, error: dict[str, Any], step: str | None) -> None:
        """Log a failed run at WARNING and tell the hooks."""
        logger.warning(
            "run failed: run=%s flow=%s step=%s error=[%s] %s",
            run.id,
            run.name,
            step or "-",
            error.get("code"),
            error.get("message"),
            extra={"run_id": str(run.id), "flow": run.name, "step": step},
        )
        if self.hooks is not None:
            self.hooks.run_finished(
                RunFinishedInfo(
                    run.id, run.name, run.version, RunStatus.FAILED, error, run.parent_run_id
                )
            )

    async def _body_unless_canceled(
        self,
        flow: FlowDef[Any, Any],
        ctx: FlowContext,
        value: Any,
        claim: Claim,
        lost: asyncio.Event,
    ) -> Any:
        """Run the body; if the run is canceled (terminal NOTIFY) or the lease is lost (renewal
        refused) meanwhile, cancel the body task — an async step in progress receives
        ``CancelledError`` — and stop without writing anything. At the run's deadline, stop it
        the same way and raise ``_DeadlinePassed``."""
        body = asyncio.ensure_future(flow.body(ctx, value))
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
    due = run.wake_at if run.wake_at is not None else (run.created_at if run.claims == 1 else None)
    reason = wait_reason(run.waiting_for)
    waited = keys.parse_waiting_for(run.waiting_for) if run.waiting_for and reason else None
    if waited is not None and waited.kind is keys.WaitKind.SIGNAL:  # due when the signal came
        came = [s.received_at for s in claim.inbox if s.name == waited.ref]
        due = min(came) if came else due
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
    )


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
