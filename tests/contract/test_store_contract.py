"""One contract, two stores: every test runs against PostgreSQL and the in-memory store."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from iterflow.core.errors import DataRejected, LeaseLost, SignalLimitExceeded
from iterflow.core.models import (
    RunStatus,
    StepKind,
    StepRecord,
    StepStatus,
    SuspendPlan,
    TimerRecord,
)
from iterflow.store.base import Lease, Store
from tests.contract.support import LEASE, memo, new_run, started_and_claimed


async def test_start_is_idempotent_and_queues_one_wake(store: Store) -> None:
    run = new_run(idempotency_key="k", tags=("a",), priority=3)
    first = await store.create_run(run)
    again = await store.create_run(new_run(idempotency_key="k"))
    assert (first.created, again.created, again.run_id) == (True, False, run.id)
    wake = await store.pending_wake(run.id)
    assert wake is not None and wake.scheduled_at is None and wake.priority == 3
    later = new_run(wake_at=datetime.now(UTC) + timedelta(hours=1))
    await store.create_run(later)
    delayed = await store.pending_wake(later.id)
    assert delayed is not None and delayed.scheduled_at == later.wake_at


async def test_claim_takes_only_resumable_runs_and_fences_writes(store: Store) -> None:
    lease = await started_and_claimed(store)
    assert await store.claim(lease.run_id, "w2", LEASE) is None  # live lease
    stranger = Lease(lease.run_id, uuid.uuid4(), "w2", LEASE)
    with pytest.raises(LeaseLost):
        await store.checkpoint(stranger, memo(0, "a"))
    with pytest.raises(LeaseLost):
        await store.finish(stranger, RunStatus.DONE, 1, None)
    await store.checkpoint(lease, memo(0, "a", output=1))
    await store.finish(lease, RunStatus.DONE, 1, None)
    run = await store.get_run(lease.run_id)
    assert run is not None and run.status is RunStatus.DONE and run.output == 1
    assert await store.claim(lease.run_id, "w2", LEASE) is None  # terminal


async def test_an_expired_lease_can_be_claimed_and_the_old_owner_is_refused(
    store: Store,
) -> None:
    run = new_run()
    await store.create_run(run)
    old = await store.claim(run.id, "w1", 0.05)
    assert old is not None
    await asyncio.sleep(0.1)  # let the lease expire (time passing is the subject here)
    new = await store.claim(run.id, "w2", LEASE)
    assert new is not None and new.run.claims == 2
    assert new.run.waiting_for == "recovery"  # taken from a lost attempt, as if recovered
    with pytest.raises(LeaseLost):
        await store.checkpoint(old.lease, memo(0, "a"))
    await store.checkpoint(new.lease, memo(0, "a", output="new"))
    claim_steps = (await store.detail(run.id)).steps  # type: ignore[union-attr]
    assert [s.output for s in claim_steps] == ["new"]


async def test_ok_memos_are_first_writer_wins_retrying_ones_advance(store: Store) -> None:
    lease = await started_and_claimed(store)
    await store.checkpoint(lease, memo(0, "a", StepStatus.RETRYING, attempts=1))
    await store.checkpoint(lease, memo(0, "a", StepStatus.OK, output="x", attempts=2))
    await store.checkpoint(lease, memo(0, "a", StepStatus.OK, output="y", attempts=3))
    steps = (await store.detail(lease.run_id)).steps  # type: ignore[union-attr]
    assert [(s.status, s.output, s.attempts) for s in steps] == [(StepStatus.OK, "x", 2)]


async def test_later_checkpoints_only_check_the_lease_and_stay_fenced(store: Store) -> None:
    lease = await started_and_claimed(store)
    claimed = await store.get_run(lease.run_id)
    assert claimed is not None and claimed.stalled_claims == 1
    await store.checkpoint(lease, memo(0, "a", output=1), renew=False)
    after = await store.get_run(lease.run_id)
    assert after is not None and after.lease_expires_at == claimed.lease_expires_at
    assert after.stalled_claims == 1  # only a renewing checkpoint marks progress
    await store.checkpoint(lease, memo(1, "b", output=2))
    renewed = await store.get_run(lease.run_id)
    assert renewed is not None and renewed.stalled_claims == 0
    assert renewed.lease_expires_at is not None and claimed.lease_expires_at is not None
    assert renewed.lease_expires_at >= claimed.lease_expires_at
    stranger = Lease(lease.run_id, uuid.uuid4(), "w2", LEASE)
    with pytest.raises(LeaseLost):
        await store.checkpoint(stranger, memo(2, "c"), renew=False)
    assert (await store.cancel(lease.run_id, "stop")).kind == "canceled"
    with pytest.raises(LeaseLost):
        await store.checkpoint(lease, memo(2, "c"), renew=False)
    steps = (await store.detail(lease.run_id)).steps  # type: ignore[union-attr]
    assert [(s.cursor_key, s.output) for s in steps] == [("a", 1), ("b", 2)]


async def test_a_retried_step_replaces_its_retrying_memo_in_a_later_checkpoint(
    store: Store,
) -> None:
    lease = await started_and_claimed(store)
    await store.checkpoint(lease, memo(0, "a", output=0))
    await store.checkpoint(lease, memo(1, "b", StepStatus.RETRYING, attempts=1), renew=False)
    await store.checkpoint(lease, memo(1, "b", output="x", attempts=2), renew=False)
    steps = (await store.detail(lease.run_id)).steps  # type: ignore[union-attr]
    assert [(s.status, s.output, s.attempts) for s in steps][1:] == [(StepStatus.OK, "x", 2)]


async def test_suspend_records_timers_status_and_the_earliest_wake(store: Store) -> None:
    lease = await started_and_claimed(store)
    soon = datetime.now(UTC) + timedelta(minutes=5)
    later = soon + timedelta(hours=1)
    plan = SuspendPlan(
        status=RunStatus.SLEEPING,
        reason="sleep",
        cursor_key="sleep",
        wake_at=later,
        waiting_for="timer:sleep",
        new_timers=(TimerRecord("sleep", later), TimerRecord("sleep#1", soon)),
    )
    await store.suspend(lease, plan)
    with pytest.raises(LeaseLost):
        await store.checkpoint(lease, memo(0, "a"))  # the lease ended with the suspension
    claim = await store.claim(lease.run_id, "w1", LEASE)
    assert claim is not None and claim.run.stalled_claims == 1
    assert set(claim.timers) == {"sleep", "sleep#1"}
    await store.suspend(claim.lease, dataclasses.replace(plan, wake_at=soon))
    wake = await store.pending_wake(lease.run_id)
    # The start job is still queued (never executed here): it is due now and wins.
    assert wake is not None and wake.scheduled_at is None


async def test_signals_are_buffered_fifo_and_deduplicated_for_life(store: Store) -> None:
    run = new_run()
    await store.create_run(run)
    assert (
        await store.deliver_signal(uuid.uuid4(), "go", {}, None, max_signals=100)
    ).kind == "not_found"
    a = await store.deliver_signal(run.id, "go", {"i": 1}, "k1", max_signals=100)
    b = await store.deliver_signal(run.id, "go", {"i": 2}, "k2", max_signals=100)
    assert (a.kind, b.kind) == ("buffered", "buffered")
    assert (
        await store.deliver_signal(run.id, "go", {"i": 1}, "k1", max_signals=100)
    ).kind == "duplicate"
    claim = await store.claim(run.id, "w", LEASE)
    assert claim is not None and [s.payload["i"] for s in claim.inbox] == [1, 2]
    await store.checkpoint(
        claim.lease,
        StepRecord(0, "signal:go", StepKind.SIGNAL, "go", StepStatus.OK, {"i": 1}),
        consume_signal=claim.inbox[0].id,
    )
    await store.suspend(
        claim.lease,
        SuspendPlan(RunStatus.AWAITING_SIGNAL, "signal", "signal:go#1", None, "signal:go"),
    )
    assert (
        await store.deliver_signal(run.id, "go", {"i": 1}, "k1", max_signals=100)
    ).kind == "duplicate"
    assert (
        await store.deliver_signal(run.id, "go", {"i": 3}, None, max_signals=100)
    ).kind == "delivered"
    assert (
        await store.deliver_signal(run.id, "other", {}, None, max_signals=100)
    ).kind == "buffered"
    again = await store.claim(run.id, "w", LEASE)
    assert again is not None and [s.payload for s in again.inbox] == [{"i": 2}, {"i": 3}, {}]
    await store.finish(again.lease, RunStatus.DONE, None, None)
    assert (await store.deliver_signal(run.id, "go", {}, None, max_signals=100)).kind == "closed"
    # A webhook retried after the run finished: a delivered key is a duplicate, a new one closed.
    assert (await store.deliver_signal(run.id, "go", {}, "k2", max_signals=100)).kind == (
        "duplicate"
    )
    assert (await store.deliver_signal(run.id, "go", {}, "k9", max_signals=100)).kind == "closed"


async def test_a_signal_keeps_the_meta_it_was_sent_with(store: Store) -> None:
    run = new_run()
    await store.create_run(run)
    sent = {"trace": {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}}
    await store.deliver_signal(run.id, "go", {}, None, max_signals=100, meta=sent)
    await store.deliver_signal(run.id, "go", {}, None, max_signals=100)
    claim = await store.claim(run.id, "w", LEASE)
    assert claim is not None and [s.meta for s in claim.inbox] == [sent, {}]


async def test_signals_per_run_are_capped_and_duplicates_still_answered(store: Store) -> None:
    run = new_run()
    await store.create_run(run)
    for i in range(3):
        await store.deliver_signal(run.id, "go", {"i": i}, f"k{i}", max_signals=3)
    with pytest.raises(SignalLimitExceeded) as info:
        await store.deliver_signal(run.id, "go", {"i": 3}, "k3", max_signals=3)
    assert info.value.error_code == "SIGNAL_LIMIT_EXCEEDED"
    again = await store.deliver_signal(run.id, "go", {"i": 0}, "k0", max_signals=3)
    assert again.kind == "duplicate"
    detail = await store.detail(run.id)
    assert detail is not None and len(detail.signals) == 3


@pytest.mark.parametrize(
    "bad",
    [
        {"text": "a\x00b"},
        {"text": "lone \ud800"},
        {"k\x00": 1},
    ],
    ids=["nul", "surrogate", "nul-key"],
)
async def test_data_postgres_refuses_is_data_rejected_on_both_stores(
    store: Store, bad: dict[str, object]
) -> None:
    """Below the codec, both stores refuse the same data with DATA_REJECTED (never
    DATABASE_UNAVAILABLE), and write nothing."""
    with pytest.raises(DataRejected):
        await store.create_run(new_run(input=bad))
    lease = await started_and_claimed(store)
    with pytest.raises(DataRejected):
        await store.checkpoint(lease, memo(0, "s", output=bad))
    with pytest.raises(DataRejected):
        await store.deliver_signal(lease.run_id, "go", bad, None, max_signals=100)
    with pytest.raises(DataRejected):
        await store.finish(lease, RunStatus.DONE, bad, None)
    detail = await store.detail(lease.run_id)
    assert detail is not None
    assert (detail.run.status, detail.steps, detail.signals) == (RunStatus.RUNNING, (), ())
    await store.checkpoint(lease, memo(0, "s", output={"text": "fine"}))  # the lease still holds


async def test_children_spawn_once_and_wake_their_parent(store: Store) -> None:
    parent = await started_and_claimed(store)
    child = new_run(parent_run_id=parent.run_id, parent_cursor_key="invoke:c@1")
    assert await store.spawn_child(parent, child) is True
    assert await store.spawn_child(parent, child) is False
    with pytest.raises(LeaseLost):
        await store.spawn_child(Lease(parent.run_id, uuid.uuid4(), "x", LEASE), new_run())
    await store.suspend(
        parent,
        SuspendPlan(RunStatus.AWAITING_CHILD, "child", "invoke:c@1", None, f"child:{child.id}"),
    )
    child_claim = await store.claim(child.id, "w", LEASE)
    assert child_claim is not None
    await store.finish(child_claim.lease, RunStatus.DONE, 42, None)
    assert await store.pending_wake(parent.run_id) is not None
    claim = await store.claim(parent.run_id, "w", LEASE)
    assert claim is not None
    assert [(k, c.status, c.output) for k, c in claim.children.items()] == [
        ("invoke:c@1", RunStatus.DONE, 42)
    ]


async def test_cancel_cascades_except_detached_and_fences_the_attempt(store: Store) -> None:
    parent = await started_and_claimed(store)
    attached = new_run(parent_run_id=parent.run_id, parent_cursor_key="invoke:c@1")
    detached = new_run(
        parent_run_id=parent.run_id, parent_cursor_key="invoke:c@1#1", meta={"detached": True}
    )
    await store.spawn_child(parent, attached)
    await store.spawn_child(parent, detached)
    assert (await store.cancel(uuid.uuid4(), "x")).kind == "not_found"
    assert (await store.cancel(parent.run_id, "stop")).kind == "canceled"
    with pytest.raises(LeaseLost):
        await store.checkpoint(parent, memo(0, "a"))
    statuses = {
        rid: (await store.get_run(rid)).status  # type: ignore[union-attr]
        for rid in (parent.run_id, attached.id, detached.id)
    }
    assert statuses == {
        parent.run_id: RunStatus.CANCELED,
        attached.id: RunStatus.CANCELED,
        detached.id: RunStatus.PENDING,
    }
    assert (await store.cancel(parent.run_id, "again")).kind == "already_terminal"
    run = await store.get_run(parent.run_id)
    assert run is not None and run.error == {"code": "RUN_CANCELED", "message": "stop"}


async def test_retry_cuts_at_the_failed_step_and_unconsumes_its_signal(store: Store) -> None:
    lease = await started_and_claimed(store)
    await store.deliver_signal(lease.run_id, "go", {"i": 1}, None, max_signals=100)
    assert await store.claim(lease.run_id, "w", LEASE) is None  # its lease is live
    await store.checkpoint(lease, memo(0, "a", output=1))
    await store.finish(lease, RunStatus.FAILED, None, {"code": "X", "message": "x"})
    assert (await store.retry(uuid.uuid4())).kind == "missing"
    assert (await store.retry(lease.run_id)).kind == "queued"
    assert (await store.retry(lease.run_id)).kind == "not_failed"
    claim = await store.claim(lease.run_id, "w", LEASE)
    assert claim is not None and [s.cursor_key for s in claim.history] == ["a"]
    sig = claim.inbox[0]
    await store.checkpoint(
        claim.lease,
        StepRecord(1, "signal:go", StepKind.SIGNAL, "go", StepStatus.OK, {"i": 1}),
        consume_signal=sig.id,
    )
    await store.checkpoint(claim.lease, memo(2, "b", StepStatus.FAILED, error={"code": "E"}))
    await store.finish(claim.lease, RunStatus.FAILED, None, {"code": "E", "message": "e"})
    assert (await store.retry(lease.run_id)).kind == "queued"
    again = await store.claim(lease.run_id, "w", LEASE)
    assert again is not None
    assert [s.cursor_key for s in again.history] == ["a", "signal:go"]
    assert again.inbox == []  # consumed before the cut: stays consumed


async def test_reconciler_queries_find_exactly_the_stranded_runs(store: Store) -> None:
    due = new_run()
    delayed = new_run(wake_at=datetime.now(UTC) + timedelta(hours=1))
    for run in (due, delayed):
        await store.create_run(run)
    lease = await started_and_claimed(store)
    expired = await store.claim(due.id, "dead", 0.01)
    assert expired is not None
    await asyncio.sleep(0.05)
    assert await store.recover_expired(10) == 1
    recovered = await store.get_run(due.id)
    assert recovered is not None and recovered.status is RunStatus.RETRYING
    assert await store.pending_wake(due.id) is not None
    # Nothing is stranded: every live run has a wake-up or a live lease.
    assert await store.rewake_stranded(10) == 0
    await store.suspend(
        lease,
        SuspendPlan(
            RunStatus.SLEEPING,
            "sleep",
            "sleep",
            datetime.now(UTC) - timedelta(seconds=1),
            "timer:sleep",
            (TimerRecord("sleep", datetime.now(UTC) - timedelta(seconds=1)),),
        ),
    )
    assert await store.recover_expired(10) == 0
    assert await store.pending_wake(delayed.id) is not None  # the delay keeps its job


async def test_list_runs_is_newest_first_and_keyset_paginated(store: Store) -> None:
    ids = []
    for i in range(5):
        run = new_run(name="a" if i % 2 == 0 else "b", tags=("t",) if i < 2 else ())
        await store.create_run(run)
        ids.append(run.id)
    page = await store.list_runs(name=None, statuses=[], tag=None, limit=2, before_seq=None)
    assert [r.id for r in page] == ids[::-1][:2]
    rest = await store.list_runs(
        name=None, statuses=[], tag=None, limit=10, before_seq=page[-1].seq
    )
    assert [r.id for r in rest] == ids[::-1][2:]
    only_a = await store.list_runs(
        name="a", statuses=[RunStatus.PENDING], tag=None, limit=10, before_seq=None
    )
    assert [r.id for r in only_a] == [ids[4], ids[2], ids[0]]
    tagged = await store.list_runs(name=None, statuses=[], tag="t", limit=10, before_seq=None)
    assert [r.id for r in tagged] == [ids[1], ids[0]]


async def test_a_taken_run_id_is_refused_and_a_cancel_reason_is_checked_when_written(
    store: Store,
) -> None:
    run = new_run()
    await store.create_run(run)
    with pytest.raises(DataRejected):
        await store.create_run(new_run(id=run.id, name="other"))
    assert (await store.get_run(run.id)).name == "f"  # type: ignore[union-attr]
    bad = "stop\x00"
    assert (await store.cancel(uuid.uuid4(), bad)).kind == "not_found"
    with pytest.raises(DataRejected):
        await store.cancel(run.id, bad)
    assert (await store.get_run(run.id)).status is RunStatus.PENDING  # type: ignore[union-attr]
    assert (await store.cancel(run.id, "stop")).kind == "canceled"
    assert (await store.cancel(run.id, bad)).kind == "already_terminal"


async def test_list_runs_finds_a_run_by_its_idempotency_key(store: Store) -> None:
    first = new_run(idempotency_key="order-1", tags=("customer:7",))
    await store.create_run(first)
    await store.create_run(new_run(idempotency_key="order-2"))
    await store.create_run(new_run(name="other", idempotency_key="order-1"))

    def query(**kw: object) -> dict[str, object]:
        base: dict[str, object] = {
            "name": "f",
            "statuses": (),
            "tag": None,
            "limit": 10,
            "before_seq": None,
        }
        return {**base, **kw}

    found = await store.list_runs(**query(idempotency_key="order-1"))  # type: ignore[arg-type]
    assert [r.id for r in found] == [first.id]
    both = await store.list_runs(**query(name=None, idempotency_key="order-1"))  # type: ignore[arg-type]
    assert len(both) == 2
    none = await store.list_runs(**query(idempotency_key="order-9"))  # type: ignore[arg-type]
    assert none == []
