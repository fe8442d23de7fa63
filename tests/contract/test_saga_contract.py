"""Sagas on both stores: ``cancel(compensate=True)`` (the run set ``pending`` with the request,
its attempt fenced, its children canceled), the terminal writes after compensations (``canceled``
and ``compensation_failed`` carry the compensation record), and what ``retry``/``resume`` do
with a compensated history."""

from __future__ import annotations

from typing import Any

import pytest

from iterflow.core.decisions import cancel_request, child_run_id
from iterflow.core.errors import LeaseLost
from iterflow.core.keys import compensation_key
from iterflow.core.models import RunStatus, StepKind, StepRecord, StepStatus
from iterflow.store.base import Lease, Store
from tests.contract.support import LEASE, Timeline, memo, new_run, started_and_claimed

ERROR = {"code": "E_X", "message": "boom"}


def _undo(position: int, step: str, status: StepStatus = StepStatus.OK, **kw: Any) -> StepRecord:
    return StepRecord(position, compensation_key(step), StepKind.COMPENSATE, step, status, **kw)


def _with(record: dict[str, Any], error: dict[str, Any] = ERROR) -> dict[str, Any]:
    return {**error, "details": {"compensation": record}}


async def _claim(store: Store, lease: Lease) -> Lease:
    claim = await store.claim(lease.run_id, "w2", LEASE)
    assert claim is not None
    return claim.lease


async def test_cancel_with_compensate_sets_the_run_pending_fenced_and_cancels_its_children(
    store: Store,
) -> None:
    lease = await started_and_claimed(store)
    run_id = lease.run_id
    key = "invoke:c@1"
    child = new_run(id=child_run_id(run_id, key), name="c", parent_run_id=run_id)
    assert await store.spawn_child(lease, child)
    await store.checkpoint(lease, memo(0, "a", output=1))
    timeline = Timeline(store, run_id)
    await timeline.new()

    result = await store.cancel(run_id, "stop", compensate=True)

    assert (result.kind, result.status) == ("canceling", RunStatus.PENDING)
    assert await timeline.new() == [("cancel_requested", None, {"reason": "stop"})]
    run = await store.get_run(run_id)
    assert run is not None and run.status is RunStatus.PENDING
    assert cancel_request(run.meta) is not None
    assert await store.pending_wake(run_id) is not None
    canceled = await store.get_run(child.id)
    assert canceled is not None and canceled.status is RunStatus.CANCELED
    with pytest.raises(LeaseLost):  # the attempt in flight is fenced
        await store.checkpoint(lease, memo(1, "b", output=2))
    claim = await store.claim(run_id, "w2", LEASE)
    assert claim is not None and cancel_request(claim.run.meta) is not None
    assert [s.cursor_key for s in claim.history] == ["a"]


async def test_only_an_attempt_that_compensated_writes_canceled_or_compensation_failed(
    store: Store,
) -> None:
    lease = await started_and_claimed(store)
    with pytest.raises(ValueError):  # a plain cancel is cancel()'s to write
        await store.finish(lease, RunStatus.CANCELED, None, ERROR)
    with pytest.raises(ValueError):
        await store.finish(lease, RunStatus.COMPENSATION_FAILED, None, ERROR)
    record = {"status": "compensated", "steps": ["compensate:a"]}
    canceled = {"code": "RUN_CANCELED", "message": "stop", "details": {"compensation": record}}
    timeline = Timeline(store, lease.run_id)
    await timeline.new()

    await store.finish(lease, RunStatus.CANCELED, None, canceled)

    reason = {"reason": "stop", "root": str(lease.run_id), "compensation": record}
    assert await timeline.new() == [("canceled", None, reason)]
    run = await store.get_run(lease.run_id)
    assert run is not None and (run.status, run.error) == (RunStatus.CANCELED, canceled)

    failing = await started_and_claimed(store)
    broken = {"status": "failed", "steps": [], "failed": {"step": "compensate:a", "error": ERROR}}
    timeline = Timeline(store, failing.run_id)
    await timeline.new()
    await store.finish(failing, RunStatus.COMPENSATION_FAILED, None, _with(broken))
    assert await timeline.new() == [
        ("compensation_failed", None, {"code": "E_X", "compensation": broken})
    ]
    failed = await started_and_claimed(store)
    done = {"status": "compensated", "steps": []}
    timeline = Timeline(store, failed.run_id)
    await timeline.new()
    await store.finish(failed, RunStatus.FAILED, None, _with(done))
    assert await timeline.new() == [("failed", None, {"code": "E_X", "compensation": done})]
    for finished in (lease, failing, failed):  # terminal: cancel changes nothing
        assert (await store.cancel(finished.run_id, "x", compensate=True)).kind == (
            "already_terminal"
        )


