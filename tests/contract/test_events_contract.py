"""Every write's events, on both stores: the type, cursor key and data of each event it writes,
and the events it must not write. The payloads are those of ``iterflow.core.states``."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from iterflow.core.models import (
    RunStatus,
    StepKind,
    StepRecord,
    StepStatus,
    SuspendPlan,
    TimerRecord,
)
from iterflow.core.states import EventType, payload_of
from iterflow.store.base import Store
from tests.contract.support import (
    LEASE,
    Timeline,
    lose_wakes,
    memo,
    new_run,
    started_and_claimed,
)

ERROR = {"code": "E_X", "message": "boom"}


async def test_a_start_writes_started_and_its_delay_counts_from_the_store_clock(
    store: Store,
) -> None:
    plain = new_run()
    await store.create_run(plain)
    assert await Timeline(store, plain.id).new() == [
        ("started", None, {"version": 1, "delayed_until": None})
    ]

    delay = timedelta(hours=1, microseconds=250)
    delayed = new_run(version=3, delay=delay, priority=2)
    await store.create_run(delayed)
    run = await store.get_run(delayed.id)
    assert run is not None and run.wake_at is not None
    assert run.wake_at == run.created_at + delay  # one clock, read once: the store's
    assert await Timeline(store, delayed.id).new() == [
        ("started", None, {"version": 3, "delayed_until": run.wake_at.isoformat()})
    ]
    wake = await store.pending_wake(delayed.id)
    assert wake is not None and (wake.scheduled_at, wake.priority) == (run.wake_at, 2)

    # An absolute due time is spelled the same way (no fraction when it is zero).
    at = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    absolute = new_run(wake_at=at)
    await store.create_run(absolute)
    assert await Timeline(store, absolute.id).new() == [
        ("started", None, {"version": 1, "delayed_until": "2031-05-06T07:08:09+00:00"})
    ]

    keyed = new_run(idempotency_key="k")
    await store.create_run(keyed)
    timeline = Timeline(store, keyed.id)
    await timeline.new()
    again = await store.create_run(new_run(idempotency_key="k", delay=delay))
    assert (again.created, again.run_id) == (False, keyed.id)
    assert await timeline.new() == []  # an idempotent repeat writes nothing


async def test_a_spawned_child_starts_under_the_leased_parent(store: Store) -> None:
    parent = await started_and_claimed(store)
    parent_timeline = Timeline(store, parent.run_id)
    await parent_timeline.new()
    # The store takes the parent from the lease; a child has no key and is due at once.
    child = new_run(version=2, parent_cursor_key="invoke:c@1", idempotency_key="ignored")
    assert await store.spawn_child(parent, child) is True
    assert await Timeline(store, child.id).new() == [
        ("started", None, {"version": 2, "parent": str(parent.run_id)})
    ]
    assert await parent_timeline.new() == []
    spawned = await store.get_run(child.id)
    assert spawned is not None
    assert (spawned.parent_run_id, spawned.parent_cursor_key) == (parent.run_id, "invoke:c@1")
    assert (spawned.idempotency_key, spawned.wake_at) == (None, None)
    wake = await store.pending_wake(child.id)
    assert wake is not None and wake.scheduled_at is None


async def test_an_attempt_writes_events_only_when_it_suspends_finishes_or_parks(
    store: Store,
) -> None:
    lease = await started_and_claimed(store)
    timeline = Timeline(store, lease.run_id)
    await timeline.new()
    await store.renew(lease)
    await store.checkpoint(lease, memo(0, "a", output=1))
    await store.checkpoint(lease, memo(1, "b", output=2), renew=False)
    assert await timeline.new() == []

    due = datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    await store.suspend(
        lease,
        SuspendPlan(
            RunStatus.SLEEPING,
            "sleep",
            "sleep:nap",
            due,
            "timer:sleep:nap",
            (TimerRecord("sleep:nap", due),),
        ),
    )
    assert await timeline.new() == [
        ("suspended", "sleep:nap", {"reason": "sleep", "wake_at": due.isoformat()})
    ]
    claim = await store.claim(lease.run_id, "w2", LEASE)
    assert claim is not None
    assert await timeline.new() == []  # a claim writes no event
    await store.suspend(
        claim.lease,
        SuspendPlan(RunStatus.AWAITING_SIGNAL, "signal", "signal:go", None, "signal:go"),
    )
    assert await timeline.new() == [
        ("suspended", "signal:go", {"reason": "signal", "wake_at": None})
    ]
    claim = await store.claim(lease.run_id, "w3", LEASE)
    assert claim is not None
    await store.finish(claim.lease, RunStatus.DONE, {"ok": True}, None)
    assert await timeline.new() == [("completed", None, None)]


async def test_failing_and_parking_write_the_errors_code(store: Store) -> None:
    failed = await started_and_claimed(store)
    await store.finish(failed, RunStatus.FAILED, None, ERROR)
    assert (await Timeline(store, failed.run_id).new())[1:] == [("failed", None, {"code": "E_X"})]
    unclaimed = await started_and_claimed(store)
    await store.fail_unclaimed(unclaimed, {"code": "FLOW_UNKNOWN", "message": "gone"})
    assert (await Timeline(store, unclaimed.run_id).new())[1:] == [
        ("failed", None, {"code": "FLOW_UNKNOWN"})
    ]
    with pytest.raises(ValueError):  # a cancel without compensations is cancel()'s to write
        await store.finish(unclaimed, RunStatus.CANCELED, None, ERROR)

    parked = await started_and_claimed(store)
    timeline = Timeline(store, parked.run_id)
    await timeline.new()
    await store.park(parked, ERROR)
    assert await timeline.new() == [("parked", None, {"code": "E_X", "message": "boom"})]
    assert await store.requeue_parked(["f"]) == 1
    assert await timeline.new() == [("unparked", None, {"reason": "worker_start"})]
    claim = await store.claim(parked.run_id, "w2", LEASE)
    assert claim is not None
    await store.park(claim.lease, ERROR)
    await timeline.new()
    assert (await store.retry(parked.run_id)).kind == "queued"
    assert await timeline.new() == [("unparked", None, {"reason": "retry"})]


async def test_a_retry_names_the_position_it_replays_from(store: Store) -> None:
    lease = await started_and_claimed(store)
    await store.checkpoint(lease, memo(0, "a", output=1))
    await store.checkpoint(lease, memo(1, "b", StepStatus.FAILED, error=ERROR), renew=False)
    await store.finish(lease, RunStatus.FAILED, None, ERROR)
    timeline = Timeline(store, lease.run_id)
    await timeline.new()
    assert (await store.retry(lease.run_id)).kind == "queued"
    assert await timeline.new() == [("retried", None, {"from": 1})]
    assert (await store.retry(lease.run_id)).kind == "not_failed"
    assert await timeline.new() == []


async def test_signals_write_signal_received_and_each_table_numbers_its_own_rows(
    store: Store,
) -> None:
    first, second = new_run(), new_run()
    await store.create_run(first)
    await store.create_run(second)
    timeline = Timeline(store, first.id)
    await timeline.new()
    a = await store.deliver_signal(first.id, "go", {"i": 1}, "k1", max_signals=10)
    b = await store.deliver_signal(second.id, "go", {}, None, max_signals=10)
    c = await store.deliver_signal(first.id, "other", {}, None, max_signals=10)
    # Signals are numbered by their own sequence (events have theirs): a fresh store counts 1, 2, 3.
    assert [(r.kind, r.signal_id) for r in (a, b, c)] == [
        ("buffered", 1),
        ("buffered", 2),
        ("buffered", 3),
    ]
    assert await timeline.new() == [
        ("signal_received", None, {"name": "go", "signal_id": 1, "waiting": False}),
        ("signal_received", None, {"name": "other", "signal_id": 3, "waiting": False}),
    ]
    assert (await store.deliver_signal(first.id, "go", {}, "k1", max_signals=10)).kind == (
        "duplicate"
    )
    assert (await store.deliver_signal(uuid.uuid4(), "go", {}, None, max_signals=10)).kind == (
        "not_found"
    )
    assert await timeline.new() == []

    claim = await store.claim(first.id, "w", LEASE)
    assert claim is not None
    running = await store.deliver_signal(first.id, "late", {}, None, max_signals=10)
    assert running.kind == "buffered"
    await store.suspend(
        claim.lease,
        SuspendPlan(RunStatus.AWAITING_SIGNAL, "signal", "signal:ok", None, "signal:ok"),
    )
    delivered = await store.deliver_signal(first.id, "ok", {}, None, max_signals=10)
    assert delivered.kind == "delivered"
    assert await timeline.new() == [
        (
            "signal_received",
            None,
            {"name": "late", "signal_id": running.signal_id, "waiting": False},
        ),
        ("suspended", "signal:ok", {"reason": "signal", "wake_at": None}),
        (
            "signal_received",
            None,
            {"name": "ok", "signal_id": delivered.signal_id, "waiting": True},
        ),
    ]
    claim = await store.claim(first.id, "w", LEASE)
    assert claim is not None
    await store.finish(claim.lease, RunStatus.DONE, None, None)
    await timeline.new()
    assert (await store.deliver_signal(first.id, "go", {}, None, max_signals=10)).kind == "closed"
    assert await timeline.new() == []


async def test_a_cancel_writes_canceled_on_each_run_it_ends_naming_the_root(
    store: Store,
) -> None:
    parent = await started_and_claimed(store)
    attached = new_run(parent_run_id=parent.run_id, parent_cursor_key="invoke:c@1")
    detached = new_run(
        parent_run_id=parent.run_id, parent_cursor_key="invoke:d@1", meta={"detached": True}
    )
    await store.spawn_child(parent, attached)
    await store.spawn_child(parent, detached)
    timelines = {rid: Timeline(store, rid) for rid in (parent.run_id, attached.id, detached.id)}
    for timeline in timelines.values():
        await timeline.new()
    assert (await store.cancel(parent.run_id, "stop")).kind == "canceled"
    canceled = ("canceled", None, {"reason": "stop", "root": str(parent.run_id)})
    assert await timelines[parent.run_id].new() == [canceled]
    assert await timelines[attached.id].new() == [canceled]
    assert await timelines[detached.id].new() == []
    assert (await store.cancel(parent.run_id, "again")).kind == "already_terminal"
    assert await timelines[parent.run_id].new() == []


async def test_the_reconciler_writes_recovered_and_rewoken(store: Store) -> None:
    run = new_run()
    await store.create_run(run)
    timeline = Timeline(store, run.id)
    await timeline.new()
    assert await store.claim(run.id, "dead", 0.01) is not None
    await asyncio.sleep(0.05)  # the lease expires on the store's clock (the database's)
    assert await store.recover_expired(10) == 1
    assert await timeline.new() == [("recovered", None, {"reason": "lease_expired"})]
    assert await store.rewake_stranded(10) == 0  # it has its wake-up
    await lose_wakes(store)
    assert await store.rewake_stranded(10) == 1
    assert await timeline.new() == [("rewoken", None, {"reason": "no pending wake-up"})]
    wake = await store.pending_wake(run.id)
    assert wake is not None and wake.scheduled_at is None


async def test_every_event_written_reads_back_as_its_typed_payload(store: Store) -> None:
    lease = await started_and_claimed(store)
    await store.deliver_signal(lease.run_id, "go", {}, None, max_signals=10)
    await store.checkpoint(lease, StepRecord(0, "a", StepKind.STEP, "a", StepStatus.OK))
    await store.park(lease, ERROR)
    await store.retry(lease.run_id)
    detail = await store.detail(lease.run_id)
    assert detail is not None
    for event in detail.events:
        payload = payload_of(event.type, event.data)
        assert payload is not None and payload.type is EventType(event.type)
        assert payload.to_data() == event.data
        assert event.at is not None
    assert dataclasses.is_dataclass(payload)
