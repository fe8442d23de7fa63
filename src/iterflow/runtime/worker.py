"""The attempt loop: claim → replay from the top → checkpoint → suspend / finish / fail.

Procrastinate runs it (``runtime/host.py``); this module knows nothing of the queue.
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

from iterflow.core.definition import FlowDef, Registry
from iterflow.core.errors import (
    Aborted,
    DataRejected,
    Drifted,
    FlowError,
    FlowFailed,
    FlowUnknown,
    InputInvalid,
    LeaseLost,
    RunAttemptsExhausted,
    Suspended,
    safe_text,
)
from iterflow.core.models import RunStatus, SuspendPlan
from iterflow.core.settings import Settings
from iterflow.runtime.context import FlowContext
from iterflow.store.base import Claim, Store

__all__ = ["Worker", "default_owner"]

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
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.owner = owner or default_owner()
        self._rng = rng or random.Random()
        self._watch = watch
        self._clock = clock

    async def advance(self, run_id: uuid.UUID) -> str:
        """Make one attempt on ``run_id``; return what happened (for logs and tests)."""
        claim = await self.store.claim(run_id, self.owner, self.settings.lease_seconds)
        if claim is None:
            return "skipped"
        try:
            return await self._attempt(claim)
        except LeaseLost:
            logger.warning(
                "lease lost on run %s; another worker owns it now",
                run_id,
                extra={"run_id": str(run_id)},
            )
            return "lease_lost"

    async def _attempt(self, claim: Claim) -> str:
        run = claim.run
        lease = claim.lease
        if run.stalled_claims > self.settings.max_stalled_claims:
            err = RunAttemptsExhausted(
                f"run was claimed {run.stalled_claims} times without progress (cap "
                f"{self.settings.max_stalled_claims}); fix the cause, then engine.retry(run_id)"
            )
            await self.store.fail_unclaimed(lease, err.to_dict())
            return "failed"
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
                return "parked"
            await self.store.fail_unclaimed(lease, err2.to_dict())
            return "failed"
        try:
            value = flow.validate_input(run.input)
        except InputInvalid as exc:
            await self.store.fail_unclaimed(lease, exc.to_dict())
            return "failed"

        ctx = FlowContext(
            run_id=run.id,
            flow_name=run.name,
            attempt=run.claims,
            store=self.store,
            lease=lease,
            history=claim.history,
            timers=claim.timers,
            inbox=claim.inbox,
            signal_models=flow.signals,
            clock=self._clock or _db_clock(claim.db_now),
            rng=self._rng,
            max_payload_bytes=self.settings.max_payload_bytes,
            inline_retry_max=timedelta(seconds=self.settings.inline_retry_max_seconds),
            children=claim.children,
            depth=int(run.meta.get("depth", 0)),
            max_depth=self.settings.max_invoke_depth,
            max_children=self.settings.max_children_per_run,
            max_label_chars=self.settings.max_label_chars,
        )
        lost = asyncio.Event()
        renewer = asyncio.create_task(self._renew(claim, lost))
        try:
            return await self._run_body(flow, ctx, value, claim, lost)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeaseLost, FlowError):
                await renewer

    async def _run_body(
        self,
        flow: FlowDef[Any, Any],
        ctx: FlowContext,
        value: Any,
        claim: Claim,
        lost: asyncio.Event,
    ) -> str:
        lease = claim.lease
        try:
            result = await self._body_unless_canceled(flow, ctx, value, claim, lost)
            ctx.check_complete()
        except _CanceledElsewhere:
            return "canceled"
        except Aborted as a:
            return await self._abort(lease, a, claim)
        except Suspended as s:
            await self.store.suspend(lease, s.plan)
            return "suspended"
        except Drifted as d:
            return await self._drifted(flow, lease, d.error)
        except LeaseLost:
            raise
        except FlowError as exc:
            if isinstance(ctx.interrupted, Suspended | Drifted | Aborted | LeaseLost):
                return await self._interrupted(ctx, lease, claim)
            await self.store.finish(lease, RunStatus.FAILED, None, exc.to_dict())
            return "failed"
        except Exception as exc:
            if isinstance(ctx.interrupted, Suspended | Drifted | Aborted | LeaseLost):
                return await self._interrupted(ctx, lease, claim)
            err = FlowFailed(f"flow body raised {type(exc).__name__}: {safe_text(exc)}")
            err.__cause__ = exc
            await self.store.finish(lease, RunStatus.FAILED, None, err.to_dict())
            return "failed"
        try:
            data = flow.encode_output(result, limit=self.settings.max_payload_bytes)
        except FlowError as exc:  # OUTPUT_INVALID, PAYLOAD_INVALID, PAYLOAD_TOO_LARGE
            await self.store.finish(lease, RunStatus.FAILED, None, exc.to_dict())
            return "failed"
        try:
            await self.store.finish(lease, RunStatus.DONE, data, None)
        except DataRejected as exc:  # refused by PostgreSQL itself: a failure, not an outage
            await self.store.finish(lease, RunStatus.FAILED, None, exc.to_dict())
            return "failed"
        return "done"

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
        ``CancelledError`` — and stop without writing anything."""
        body = asyncio.ensure_future(flow.body(ctx, value))
        event, unsubscribe = self._watch(claim.run.id) if self._watch else (lost, _noop)
        try:
            while True:
                waits = {body, asyncio.ensure_future(event.wait())}
                if event is not lost:
                    waits.add(asyncio.ensure_future(lost.wait()))
                done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for task in pending - {body}:
                    task.cancel()
                if body in done:
                    return body.result()
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
            if not body.done():
                await _stop(body)

    async def _abort(self, lease: Any, aborted: Aborted, claim: Claim) -> str:
        """Release the run for a retry soon; if storage is still down, lease expiry recovers it."""
        logger.warning("attempt on run %s aborted: %s", claim.run.id, aborted.error)
        plan = SuspendPlan(
            status=RunStatus.RETRYING,
            reason="storage",
            cursor_key="",
            wake_at=(self._clock or _db_clock(claim.db_now))() + timedelta(seconds=2),
            waiting_for="storage",
            progress=False,
        )
        with contextlib.suppress(FlowError, LeaseLost):
            await self.store.suspend(lease, plan)
        return "aborted"

    async def _interrupted(self, ctx: FlowContext, lease: Any, claim: Claim) -> str:
        """User code turned a swallowed interrupt into another exception: honour the interrupt."""
        pending = ctx.interrupted
        if isinstance(pending, Suspended):
            await self.store.suspend(lease, pending.plan)
            return "suspended"
        if isinstance(pending, Drifted):
            flow = self.registry.get(claim.run.name, claim.run.version)
            return await self._drifted(flow, lease, pending.error)
        if isinstance(pending, Aborted):
            return await self._abort(lease, pending, claim)
        raise LeaseLost(lease.run_id)

    async def _drifted(self, flow: FlowDef[Any, Any] | None, lease: Any, error: FlowError) -> str:
        """The history no longer matches the code: park the run (``park`` policy: it waits for
        a compatible deploy, then ``engine.retry`` or a worker start) or fail it."""
        if flow is not None and flow.drift_policy == "park":
            await self.store.park(lease, error.to_dict())
            return "parked"
        await self.store.finish(lease, RunStatus.FAILED, None, error.to_dict())
        return "failed"

    async def _renew(self, claim: Claim, lost: asyncio.Event) -> None:
        """Renew the lease every lease/3 while the attempt lasts (only its first checkpoint renews
        it too)."""
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


class _CanceledElsewhere(Exception):
    """The run was canceled while this attempt ran."""


def _db_clock(db_now: datetime) -> Callable[[], datetime]:
    """The database's clock, read once at claim time and advanced with a monotonic clock."""
    start = time.monotonic()

    def now() -> datetime:
        return db_now + timedelta(seconds=time.monotonic() - start)

    return now
