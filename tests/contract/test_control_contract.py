"""``fork``, ``resume`` (a canceled run) and the worker registry, the same on both stores: the rows
they copy or keep, the events they write, their wake-ups, and what they refuse."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from iterflow.core.decisions import child_run_id
from iterflow.core.errors import ForkStepUnknown
from iterflow.core.models import (
    NewRun,
    RunStatus,
    StepStatus,
    SuspendPlan,
    TimerRecord,
    WorkerInfo,
)
from iterflow.store.base import Store, WorkerStore
from tests.contract.support import Timeline, memo, started_and_claimed


async def _failed_run(store: Store) -> uuid.UUID:
    """A failed run with memos a (ok), b (ok), c (failed), tagged, priority 3."""
    lease = await started_and_claimed(store, tags=("t1", "t2"), priority=3)
    await store.checkpoint(lease, memo(0, "a", output=1))
    await store.checkpoint(lease, memo(1, "b", output=2), renew=False)
    await store.checkpoint(lease, memo(2, "c", StepStatus.FAILED, error={"code": "E"}), renew=False)
    await store.finish(lease, RunStatus.FAILED, None, {"code": "E", "message": "boom"})
    return lease.run_id


async def test_fork_copies_the_memos_before_the_step_and_leaves_the_source(store: Store) -> None:
    source = await _failed_run(store)
    before = await store.detail(source)
    new_id = uuid.uuid4()

    result = await store.fork(source, new_id, "b")

    assert result is not None and result.run_id == new_id and result.created
    assert result.status is RunStatus.PENDING
    forked = await store.detail(new_id)
    assert forked is not None
    run = forked.run
    assert (run.name, run.version, run.input) == ("f", 1, {"n": 1})
    assert run.tags == ("t1", "t2") and run.priority == 3 and run.status is RunStatus.PENDING
    assert run.parent_run_id is None and run.idempotency_key is None
    assert run.meta == {"forked_from": str(source), "fork_step": "b"}
    assert [(s.position, s.cursor_key, s.output) for s in forked.steps] == [(0, "a", 1)]
    assert [(e.type, e.data) for e in forked.events][1:] == [
        ("forked", {"source": str(source), "from_step": "b", "from": 1})
    ]
    assert forked.events[0].type == "started"
    assert await store.pending_wake(new_id) is not None
    assert await store.detail(source) == before  # the source is untouched


async def test_fork_without_a_step_uses_the_retry_cut(store: Store) -> None:
    source = await _failed_run(store)
    new_id = uuid.uuid4()
    assert await store.fork(source, new_id, None) is not None
    forked = await store.detail(new_id)
    assert forked is not None
    assert [s.cursor_key for s in forked.steps] == ["a", "b"]  # c failed: replayed from there
    assert forked.events[-1].data == {"source": str(source), "from_step": None, "from": 2}


async def test_fork_refuses_an_unknown_step_and_writes_nothing(store: Store) -> None:
    source = await _failed_run(store)
    new_id = uuid.uuid4()
    with pytest.raises(ForkStepUnknown, match="a, b, c"):
        await store.fork(source, new_id, "zzz")
    assert await store.get_run(new_id) is None
    assert await store.fork(uuid.uuid4(), new_id, "a") is None  # a missing source
    assert await store.get_run(new_id) is None


async def test_resume_keeps_the_history_and_resumes_awaited_children(store: Store) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    lease = await started_and_claimed(store)
    run_id = lease.run_id
    await store.checkpoint(lease, memo(0, "a", output=1))
    child = NewRun(
        id=child_run_id(run_id, "invoke:kid"),
        name="kid",
        version=1,
        input={},
        parent_run_id=run_id,
        parent_cursor_key="invoke:kid",
        meta={"depth": 1, "detached": False},
    )
    assert await store.spawn_child(lease, child)
    plan = SuspendPlan(
        RunStatus.AWAITING_CHILD,
        "child",
        "invoke:kid",
        later,
        waiting_for=f"child:{child.id}",
        new_timers=(TimerRecord("sleep:nap", later),),
    )
    await store.suspend(lease, plan)
    assert (await store.cancel(run_id, "ops")).kind == "canceled"
    child_row = await store.get_run(child.id)
    assert child_row is not None and child_row.status is RunStatus.CANCELED
    timeline = Timeline(store, run_id)
    await timeline.new()

    result = await store.resume(run_id)

    assert result.kind == "queued" and result.status is RunStatus.PENDING
    assert await timeline.new() == [("resumed", None, {"children": 1})]
    detail = await store.detail(run_id)
    assert detail is not None
    run = detail.run
    assert run.status is RunStatus.PENDING and run.error is None and run.finished_at is None
    assert [s.cursor_key for s in detail.steps] == ["a"]
    assert [t.cursor_key for t in detail.timers] == ["sleep:nap"]  # pinned timers stay
    assert await store.pending_wake(run_id) is not None
    kid = await store.detail(child.id)
    assert kid is not None and kid.run.status is RunStatus.PENDING
    assert [e.type for e in kid.events][-1] == "resumed"
    assert await store.pending_wake(child.id) is not None


async def test_resume_changes_nothing_but_a_canceled_run(store: Store) -> None:
    failed = await _failed_run(store)
    before = await store.detail(failed)
    result = await store.resume(failed)
    assert (result.kind, result.status) == ("not_failed", RunStatus.FAILED)
    assert await store.detail(failed) == before
    assert (await store.resume(uuid.uuid4())).kind == "missing"


async def test_the_worker_registry(store: Store) -> None:
    registry: WorkerStore = store  # type: ignore[assignment]
    info = WorkerInfo("h:1:a", "h", 1, ("order@1", "order@2"), ("iterflow",))
    await registry.register_worker(info)
    await registry.register_worker(WorkerInfo("h:2:b", "h", 2, (), ("iterflow",)))
    [first, second] = await registry.list_workers(3600)
    assert (first.id, first.host, first.pid, first.flows, first.queues) == (
        "h:1:a",
        "h",
        1,
        ("order@1", "order@2"),
        ("iterflow",),
    )
    assert not first.stale and first.started_at <= first.heartbeat_at
    assert second.id == "h:2:b"
    assert all(w.stale for w in await registry.list_workers(-1))

    await registry.register_worker(info)  # a heartbeat: same row, later beat
    again = (await registry.list_workers(3600))[0]
    assert again.started_at == first.started_at and again.heartbeat_at >= first.heartbeat_at

    await registry.remove_worker("h:1:a")
    await registry.remove_worker("nobody")
    assert [w.id for w in await registry.list_workers(3600)] == ["h:2:b"]
