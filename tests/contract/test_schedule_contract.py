"""Schedules, against both stores: definitions, pause/resume, the sweep's locked batch and its
write (runs started with their idempotency keys, watermark, events), outside starts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from iterflow.core.models import NewRun, RunStatus
from iterflow.core.schedule import tick_idempotency_key
from iterflow.core.scheduling import ScheduleEvent, schedule_spec
from iterflow.store.base import ScheduledStart, ScheduleStore, ScheduleWrite, Store

T0 = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)


def _s(store: Store) -> ScheduleStore:
    return cast(ScheduleStore, store)


def start_of(schedule_id: str, tick: datetime, **kw: Any) -> ScheduledStart:
    run = NewRun(
        id=uuid.uuid4(),
        name="report",
        version=1,
        input={"scheduled_at": tick.isoformat(), "schedule_id": schedule_id},
        idempotency_key=tick_idempotency_key(schedule_id, tick),
        tags=(f"schedule:{schedule_id}",),
        meta={"schedule_id": schedule_id},
        **kw,
    )
    return ScheduledStart(tick, run)


async def created(store: Store, sid: str = "daily", **kw: Any) -> None:
    spec = schedule_spec(id=sid, flow="report", cron="0 9 * * *", **kw)
    assert await _s(store).create_schedule(spec, last_tick=T0 - timedelta(hours=1), next_tick=T0)


async def test_create_get_list_update_delete(store: Store) -> None:
    s = _s(store)
    await created(store, overlap="buffer_one", catchup=timedelta(hours=6), jitter=30)
    spec = schedule_spec(id="daily", flow="report", cron="0 10 * * *")
    assert not await s.create_schedule(spec, last_tick=None, next_tick=None)  # id exists

    record = await s.get_schedule("daily")
    assert record is not None and record.spec.cron == "0 9 * * *"
    assert (record.spec.overlap, record.spec.catchup_seconds, record.spec.jitter_seconds) == (
        "buffer_one",
        6 * 3600,
        30,
    )
    assert (record.next_tick, record.last_tick, record.paused) == (
        T0,
        T0 - timedelta(hours=1),
        False,
    )
    assert await s.update_schedule(
        spec, last_tick=T0, next_tick=T0 + timedelta(hours=25), paused=False
    )
    record = await s.get_schedule("daily")
    assert record is not None and record.spec.cron == "0 10 * * *" and record.last_tick == T0
    assert [r.id for r in await s.list_schedules()] == ["daily"]
    assert [e.type for e in await s.schedule_events("daily", limit=10)] == ["updated", "created"]

    assert await s.delete_schedule("daily")
    assert not await s.delete_schedule("daily")
    assert await s.get_schedule("daily") is None
    assert await s.schedule_events("daily", limit=10) == []


async def test_pause_and_resume(store: Store) -> None:
    s = _s(store)
    await created(store)
    assert await s.set_schedule_paused("daily", True, event=ScheduleEvent("paused"))
    record = await s.get_schedule("daily")
    assert record is not None and record.paused and record.next_tick == T0
    async with s.sweep_schedules(limit=10, now=T0 + timedelta(days=3)) as batch:
        assert batch.due == []  # paused schedules are never due

    later = T0 + timedelta(days=3)
    assert await s.set_schedule_paused(
        "daily", False, event=ScheduleEvent("resumed"), last_tick=later, next_tick=later
    )
    record = await s.get_schedule("daily")
    assert record is not None and not record.paused
    assert (record.last_tick, record.next_tick) == (later, later)
    assert not await s.set_schedule_paused("nope", True, event=ScheduleEvent("paused"))
    assert [e.type for e in await s.schedule_events("daily", limit=10)][:2] == [
        "resumed",
        "paused",
    ]


async def test_sweep_locks_due_rows_and_applies_one_write(store: Store) -> None:
    s = _s(store)
    await created(store)
    await created(store, "later")
    async with s.sweep_schedules(limit=10, now=T0 - timedelta(minutes=1)) as batch:
        assert batch.due == []  # not due yet
    async with s.sweep_schedules(limit=10, now=T0) as batch:
        assert batch.now == T0
        assert sorted(d.record.id for d in batch.due) == ["daily", "later"]
        assert all(not d.previous_live for d in batch.due)
        write = ScheduleWrite(
            starts=(start_of("daily", T0),),
            cancel_previous=False,
            last_tick=T0,
            next_tick=T0 + timedelta(days=1),
            buffered_tick=None,
            events=(ScheduleEvent("skipped", T0 - timedelta(days=1), data={"count": 1}),),
        )
        (result,) = await batch.apply("daily", write)
        assert result.created
        with pytest.raises(ValueError, match="not in this sweep"):
            await batch.apply("nope", write)

    record = await s.get_schedule("daily")
    assert record is not None
    assert (record.last_tick, record.next_tick, record.last_run_id) == (
        T0,
        T0 + timedelta(days=1),
        result.run_id,
    )
    run = await store.get_run(result.run_id)
    assert run is not None and run.status is RunStatus.PENDING
    assert run.idempotency_key == "schedule:daily@2030-01-01T09:00:00Z"
    assert run.tags == ("schedule:daily",) and run.meta == {"schedule_id": "daily"}
    assert await store.pending_wake(result.run_id) is not None
    events = await s.schedule_events("daily", limit=10)
    assert [(e.type, e.tick) for e in events[:2]] == [
        ("skipped", T0 - timedelta(days=1)),
        ("started", T0),
    ]
    assert events[1].run_id == result.run_id and events[1].data == {
        "created": True,
        "wake_at": None,
    }

    # the run is live: the next sweep sees it as the previous run
    async with s.sweep_schedules(limit=10, now=T0 + timedelta(days=1)) as batch:
        due = {d.record.id: d.previous_live for d in batch.due}
        assert due == {"daily": True, "later": False}


async def test_a_tick_already_started_starts_nothing(store: Store) -> None:
    s = _s(store)
    await created(store)
    (first,) = await s.start_scheduled("daily", [start_of("daily", T0)], event="backfilled")
    async with s.sweep_schedules(limit=10, now=T0) as batch:
        write = ScheduleWrite((start_of("daily", T0),), False, T0, T0 + timedelta(days=1), None)
        (again,) = await batch.apply("daily", write)
    assert first.created and not again.created and again.run_id == first.run_id
    runs = await store.list_runs(name="report", statuses=(), tag=None, limit=10, before_seq=None)
    assert len(runs) == 1
    assert await s.start_scheduled("nope", [start_of("nope", T0)], event="backfilled") == []


async def test_a_failed_sweep_writes_nothing(store: Store) -> None:
    s = _s(store)
    await created(store)
    with pytest.raises(RuntimeError):
        async with s.sweep_schedules(limit=10, now=T0) as batch:
            write = ScheduleWrite((), False, T0, T0 + timedelta(days=1), None)
            await batch.apply("daily", write)
            raise RuntimeError("crash mid-sweep")
    record = await s.get_schedule("daily")
    assert record is not None and record.next_tick == T0  # still due


async def test_cancel_previous_and_buffered_ticks(store: Store) -> None:
    s = _s(store)
    await created(store, overlap="cancel_previous")
    async with s.sweep_schedules(limit=10, now=T0) as batch:
        write = ScheduleWrite((start_of("daily", T0),), False, T0, T0 + timedelta(days=1), None)
        (first,) = await batch.apply("daily", write)
    nxt = T0 + timedelta(days=1)
    async with s.sweep_schedules(limit=10, now=nxt) as batch:
        (due,) = batch.due
        assert due.previous_live
        write = ScheduleWrite((), True, nxt, nxt + timedelta(days=1), nxt)
        assert await batch.apply("daily", write) == []
    run = await store.get_run(first.run_id)
    assert run is not None and run.status is RunStatus.CANCELED
    # a buffered tick is due once its previous run is not live, whatever next_tick says
    async with s.sweep_schedules(limit=10, now=nxt) as batch:
        assert [d.record.buffered_tick for d in batch.due] == [nxt]


async def test_triggered_run_becomes_the_last_run(store: Store) -> None:
    s = _s(store)
    await created(store)
    (result,) = await s.start_scheduled("daily", [start_of("daily", T0)], event="triggered")
    record = await s.get_schedule("daily")
    assert record is not None and record.last_run_id == result.run_id
    (event,) = await s.schedule_events("daily", limit=1)
    assert (event.type, event.run_id) == ("triggered", result.run_id)
    assert isinstance(await s.schedule_now(), datetime)
