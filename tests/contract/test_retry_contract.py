"""``retry`` applies the core's cut (``iterflow.core.decisions.retry_cut``) the same way on both
stores: memo rows from the failure on, the signals they consumed, their timers (a step's
``retry:<key>`` backoff included) and every unfired one, and their failed children."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from iterflow.core.decisions import NO_CUT, child_run_id
from iterflow.core.models import RunStatus, StepKind, StepRecord, StepStatus, SuspendPlan
from iterflow.core.models import TimerRecord as Timer
from iterflow.store.base import Lease, Store
from tests.contract.support import LEASE, Timeline, memo, new_run, started_and_claimed


def _plan(status: RunStatus, key: str, *timers: Timer) -> SuspendPlan:
    wake = min((t.fire_at for t in timers), default=None)
    return SuspendPlan(status, "test", key, wake, new_timers=timers)


async def _claim(store: Store, run_id: uuid.UUID) -> Lease:
    claim = await store.claim(run_id, "w", LEASE)
    assert claim is not None
    return claim.lease


async def test_retry_cuts_from_a_failed_step_in_the_middle(store: Store) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    later = datetime.now(UTC) + timedelta(hours=1)
    lease = await started_and_claimed(store)
    run_id = lease.run_id
    timeline = Timeline(store, run_id)
    # pay fails after a long backoff; the body catches it, takes a signal, sleeps, then fails.
    await store.checkpoint(lease, memo(0, "reserve", output=1))
    await store.checkpoint(lease, memo(1, "pay", StepStatus.RETRYING, error={"code": "E"}))
    await store.suspend(lease, _plan(RunStatus.RETRYING, "pay", Timer("retry:pay", past)))
    lease = await _claim(store, run_id)
    failed = memo(1, "pay", StepStatus.FAILED, error={"code": "E"}, attempts=2)
    await store.checkpoint(lease, failed, fire_timer="retry:pay")
    sent = await store.deliver_signal(run_id, "go", {"i": 1}, None, max_signals=100)
    assert sent.signal_id is not None
    signal = StepRecord(2, "signal:go", StepKind.SIGNAL, "go", StepStatus.OK, {"i": 1})
    await store.checkpoint(lease, signal, consume_signal=sent.signal_id)
    await store.suspend(lease, _plan(RunStatus.SLEEPING, "sleep:nap", Timer("sleep:nap", past)))
    lease = await _claim(store, run_id)
    nap = StepRecord(3, "sleep:nap", StepKind.SLEEP, "nap", StepStatus.OK, {"fire_at": "x"})
    await store.checkpoint(lease, nap, fire_timer="sleep:nap")
    wait = _plan(RunStatus.AWAITING_SIGNAL, "signal:go#1", Timer("signal:go#1", later))
    await store.suspend(lease, wait)
    buffered = await store.deliver_signal(run_id, "go", {"i": 2}, None, max_signals=100)
    lease = await _claim(store, run_id)
    await store.finish(lease, RunStatus.FAILED, None, {"code": "X", "message": "x"})
    await timeline.new()

    assert (await store.retry(run_id)).kind == "queued"

    assert await timeline.new() == [("retried", None, {"from": 1})]
    detail = await store.detail(run_id)
    assert detail is not None and detail.run.status is RunStatus.PENDING
    assert [s.cursor_key for s in detail.steps] == ["reserve"]
    assert [(g.id, g.consumed_by, g.consumed_at) for g in detail.signals] == [
        (sent.signal_id, None, None),  # consumed after the cut: back in the inbox
        (buffered.signal_id, None, None),
    ]
    assert detail.timers == ()  # fired after the cut, the backoff of the cut step, unfired
    claim = await store.claim(run_id, "w", LEASE)
    assert claim is not None and [g.id for g in claim.inbox] == [
        sent.signal_id,
        buffered.signal_id,
    ]


async def test_a_failed_child_is_retried_with_its_parent(store: Store) -> None:
    lease = await started_and_claimed(store)
    parent = lease.run_id
    key = "invoke:c@1"
    child_id = child_run_id(parent, key)
    child = new_run(id=child_id, name="c", parent_run_id=parent, parent_cursor_key=key)
    assert await store.spawn_child(lease, child)
    await store.suspend(lease, _plan(RunStatus.AWAITING_CHILD, key))
    child_lease = await _claim(store, child_id)
    await store.finish(child_lease, RunStatus.FAILED, None, {"code": "E", "message": "e"})
    lease = await _claim(store, parent)
    invoke = StepRecord(0, key, StepKind.INVOKE, "c@1", StepStatus.FAILED, error={"code": "E"})
    await store.checkpoint(lease, invoke)
    await store.finish(lease, RunStatus.FAILED, None, {"code": "E", "message": "e"})
    child_events = Timeline(store, child_id)
    await child_events.new()

    assert (await store.retry(parent)).kind == "queued"

    assert await child_events.new() == [("retried", None, {"from": NO_CUT})]
    for run_id in (parent, child_id):
        run = await store.get_run(run_id)
        assert run is not None and run.status is RunStatus.PENDING
    detail = await store.detail(parent)
    assert detail is not None and detail.steps == ()
