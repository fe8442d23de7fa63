"""The side effects of every fenced write, on both stores: whether the lease's expiry moves,
whether the run's no-progress count (``stalled_claims``) resets, and what a checkpoint marks
(a signal consumed, a timer fired) or refuses.

A lease of ``LONG`` seconds is passed to the write under test: if the write renews the lease,
its expiry jumps by about an hour, which no clock resolution can blur.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from iterflow.core.errors import DataRejected, LeaseLost
from iterflow.core.models import (
    RunRecord,
    RunStatus,
    StepKind,
    StepRecord,
    StepStatus,
    SuspendPlan,
    TimerRecord,
)
from iterflow.store.base import Lease, Store
from tests.contract.support import LEASE, lose_wakes, memo, new_run, started_and_claimed

LONG = 3600.0


async def _run(store: Store, run_id: uuid.UUID) -> RunRecord:
    run = await store.get_run(run_id)
    assert run is not None
    return run


def _renewed(before: RunRecord, after: RunRecord) -> bool:
    """Whether the lease's expiry moved to about now + LONG (else it must not have moved)."""
    assert before.lease_expires_at is not None and after.lease_expires_at is not None
    if after.lease_expires_at == before.lease_expires_at:
        return False
    assert after.lease_expires_at - before.lease_expires_at > timedelta(seconds=LONG - LEASE - 60)
    return True


def _long(lease: Lease) -> Lease:
    return dataclasses.replace(lease, seconds=LONG)


async def test_the_first_checkpoint_renews_and_marks_progress_later_ones_only_insert(
    store: Store,
) -> None:
    lease = await started_and_claimed(store)
    claimed = await _run(store, lease.run_id)
    assert claimed.stalled_claims == 1
    await store.checkpoint(_long(lease), memo(0, "a", output=1), renew=False)
    plain = await _run(store, lease.run_id)
    assert not _renewed(claimed, plain)
    assert (plain.stalled_claims, plain.updated_at) == (1, claimed.updated_at)
    await store.checkpoint(_long(lease), memo(1, "b", output=2))
    first = await _run(store, lease.run_id)
    assert _renewed(claimed, first) and first.stalled_claims == 0


async def test_a_retried_steps_memo_renews_and_keeps_its_identity(store: Store) -> None:
    lease = await started_and_claimed(store)
    started = datetime(2024, 1, 1, tzinfo=UTC)
    retrying = memo(
        0, "b", StepStatus.RETRYING, attempts=1, error={"code": "E"}, started_at=started
    )
    await store.checkpoint(_long(lease), retrying, renew=False)
    before = await _run(store, lease.run_id)
    claimed_expiry = before.lease_expires_at
    assert before.stalled_claims == 1  # a fresh retrying memo is a plain later checkpoint
    ok = memo(0, "b", output="x", attempts=2, started_at=started + timedelta(days=1))
    await store.checkpoint(_long(lease), ok, renew=False)
    after = await _run(store, lease.run_id)
    assert after.lease_expires_at != claimed_expiry and _renewed(before, after)
    assert after.stalled_claims == 0
    detail = await store.detail(lease.run_id)
    assert detail is not None
    assert [(s.cursor_key, s.status, s.output, s.error, s.attempts) for s in detail.steps] == [
        ("b", StepStatus.OK, "x", None, 2)
    ]
    assert detail.steps[0].started_at == started  # the row is updated, not replaced


async def test_consuming_a_signal_renews_and_marks_it_once(store: Store) -> None:
    run = new_run()
    await store.create_run(run)
    first = await store.deliver_signal(run.id, "go", {"i": 1}, None, max_signals=10)
    second = await store.deliver_signal(run.id, "go", {"i": 2}, None, max_signals=10)
    claim = await store.claim(run.id, "w", LEASE)
    assert claim is not None
    before = await _run(store, run.id)
    stranger = Lease(run.id, uuid.uuid4(), "w2", LEASE)
    record = StepRecord(0, "signal:go", StepKind.SIGNAL, "go", StepStatus.OK, {"i": 1})
    with pytest.raises(LeaseLost):
        await store.checkpoint(stranger, record, consume_signal=first.signal_id, renew=False)
    await store.checkpoint(_long(claim.lease), record, consume_signal=first.signal_id, renew=False)
    after = await _run(store, run.id)
    assert _renewed(before, after) and after.stalled_claims == 0
    detail = await store.detail(run.id)
    assert detail is not None
    marks = {s.id: (s.consumed_by, s.consumed_at) for s in detail.signals}
    assert marks[first.signal_id][0] == "signal:go" and marks[first.signal_id][1] is not None
    assert marks[second.signal_id] == (None, None)
    # A signal is consumed once: a later consumer leaves the first mark as it was.
    again = StepRecord(1, "signal:go#1", StepKind.SIGNAL, "go", StepStatus.OK, {"i": 1})
    await store.checkpoint(claim.lease, again, consume_signal=first.signal_id, renew=False)
    detail = await store.detail(run.id)
    assert detail is not None
    assert {s.id: (s.consumed_by, s.consumed_at) for s in detail.signals} == marks


