"""The schedule sweep: start the runs of due cron ticks, exactly one run per tick.

A procrastinate periodic task (every second, deduplicated across workers like the reconciler)
calls :meth:`Scheduler.sweep`; ``engine.sweep_schedules()`` calls it directly, and so does
``Engine.drain()`` on the in-memory store. One batch is one transaction
(:meth:`iterflow.store.base.ScheduleStore.sweep_schedules`): the due schedules are read and
locked (``FOR UPDATE SKIP LOCKED``, so concurrent sweeps take disjoint rows), each plan is
decided by the pure core (:func:`iterflow.core.scheduling.plan_sweep` over
:mod:`iterflow.core.schedule`) with the database's ``now`` and the live state of the schedule's
last run, and applied on the same transaction: the watermark advance and the runs' starts commit
together. Each run's idempotency key is ``tick_idempotency_key(id, tick)``, so even two sweeps
racing on one tick (or a sweep and a backfill) start one run.

A schedule whose flow (or pinned version) is not registered in this process is left as it is,
for a worker that has it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from iterflow.core import codec
from iterflow.core.definition import FlowDef, Registry
from iterflow.core.errors import FlowError
from iterflow.core.models import NewRun
from iterflow.core.schedule import jitter_delay, tick_idempotency_key
from iterflow.core.scheduling import ScheduleEvent, ScheduleSpec, plan_sweep
from iterflow.core.settings import Settings
from iterflow.store.base import (
    DueSchedule,
    ScheduleBatch,
    ScheduledStart,
    ScheduleStore,
    ScheduleWrite,
)

__all__ = ["Scheduler", "SweepReport", "resolve_flow", "scheduled_start"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one sweep did."""

    schedules: int = 0
    started: int = 0
    """Runs created (an existing run for a tick is not counted)."""
    skipped: int = 0

    def __add__(self, other: SweepReport) -> SweepReport:
        return SweepReport(
            self.schedules + other.schedules,
            self.started + other.started,
            self.skipped + other.skipped,
        )


def resolve_flow(registry: Registry, spec: ScheduleSpec) -> FlowDef[Any, Any] | None:
    """The flow a schedule starts: its pinned version, or the newest registered."""
    if spec.version is None:
        return registry.latest(spec.flow)
    return registry.get(spec.flow, spec.version)


def scheduled_start(
    spec: ScheduleSpec,
    flow: FlowDef[Any, Any],
    tick: datetime,
    settings: Settings,
    *,
    jitter: bool = True,
) -> ScheduledStart:
    """The run of one tick: the schedule's input (or a :class:`Tick`), its idempotency key,
    the tag ``schedule:<id>``, ``meta`` naming the schedule and tick, and a due time delayed by
    the tick's jitter (a delayed run holds no worker slot)."""
    if spec.input is None:
        value = flow.validate_input({"scheduled_at": tick, "schedule_id": spec.id})
        data = codec.encode(
            value,
            flow.input_type,
            what=f"input of flow {flow.key}",
            limit=settings.max_payload_bytes,
        )
    else:
        data = spec.input
    tag = f"schedule:{spec.id}"
    wake_at = None
    if jitter and spec.jitter_seconds:
        wake_at = tick + jitter_delay(spec.id, tick, spec.jitter)
    run = NewRun(
        id=uuid.uuid4(),
        name=flow.name,
        version=flow.version,
        input=data,
        idempotency_key=tick_idempotency_key(spec.id, tick),
        tags=(tag,) if len(tag) <= settings.max_tag_chars else (),
        meta={"schedule_id": spec.id, "scheduled_at": tick.isoformat()},
        wake_at=wake_at,
        deadline=flow.deadline,
    )
    return ScheduledStart(tick, run)


class Scheduler:
    """Sweeps due schedules in batches of ``batch`` until none is due."""

    def __init__(
        self, store: ScheduleStore, registry: Registry, settings: Settings, *, batch: int = 100
    ) -> None:
        self._store = store
        self._registry = registry
        self._settings = settings
        self._batch = batch

    async def sweep(self, *, now: datetime | None = None) -> SweepReport:
        """Start every due tick; ``now`` replaces the store's clock (tests)."""
        total = SweepReport()
        while True:
            async with self._store.sweep_schedules(limit=self._batch, now=now) as batch:
                report, more = await self._apply(batch)
                due = len(batch.due)
            total += report
            if not report.schedules or (due < self._batch and not more):
                break
        if total.started or total.skipped:
            logger.info("schedule sweep: %s", total)
        return total

    async def _apply(self, batch: ScheduleBatch) -> tuple[SweepReport, bool]:
        report, more = SweepReport(), False
        for due in batch.due:
            flow = resolve_flow(self._registry, due.record.spec)
            if flow is None:
                continue  # left for a worker that registers the flow
            write, skipped, again = self._write(due, flow, batch.now)
            results = await batch.apply(due.record.id, write)
            created = sum(r.created for r in results)
            report += SweepReport(1, created, skipped)
            more = more or again
        return report, more

    def _write(
        self, due: DueSchedule, flow: FlowDef[Any, Any], now: datetime
    ) -> tuple[ScheduleWrite, int, bool]:
        spec = due.record.spec
        plan = plan_sweep(due.record, now=now, previous_live=due.previous_live)
        events = plan.events
        try:
            starts = tuple(scheduled_start(spec, flow, t, self._settings) for t in plan.start)
        except FlowError as exc:  # e.g. the flow's input model no longer accepts a Tick
            logger.error("schedule %s cannot start flow %s: %s", spec.id, flow.key, exc)
            starts = ()
            events += tuple(
                ScheduleEvent("skipped", t, data={"reason": "error", "error": exc.to_dict()})
                for t in plan.start
            )
        skipped = sum(int((e.data or {}).get("count", 1)) for e in events if e.type == "skipped")
        write = ScheduleWrite(
            starts=starts,
            cancel_previous=plan.cancel_previous,
            last_tick=plan.last_tick,
            next_tick=plan.next_tick,
            buffered_tick=plan.buffered_tick,
            events=events,
        )
        return write, skipped, plan.more
