"""Data lifecycle on both stores: purge (retention), run deadlines, idempotency conflicts."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from iterflow.core.errors import IdempotencyConflict, LeaseLost
from iterflow.core.models import RunStatus, SuspendPlan
from iterflow.store.base import Lease, PurgeBatch, Store
from iterflow.store.memory import MemoryStore
from iterflow.store.postgres import PostgresStore
from tests.contract.support import LEASE, lose_wakes, memo, new_run, started_and_claimed

NOW = timedelta(0)
DEADLINE_ERROR = {"code": "RUN_DEADLINE_EXCEEDED", "message": "deadline passed"}


async def rows_of(store: Store, run_id: uuid.UUID) -> dict[str, int]:
    """How many rows of each table belong to ``run_id`` (the run row itself included)."""
    if isinstance(store, MemoryStore):
        return {
            "runs": int(run_id in store._runs),
            "steps": len(store._steps.get(run_id, {})),
            "signals": len(store._signals.get(run_id, [])),
            "timers": len(store._timers.get(run_id, {})),
            "events": len(store._events.get(run_id, [])),
        }
    assert isinstance(store, PostgresStore)
    counts = {}
    async with store._engine.connect() as conn:
        for table in ("runs", "steps", "signals", "timers", "events"):
            column = "id" if table == "runs" else "run_id"
            sql = f"SELECT count(*) FROM iterflow.{table} WHERE {column} = :id"
            counts[table] = (await conn.execute(sa.text(sql), {"id": run_id})).scalar_one()
    return counts


async def finished(store: Store, status: RunStatus = RunStatus.DONE, **kw: object) -> Lease:
    """A run that went through an attempt (a memo row) and ended with ``status``."""
    lease = await started_and_claimed(store, **kw)
    await store.checkpoint(lease, memo(0, "a", output=1))
    if status is RunStatus.CANCELED:
        await store.cancel(lease.run_id, "stop")
    else:
        error = None if status is RunStatus.DONE else {"code": "X", "message": "x"}
        await store.finish(lease, status, 1 if error is None else None, error)
    return lease


async def with_children(store: Store, *, detached_live: bool = False) -> tuple[Lease, uuid.UUID]:
    """A parent with a timer, a signal and one child; both done (or the child, detached, left
    pending). Returns the parent's lease and the child's id."""
    lease = await started_and_claimed(store)
    child = new_run(name="c", parent_cursor_key="invoke:c", meta={"detached": detached_live})
    assert await store.spawn_child(lease, child)
    await store.deliver_signal(lease.run_id, "go", {"x": 1}, "sig-1", max_signals=10)
    await store.checkpoint(lease, memo(0, "a", output=1))
    plan = SuspendPlan(RunStatus.AWAITING_CHILD, "child", "invoke:c", None)
    await store.suspend(lease, plan)
    if not detached_live:
        child_claim = await store.claim(child.id, "w2", LEASE)
        assert child_claim is not None
        await store.finish(child_claim.lease, RunStatus.DONE, 2, None)
    again = await store.claim(lease.run_id, "w1", LEASE)
    assert again is not None
    await store.finish(again.lease, RunStatus.DONE, 1, None)
    return again.lease, child.id


# -- purge --------------------------------------------------------------------------------------


async def test_purge_deletes_a_finished_run_with_its_children_and_every_row(store: Store) -> None:
    parent, child = await with_children(store)
    live = await started_and_claimed(store)
    assert (await rows_of(store, parent.run_id))["signals"] == 1

    counted = await store.purge(RunStatus.DONE, NOW, limit=10, dry_run=True)
    assert counted == PurgeBatch(top_level=1, runs=2)
    assert await store.get_run(parent.run_id) is not None  # a dry run deletes nothing
    assert await store.purge(RunStatus.DONE, timedelta(hours=1), limit=10) == PurgeBatch(0, 0)

    assert await store.purge(RunStatus.DONE, NOW, limit=10) == PurgeBatch(top_level=1, runs=2)
    for run_id in (parent.run_id, child):
        assert set((await rows_of(store, run_id)).values()) == {0}
        assert await store.detail(run_id) is None
    assert (await rows_of(store, live.run_id))["runs"] == 1
    assert await store.purge(RunStatus.DONE, NOW, limit=10) == PurgeBatch(0, 0)


async def test_purge_never_takes_live_runs_nor_a_run_whose_detached_child_is_live(
    store: Store,
) -> None:
    parent, child = await with_children(store, detached_live=True)
    await started_and_claimed(store)  # running
    await store.create_run(new_run())  # pending
    for status in (RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELED):
        assert await store.purge(status, NOW, limit=10, dry_run=True) == PurgeBatch(0, 0)
        assert await store.purge(status, NOW, limit=10) == PurgeBatch(0, 0)
    assert await store.get_run(parent.run_id) is not None
    # once the detached child ends, the tree goes as one
    claim = await store.claim(child, "w2", LEASE)
    assert claim is not None
    await store.finish(claim.lease, RunStatus.FAILED, None, {"code": "X", "message": "x"})
    assert await store.purge(RunStatus.DONE, NOW, limit=10) == PurgeBatch(top_level=1, runs=2)
    assert await store.get_run(child) is None


async def test_purge_selects_by_status_and_flow(store: Store) -> None:
    f_done = await finished(store, name="f")
    g_done = await finished(store, name="g")
    f_failed = await finished(store, RunStatus.FAILED, name="f")
    f_canceled = await finished(store, RunStatus.CANCELED, name="f")

    assert await store.purge(RunStatus.DONE, NOW, flow="g", limit=10) == PurgeBatch(1, 1)
    assert await store.get_run(g_done.run_id) is None
    assert await store.get_run(f_done.run_id) is not None
    assert await store.purge(RunStatus.DONE, NOW, exclude=["f"], limit=10) == PurgeBatch(0, 0)
    assert await store.purge(RunStatus.FAILED, NOW, limit=10) == PurgeBatch(1, 1)
    assert await store.get_run(f_failed.run_id) is None
    assert await store.get_run(f_done.run_id) is not None
    assert await store.get_run(f_canceled.run_id) is not None
    assert await store.purge(RunStatus.CANCELED, NOW, flow="f", limit=10) == PurgeBatch(1, 1)
    assert await store.purge(RunStatus.DONE, NOW, exclude=["g"], limit=10) == PurgeBatch(1, 1)


async def test_purge_takes_oldest_first_in_batches_of_limit(store: Store) -> None:
    leases = [await finished(store) for _ in range(5)]
    assert await store.purge(RunStatus.DONE, NOW, limit=2, dry_run=True) == PurgeBatch(5, 5)
    assert await store.purge(RunStatus.DONE, NOW, limit=2) == PurgeBatch(2, 2)
    gone = [await store.get_run(lease.run_id) is None for lease in leases]
    assert gone == [True, True, False, False, False]
    assert await store.purge(RunStatus.DONE, NOW, limit=2) == PurgeBatch(2, 2)
    assert await store.purge(RunStatus.DONE, NOW, limit=2) == PurgeBatch(1, 1)


async def test_a_purged_runs_idempotency_key_is_free_again(store: Store) -> None:
    lease = await finished(store, idempotency_key="order-1", input_hash="a")
    await store.purge(RunStatus.DONE, NOW, limit=10)
    again = await store.create_run(new_run(idempotency_key="order-1", input_hash="b"))
    assert again.created and again.run_id != lease.run_id


# -- idempotency conflicts ----------------------------------------------------------------------


async def test_a_reused_key_with_another_input_conflicts_and_writes_nothing(store: Store) -> None:
    first = await store.create_run(new_run(idempotency_key="k", input_hash="h1"))
    same = await store.create_run(new_run(idempotency_key="k", input_hash="h1"))
    assert (same.created, same.run_id) == (False, first.run_id)
    with pytest.raises(IdempotencyConflict) as caught:
        await store.create_run(new_run(idempotency_key="k", input_hash="h2"))
    assert caught.value.code == "IDEMPOTENCY_CONFLICT"
    assert caught.value.details == {"flow": "f", "idempotency_key": "k"}
    # another flow may use the key; an unknown hash (an older run, a scheduled start) is no
    # conflict
    assert (await store.create_run(new_run(name="g", idempotency_key="k"))).created
    assert not (await store.create_run(new_run(idempotency_key="k"))).created
    page = await store.list_runs(name="f", statuses=(), tag=None, limit=10, before_seq=None)
    assert [r.id for r in page] == [first.run_id]


# -- deadlines ----------------------------------------------------------------------------------


async def test_a_deadline_is_the_runs_latest_due_time_while_it_waits(store: Store) -> None:
    run = new_run(deadline=timedelta(hours=1))
    await store.create_run(run)
    record = await store.get_run(run.id)
    assert record is not None and record.deadline_at is not None
    assert record.deadline_at - record.created_at == timedelta(hours=1)
    deadline = record.deadline_at

    async def suspended(plan: SuspendPlan) -> object:
        await lose_wakes(store)  # the queued one (a due time merges into it, the earliest wins)
        claim = await store.claim(run.id, "w1", LEASE)
        assert claim is not None and claim.run.deadline_at == deadline
        await store.suspend(claim.lease, plan)
        wake = await store.pending_wake(run.id)
        current = await store.get_run(run.id)
        assert wake is not None and current is not None
        assert wake.scheduled_at == current.wake_at
        return current.wake_at

    awaiting = SuspendPlan(RunStatus.AWAITING_SIGNAL, "signal", "signal:go", None, "signal:go")
    assert await suspended(awaiting) == deadline
    soon = deadline - timedelta(minutes=30)
    assert await suspended(SuspendPlan(RunStatus.SLEEPING, "sleep", "sleep", soon)) == soon
    late = deadline + timedelta(days=1)
    assert await suspended(SuspendPlan(RunStatus.SLEEPING, "sleep", "sleep", late)) == deadline


async def test_expire_fails_the_run_and_cancels_its_attached_live_children(store: Store) -> None:
    lease = await started_and_claimed(store, deadline=timedelta(hours=1))
    attached = new_run(name="c", parent_cursor_key="invoke:a")
    detached = new_run(name="c", parent_cursor_key="invoke:d", meta={"detached": True})
    assert await store.spawn_child(lease, attached)
    assert await store.spawn_child(lease, detached)
    await lose_wakes(store)

    await store.expire(lease, DEADLINE_ERROR)
    assert await store.pending_wake(lease.run_id) is None  # the failed root is not woken

    run = await store.get_run(lease.run_id)
    assert run is not None and run.status is RunStatus.FAILED
    assert run.error == DEADLINE_ERROR
    child = await store.get_run(attached.id)
    assert child is not None and child.status is RunStatus.CANCELED
    assert child.error == {"code": "RUN_CANCELED", "message": "deadline passed"}
    still = await store.get_run(detached.id)
    assert still is not None and still.status is RunStatus.PENDING
    detail = await store.detail(lease.run_id)
    assert detail is not None and detail.events[-1].type == "failed"
    assert detail.events[-1].data == {"code": "RUN_DEADLINE_EXCEEDED"}
    with pytest.raises(LeaseLost):  # fenced: the run is no longer running
        await store.expire(lease, DEADLINE_ERROR)


async def test_the_reconciler_wakes_a_waiting_run_past_its_deadline(store: Store) -> None:
    lease = await started_and_claimed(store, deadline=NOW)
    plan = SuspendPlan(RunStatus.AWAITING_CHILD, "child", "invoke:c", None)
    await store.suspend(lease, plan)
    await lose_wakes(store)
    assert await store.rewake_stranded(10) == 1
    assert await store.pending_wake(lease.run_id) is not None


async def test_retry_clears_the_deadline(store: Store) -> None:
    lease = await started_and_claimed(store, deadline=NOW)
    await store.expire(lease, DEADLINE_ERROR)
    assert (await store.retry(lease.run_id)).kind == "queued"
    run = await store.get_run(lease.run_id)
    assert run is not None and run.deadline_at is None and run.status is RunStatus.PENDING