async def test_retry_of_compensation_failed_resumes_from_the_failed_compensation(
    store: Store,
) -> None:
    lease = await started_and_claimed(store)
    await store.checkpoint(lease, memo(0, "a", output=1))
    await store.checkpoint(lease, memo(1, "b", output=2))
    await store.checkpoint(lease, memo(2, "c", StepStatus.FAILED, error=ERROR), renew=False)
    await store.checkpoint(lease, _undo(3, "b"))
    await store.checkpoint(lease, _undo(4, "a", StepStatus.FAILED, error=ERROR), renew=False)
    broken = {"status": "failed", "steps": ["compensate:b"], "failed": {"step": "x"}}
    await store.finish(lease, RunStatus.COMPENSATION_FAILED, None, _with(broken))
    timeline = Timeline(store, lease.run_id)
    await timeline.new()

    assert (await store.retry(lease.run_id)).kind == "queued"

    assert await timeline.new() == [("retried", None, {"from": 4})]
    detail = await store.detail(lease.run_id)
    assert detail is not None and detail.run.status is RunStatus.PENDING
    assert [s.cursor_key for s in detail.steps] == ["a", "b", "c", "compensate:b"]
    assert (await store.resume(lease.run_id)).kind == "not_failed"


async def test_retry_of_a_compensated_failure_redoes_from_the_earliest_undone_step(
    store: Store,
) -> None:
    lease = await started_and_claimed(store)
    await store.checkpoint(lease, memo(0, "plain", output=0))
    await store.checkpoint(lease, memo(1, "a", output=1))
    await store.checkpoint(lease, memo(2, "b", output=2))
    await store.checkpoint(lease, memo(3, "c", StepStatus.FAILED, error=ERROR), renew=False)
    await store.checkpoint(lease, _undo(4, "b"))
    await store.checkpoint(lease, _undo(5, "a"))
    done = {"status": "compensated", "steps": ["compensate:b", "compensate:a"]}
    await store.finish(lease, RunStatus.FAILED, None, _with(done))
    timeline = Timeline(store, lease.run_id)
    await timeline.new()

    assert (await store.retry(lease.run_id)).kind == "queued"

    assert await timeline.new() == [("retried", None, {"from": 1})]
    detail = await store.detail(lease.run_id)
    assert detail is not None and [s.cursor_key for s in detail.steps] == ["plain"]


async def test_a_run_canceled_after_its_compensations_cannot_be_resumed(store: Store) -> None:
    lease = await started_and_claimed(store)
    await store.checkpoint(lease, memo(0, "a", output=1))
    assert (await store.cancel(lease.run_id, "stop", compensate=True)).kind == "canceling"
    lease = await _claim(store, lease)
    await store.checkpoint(lease, _undo(1, "a"))
    record = {"status": "compensated", "steps": ["compensate:a"]}
    error = {"code": "RUN_CANCELED", "message": "stop", "details": {"compensation": record}}
    await store.finish(lease, RunStatus.CANCELED, None, error)

    assert (await store.resume(lease.run_id)).kind == "not_failed"
    assert (await store.retry(lease.run_id)).kind == "not_failed"
    run = await store.get_run(lease.run_id)
    assert run is not None and run.status is RunStatus.CANCELED

    plain = await started_and_claimed(store)  # without compensations: resumable as before
    await store.checkpoint(plain, memo(0, "a", output=1))
    assert (await store.cancel(plain.run_id, "stop")).kind == "canceled"
    assert (await store.resume(plain.run_id)).kind == "queued"
