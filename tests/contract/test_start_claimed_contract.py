"""``Store.start_claimed``: a start that is its own first claim (both stores)."""

from __future__ import annotations

import asyncio

from iterflow.core.models import RunStatus, SuspendPlan
from iterflow.store.base import Store
from tests.contract.support import LEASE, memo, new_run


async def test_the_run_is_written_claimed_with_no_wake_up_and_the_lease_fences(
    store: Store,
) -> None:
    run = new_run(idempotency_key="k")
    started, claim = await store.start_claimed(run, "w1", LEASE)
    assert started.created and started.status is RunStatus.RUNNING and claim is not None
    assert claim.run.status is RunStatus.RUNNING and claim.run.claims == 1
    assert claim.run.lease_owner == "w1" and claim.run.started_at is not None
    assert (claim.history, claim.inbox, dict(claim.timers)) == ([], [], {})
    assert await store.pending_wake(run.id) is None  # the attempt is the caller's
    assert await store.claim(run.id, "w2", LEASE) is None  # its lease is live
    again, none = await store.start_claimed(new_run(idempotency_key="k"), "w2", LEASE)
    assert (again.run_id, again.created, none) == (run.id, False, None)
    await store.checkpoint(claim.lease, memo(0, "a", output=1))
    await store.finish(claim.lease, RunStatus.DONE, 1, None)
    detail = await store.detail(run.id)
    assert detail is not None and detail.run.status is RunStatus.DONE
    assert detail.events[0].type == "started"


async def test_an_expired_lease_of_a_claimed_start_is_recovered_and_woken(store: Store) -> None:
    run = new_run()
    _, claim = await store.start_claimed(run, "w1", 0.05)
    assert claim is not None
    await asyncio.sleep(0.1)  # let the lease expire (time passing is the subject here)
    assert await store.recover_expired(100) == 1
    assert await store.pending_wake(run.id) is not None
    again = await store.claim(run.id, "w2", LEASE)
    assert again is not None and again.run.claims == 2


async def test_a_wake_up_queued_during_the_attempt_outlives_the_attempts_own_job(
    store: Store,
) -> None:
    """A signal delivered while a claimed start's attempt runs queues a wake-up; ending the
    attempt's own job (``end_wake``: the attempt ended without a write) leaves that wake-up
    queued, and so does the attempt's suspend."""
    run = new_run()
    _, claim = await store.start_claimed(run, "w1", LEASE)
    assert claim is not None
    delivered = await store.deliver_signal(run.id, "go", {"i": 1}, None, max_signals=10)
    assert delivered.kind == "buffered"
    assert await store.pending_wake(run.id) is not None
    await store.end_wake(claim.lease)
    await store.end_wake(claim.lease)  # once ended, again is nothing
    assert await store.pending_wake(run.id) is not None
    wait = SuspendPlan(RunStatus.AWAITING_SIGNAL, "signal", "signal:go", None, "signal:go")
    await store.suspend(claim.lease, wait)
    assert await store.pending_wake(run.id) is not None
    again = await store.claim(run.id, "w2", LEASE)
    assert again is not None and [s.name for s in again.inbox] == ["go"]