async def test_firing_a_timer_renews_and_marks_it(store: Store) -> None:
    lease = await started_and_claimed(store)
    due = datetime.now(UTC) - timedelta(seconds=1)
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
    claim = await store.claim(lease.run_id, "w2", LEASE)
    assert claim is not None and set(claim.timers) == {"sleep:nap"}
    before = await _run(store, lease.run_id)
    assert before.stalled_claims == 1
    record = StepRecord(0, "sleep:nap", StepKind.SLEEP, "nap", StepStatus.OK)
    await store.checkpoint(_long(claim.lease), record, fire_timer="sleep:nap", renew=False)
    after = await _run(store, lease.run_id)
    assert _renewed(before, after) and after.stalled_claims == 0
    detail = await store.detail(lease.run_id)
    assert detail is not None
    [timer] = detail.timers
    assert (timer.cursor_key, timer.fire_at) == ("sleep:nap", due) and timer.fired_at is not None


async def test_a_taken_position_or_cursor_key_is_refused_and_nothing_changes(
    store: Store,
) -> None:
    lease = await started_and_claimed(store)
    await store.checkpoint(lease, memo(0, "a", output=1))
    await store.checkpoint(lease, memo(1, "b", output=2), renew=False)
    before = await _run(store, lease.run_id)
    refused = [
        (memo(1, "b", output="again"), False),  # a later checkpoint inserts fresh positions
        (memo(2, "a", output="dup"), False),  # a cursor key is unique in a run
        (memo(2, "a", output="dup"), True),
    ]
    for record, renew in refused:
        with pytest.raises(DataRejected) as info:
            await store.checkpoint(_long(lease), record, renew=renew)
        assert info.value.details == {"sqlstate": "23505"}
    after = await _run(store, lease.run_id)
    assert (after.lease_expires_at, after.updated_at) == (
        before.lease_expires_at,
        before.updated_at,
    )
    # A renewing checkpoint over a recorded memo: the first writer wins, the lease is renewed.
    await store.checkpoint(_long(lease), memo(0, "a", output="late"))
    assert _renewed(before, await _run(store, lease.run_id))
    detail = await store.detail(lease.run_id)
    assert detail is not None
    assert [(s.cursor_key, s.output) for s in detail.steps] == [("a", 1), ("b", 2)]


async def test_renew_moves_only_the_expiry_and_spawn_renews_the_parent(store: Store) -> None:
    lease = await started_and_claimed(store)
    before = await _run(store, lease.run_id)
    await store.renew(_long(lease))
    renewed = await _run(store, lease.run_id)
    assert _renewed(before, renewed)
    assert (renewed.stalled_claims, renewed.updated_at) == (1, before.updated_at)
    with pytest.raises(LeaseLost):
        await store.renew(Lease(lease.run_id, uuid.uuid4(), "w2", LEASE))

    parent = await started_and_claimed(store)
    before = await _run(store, parent.run_id)
    child = new_run(parent_run_id=parent.run_id, parent_cursor_key="invoke:c@1")
    assert await store.spawn_child(_long(parent), child)
    after = await _run(store, parent.run_id)
    assert _renewed(before, after) and after.stalled_claims == 1  # spawning is not progress


@pytest.mark.parametrize("progress", [True, False])
async def test_suspend_ends_the_lease_queues_its_wake_and_counts_progress(
    store: Store, progress: bool
) -> None:
    lease = await started_and_claimed(store, priority=5)
    await lose_wakes(store)  # the start's wake-up was taken by this attempt's worker
    due = datetime(2030, 6, 1, tzinfo=UTC)
    plan = SuspendPlan(
        RunStatus.SLEEPING, "sleep", "sleep:nap", due, "timer:sleep:nap", progress=progress
    )
    await store.suspend(lease, plan)
    run = await _run(store, lease.run_id)
    assert (run.status, run.waiting_for, run.wake_at) == (
        RunStatus.SLEEPING,
        "timer:sleep:nap",
        due,
    )
    assert (run.lease_owner, run.lease_expires_at) == (None, None)
    assert run.stalled_claims == (0 if progress else 1)
    wake = await store.pending_wake(lease.run_id)
    assert wake is not None and (wake.scheduled_at, wake.priority) == (due, 5)
    with pytest.raises(LeaseLost):
        await store.suspend(lease, plan)
