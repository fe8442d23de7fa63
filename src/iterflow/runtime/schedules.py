"""The engine's schedule operations: declare, create, pause, resume, delete, trigger, backfill.

``Engine`` delegates here (one short method each); the checks are the core's
(:func:`iterflow.core.scheduling.schedule_spec`, ``SCHEDULE_INVALID`` before anything is
written), the writes the store's (:class:`iterflow.store.base.ScheduleStore`).

Code-declared schedules (``@engine.flow(..., schedule=)``) have the flow's name as id and are
upserted by :meth:`Schedules.sync` when a worker starts: a new one is created, a changed one
is redefined (its watermark moves to now: the new expression never replays the past), and one
whose flow is registered here but no longer declares it is paused, never deleted. Schedules of
flows this process does not register are left alone (another service may own them).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from iterflow.core import codec
from iterflow.core.definition import FlowDef, Registry
from iterflow.core.durations import DurationLike, parse_duration
from iterflow.core.errors import FlowUnknown, ScheduleConflict, ScheduleInvalid, ScheduleNotFound
from iterflow.core.models import StartResult
from iterflow.core.schedule import backfill_ticks, check_schedule_id, parse_schedule
from iterflow.core.scheduling import (
    ScheduleEvent,
    ScheduleRecord,
    ScheduleSpec,
    check_tick_input,
    first_state,
    schedule_spec,
)
from iterflow.core.settings import Settings
from iterflow.runtime.scheduler import resolve_flow, scheduled_start
from iterflow.store.base import ScheduleStore

__all__ = ["BACKFILL_BATCH", "Schedules"]

#: Ticks a backfill starts per transaction (progress is reported after each batch).
BACKFILL_BATCH = 100

_PAUSES = ("paused", "resumed", "removed_from_code")


class Schedules:
    """Schedule operations over a :class:`ScheduleStore` and this process's flows."""

    def __init__(self, registry: Registry, settings: Callable[[], Settings]) -> None:
        self._registry = registry
        self._settings_of = settings
        self.declared: dict[str, ScheduleSpec] = {}
        """Code-declared schedules by id (the flow's name)."""

    def declare(self, flow: FlowDef[Any, Any], cron: str, tz: str) -> None:
        """Record ``@engine.flow(..., schedule=cron, tz=tz)`` (checked now, written by sync)."""
        spec = schedule_spec(id=flow.name, flow=flow.name, cron=cron, tz=tz, source="code")
        check_tick_input(flow.input_type, flow.key)
        self.declared[spec.id] = spec

    async def sync(self, store: ScheduleStore) -> None:
        """Upsert the code-declared schedules; pause the ones removed from the code."""
        now = await store.schedule_now()
        for spec in self.declared.values():
            current = await store.get_schedule(spec.id)
            if current is None:
                last, nxt = first_state(spec, now)
                if await store.create_schedule(spec, last_tick=last, next_tick=nxt):
                    continue
                current = await store.get_schedule(spec.id)  # created concurrently
                if current is None:
                    continue
            if current.spec.source != "code":
                raise ScheduleConflict(
                    f"schedule {spec.id!r} declared in code exists as an API schedule; delete "
                    "it (engine.delete_schedule) or rename one of them"
                )
            removed = current.paused and await _last_pause(store, spec.id) == "removed_from_code"
            if not current.spec.same_definition(spec) or removed:
                last, nxt = first_state(spec, now)
                paused = current.paused and not removed
                await store.update_schedule(spec, last_tick=last, next_tick=nxt, paused=paused)
        names = {f.name for f in self._registry.all()}
        for record in await store.list_schedules():
            spec = record.spec
            gone = spec.source == "code" and spec.id not in self.declared and spec.flow in names
            if gone and not record.paused:
                event = ScheduleEvent("removed_from_code", data={"reason": "removed from code"})
                await store.set_schedule_paused(spec.id, True, event=event)

    async def create(
        self,
        store: ScheduleStore,
        flow: FlowDef[Any, Any],
        *,
        cron: str,
        tz: str,
        input: Any,
        id: str | None,
        overlap: str,
        catchup: DurationLike | None,
        jitter: DurationLike,
        start_at: datetime | None,
        end_at: datetime | None,
        pin_version: bool,
    ) -> ScheduleRecord:
        """``engine.schedule``: validate, then create (or return the identical existing one)."""
        parse_schedule(cron, tz)  # the expression's error first, naming the field
        data = None
        if input is None:
            check_tick_input(flow.input_type, flow.key)
        else:
            data = codec.encode(
                flow.validate_input(input),
                flow.input_type,
                what=f"input of flow {flow.key}",
                limit=self._settings_of().max_payload_bytes,
            )
        spec = schedule_spec(
            id=id if id is not None else _default_id(flow.name, cron, tz, data),
            flow=flow.name,
            cron=cron,
            tz=tz,
            version=flow.version if pin_version else None,
            input=data,
            overlap=overlap,
            catchup=None if catchup is None else parse_duration(catchup),
            jitter=parse_duration(jitter),
            start_at=start_at,
            end_at=end_at,
        )
        existing = await store.get_schedule(spec.id)
        if existing is None:
            last, nxt = first_state(spec, await store.schedule_now())
            if await store.create_schedule(spec, last_tick=last, next_tick=nxt):
                return await self.get(store, spec.id)
            existing = await self.get(store, spec.id)
        if existing.spec.source != "api" or not existing.spec.same_definition(spec):
            raise ScheduleConflict(
                f"schedule {spec.id!r} exists with another definition ({existing.spec.cron!r} "
                f"in {existing.spec.tz}, flow {existing.spec.flow}, from {existing.spec.source}); "
                "delete it first or pick another id",
                details={"schedule_id": spec.id},
            )
        return existing

    async def get(self, store: ScheduleStore, schedule_id: str) -> ScheduleRecord:
        record = await store.get_schedule(_check_id(schedule_id))
        if record is None:
            raise ScheduleNotFound(f"no schedule {schedule_id!r}")
        return record

    async def pause(self, store: ScheduleStore, schedule_id: str) -> ScheduleRecord:
        await self.get(store, schedule_id)
        await store.set_schedule_paused(schedule_id, True, event=ScheduleEvent("paused"))
        return await self.get(store, schedule_id)

    async def resume(self, store: ScheduleStore, schedule_id: str) -> ScheduleRecord:
        """Resume without catching up: ticks while paused are not started."""
        record = await self.get(store, schedule_id)
        if record.paused:
            last, nxt = first_state(record.spec, await store.schedule_now())
            event = ScheduleEvent("resumed")
            await store.set_schedule_paused(
                schedule_id, False, event=event, last_tick=last, next_tick=nxt
            )
        return await self.get(store, schedule_id)

    async def delete(self, store: ScheduleStore, schedule_id: str) -> None:
        if not await store.delete_schedule(_check_id(schedule_id)):
            raise ScheduleNotFound(f"no schedule {schedule_id!r}")

    def _flow(self, spec: ScheduleSpec) -> FlowDef[Any, Any]:
        flow = resolve_flow(self._registry, spec)
        if flow is None:
            version = "" if spec.version is None else f"@{spec.version}"
            raise FlowUnknown(
                f"schedule {spec.id!r} starts flow {spec.flow}{version}, which is not registered "
                "in this process"
            )
        return flow

    async def trigger(self, store: ScheduleStore, schedule_id: str) -> StartResult:
        """Start a run now, as if a tick fell now (no jitter, overlap not applied)."""
        record = await self.get(store, schedule_id)
        now = await store.schedule_now()
        start = scheduled_start(
            record.spec, self._flow(record.spec), now, self._settings_of(), jitter=False
        )
        (result,) = await store.start_scheduled(schedule_id, [start], event="triggered")
        return result

    async def backfill(
        self,
        store: ScheduleStore,
        schedule_id: str,
        start: datetime,
        end: datetime,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[StartResult]:
        """Start every tick in ``[start, end]`` with the sweep's idempotency keys: ticks that
        already ran (or were backfilled) start nothing new. The ticks are started
        :data:`BACKFILL_BATCH` per transaction, ``progress(done, total)`` told after each."""
        record = await self.get(store, schedule_id)
        spec = record.spec
        ticks = backfill_ticks(parse_schedule(spec.cron, spec.tz), start, end)
        flow = self._flow(spec)
        starts = [scheduled_start(spec, flow, t, self._settings_of(), jitter=False) for t in ticks]
        results: list[StartResult] = []
        for i in range(0, len(starts), BACKFILL_BATCH):
            batch = starts[i : i + BACKFILL_BATCH]
            results += await store.start_scheduled(schedule_id, batch, event="backfilled")
            if progress is not None:
                progress(len(results), len(starts))
        return results


async def _last_pause(store: ScheduleStore, schedule_id: str) -> str | None:
    for event in await store.schedule_events(schedule_id, limit=50):
        if event.type in _PAUSES:
            return event.type
    return None


def _check_id(schedule_id: object) -> str:
    """An id no schedule can have (not text PostgreSQL stores) is not found, never queried."""
    try:
        return check_schedule_id(schedule_id)
    except ScheduleInvalid:
        raise ScheduleNotFound(f"no schedule {codec.shown(schedule_id)}") from None


def _default_id(flow: str, cron: str, tz: str, data: Mapping[str, Any] | Any) -> str:
    text = json.dumps([cron, tz, data], sort_keys=True, default=str)
    return f"{flow}:{hashlib.sha256(text.encode()).hexdigest()[:12]}"
