"""Parking, against both stores: ``park`` is fenced and keeps history; ``retry`` and
``requeue_parked`` set a parked run pending and wake it, for the named flows only."""

from __future__ import annotations

import uuid

import pytest

from iterflow.core.errors import LeaseLost
from iterflow.core.models import NewRun, RunStatus, StepKind, StepRecord, StepStatus
from iterflow.store.base import Lease, Store

LEASE = 30.0
ERROR = {"code": "REPLAY_NON_DETERMINISTIC", "message": "drift"}


async def parked_run(store: Store, name: str = "f") -> Lease:
    run = NewRun(id=uuid.uuid4(), name=name, version=1, input={})
    await store.create_run(run)
    claim = await store.claim(run.id, "w1", LEASE)
    assert claim is not None
    await store.checkpoint(claim.lease, StepRecord(0, "a", StepKind.STEP, "a", StepStatus.OK))
    await store.park(claim.lease, ERROR)
    return claim.lease


async def test_park_is_fenced_and_keeps_the_history(store: Store) -> None:
    lease = await parked_run(store)
    detail = await store.detail(lease.run_id)
    assert detail is not None
    assert detail.run.status is RunStatus.PARKED and detail.run.error == ERROR
    assert [s.cursor_key for s in detail.steps] == ["a"]
    assert detail.events[-1].type == "parked"
    assert await store.claim(lease.run_id, "w2", LEASE) is None  # parked is not resumable
    with pytest.raises(LeaseLost):
        await store.park(lease, ERROR)


async def test_retry_unparks_without_touching_history(store: Store) -> None:
    lease = await parked_run(store)
    result = await store.retry(lease.run_id)
    assert (result.kind, result.status) == ("queued", RunStatus.PENDING)
    detail = await store.detail(lease.run_id)
    assert detail is not None and detail.run.status is RunStatus.PENDING
    assert detail.run.error is None and [s.cursor_key for s in detail.steps] == ["a"]
    assert detail.events[-1].type == "unparked"
    assert await store.pending_wake(lease.run_id) is not None
    claim = await store.claim(lease.run_id, "w2", LEASE)
    assert claim is not None and [s.cursor_key for s in claim.history] == ["a"]


async def test_requeue_parked_wakes_only_the_named_flows(store: Store) -> None:
    mine = await parked_run(store, "mine")
    theirs = await parked_run(store, "theirs")
    assert await store.requeue_parked(["mine", "unrelated"]) == 1
    assert await store.requeue_parked([]) == 0
    run = await store.get_run(mine.run_id)
    other = await store.get_run(theirs.run_id)
    assert run is not None and run.status is RunStatus.PENDING and run.stalled_claims == 0
    assert other is not None and other.status is RunStatus.PARKED
    assert await store.pending_wake(mine.run_id) is not None
    assert await store.requeue_parked(["mine"]) == 0  # nothing parked any more
