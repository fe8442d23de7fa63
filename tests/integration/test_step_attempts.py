"""``step_attempt()`` (a builder step's ``step.attempt``) and the memo's ``attempts`` count the
attempts lost to a crash or an outage: the step(s) a lost attempt may have begun run again with
the next attempt number, so user code can tell it may be a duplicate. On PostgreSQL, with the
lost attempt played by a claim whose lease expires at once (and what it wrote before dying)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from iterflow import Engine, FlowContext, step_attempt
from iterflow.core import decisions
from iterflow.core.models import StepKind, StepRecord, StepStatus
from iterflow.core.replay import Call
from iterflow.core.retry import RetryPolicy
from iterflow.runtime.worker import AttemptOutcome
from iterflow.store.base import Lease
from tests.integration.flows import eventually, sql

#: The attempt numbers each step saw, by run and label.
SEEN: defaultdict[tuple[str, str], list[int]] = defaultdict(list)


class Job(BaseModel):
    id: str
    fail_below: int = 0  # the step raises while its attempt is below this


def work(job: Job, label: str) -> str:
    attempt = step_attempt()
    SEEN[job.id, label].append(attempt)
    if attempt < job.fail_below:
        raise RuntimeError(f"try {attempt} failed")
    return label


async def two_steps(ctx: FlowContext, job: Job) -> list[str]:
    return [
        await ctx.step("a", work, job, "a", retries=3, backoff="10ms"),
        await ctx.step("b", work, job, "b"),
    ]


def _job() -> Job:
    return Job(id=uuid.uuid4().hex)


async def _die(engine: Engine, run_id: uuid.UUID) -> Lease:
    """A worker claims the run and dies at once: its lease expires immediately."""
    claim = await engine.store.claim(run_id, "dead-worker", 0.001)
    assert claim is not None
    return claim.lease


async def _recover(engine: Engine) -> None:
    """The reconciler takes the run back from the dead worker (``waiting_for`` = recovery)."""

    async def recovered() -> bool:
        return (await engine.reconcile()).expired_leases == 1

    await eventually(recovered, what="expired lease recovery", timeout=10)


def _memo(position: int, label: str, status: StepStatus, attempts: int) -> StepRecord:
    return StepRecord(
        position=position,
        cursor_key=label,
        kind=StepKind.STEP,
        label=label,
        status=status,
        output=label if status is StepStatus.OK else None,
        error=None if status is StepStatus.OK else {"code": "STEP_FAILED", "message": "x"},
        attempts=attempts,
        started_at=datetime.now(UTC),
    )


async def _attempts(engine: Engine, run_id: uuid.UUID) -> dict[str, int]:
    return {s.cursor_key: s.attempts for s in (await engine.status(run_id)).steps}


async def test_a_step_re_run_after_a_crash_sees_attempt_two(engine: Engine) -> None:
    flow = engine.flow("crash-before-progress", input=Job, output=list[str])(two_steps)
    job = _job()
    run = await flow.start(job)
    await _die(engine, run.run_id)  # died in step a (or before it began: counted the same)
    await _recover(engine)
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.DONE
    # a was where the run stopped; b began after this attempt's first checkpoint: no doubt
    assert (SEEN[job.id, "a"], SEEN[job.id, "b"]) == ([2], [1])
    assert await _attempts(engine, run.run_id) == {"a": 2, "b": 1}


async def test_a_crash_after_progress_counts_for_the_next_step(engine: Engine) -> None:
    flow = engine.flow("crash-after-progress", input=Job, output=list[str])(two_steps)
    job = _job()
    run = await flow.start(job)
    lease = await _die(engine, run.run_id)
    await engine.store.checkpoint(lease, _memo(0, "a", StepStatus.OK, 1))  # then died in b
    await _recover(engine)
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.DONE
    assert (SEEN[job.id, "a"], SEEN[job.id, "b"]) == ([], [2])
    assert await _attempts(engine, run.run_id) == {"a": 1, "b": 2}


async def test_a_worker_taking_an_expired_lease_itself_counts_the_lost_attempt(
    engine: Engine,
) -> None:
    flow = engine.flow("takeover", input=Job, output=list[str])(two_steps)
    job = _job()
    run = await flow.start(job)
    await _die(engine, run.run_id)

    async def expired() -> bool:
        query = "SELECT lease_expires_at < now() FROM iterflow.runs WHERE id = %s"
        return bool(sql(engine.database_url, query, run.run_id)[0][0])

    await eventually(expired, what="lease expiry", timeout=10)
    # no reconciler sweep in between: this worker's claim takes the run from the dead one
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.DONE
    assert (SEEN[job.id, "a"], SEEN[job.id, "b"]) == ([2], [1])


async def test_every_claim_lost_without_progress_counts(engine: Engine) -> None:
    flow = engine.flow("crash-twice", input=Job, output=list[str])(two_steps)
    job = _job()
    run = await flow.start(job)
    for _ in range(2):
        await _die(engine, run.run_id)
        await _recover(engine)
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.DONE
    assert SEEN[job.id, "a"] == [3]
    assert await _attempts(engine, run.run_id) == {"a": 3, "b": 1}


async def test_inline_retries_then_a_crash_continue_the_count(engine: Engine) -> None:
    flow = engine.flow("retries-then-crash", input=Job, output=list[str])(two_steps)
    job = Job(id=uuid.uuid4().hex, fail_below=5)  # a fails at every try it is allowed
    run = await flow.start(job)
    lease = await _die(engine, run.run_id)
    # tries 1 and 2 failed and were recorded; try 3 was running when the worker died
    await engine.store.checkpoint(lease, _memo(0, "a", StepStatus.RETRYING, 1))
    await engine.store.checkpoint(lease, _memo(0, "a", StepStatus.RETRYING, 2), renew=False)
    await _recover(engine)
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.FAILED
    # the lost try 3 counts against retries=3: try 4 is the last
    assert SEEN[job.id, "a"] == [4]
    detail = await engine.status(run.run_id)
    assert [(s.status, s.attempts) for s in detail.steps] == [(StepStatus.FAILED, 4)]


async def test_a_crash_after_a_long_backoff_counts_the_lost_try_only(engine: Engine) -> None:
    flow = engine.flow("backoff-then-crash", input=Job, output=list[str])(two_steps)
    job = _job()
    run = await flow.start(job)
    claim = await engine.store.claim(run.run_id, "first-worker", 30)
    assert claim is not None
    # try 1 failed; its backoff (due now) suspended the run cleanly
    await engine.store.checkpoint(claim.lease, _memo(0, "a", StepStatus.RETRYING, 1))
    call = Call(0, StepKind.STEP, "a", "a")
    policy = RetryPolicy.of(3, "1h")
    later = decisions.decide_retry(
        call, policy, 1, True, 0.0, claim.db_now - timedelta(hours=2), timedelta(seconds=5)
    )
    assert isinstance(later, decisions.RetryLater)
    await engine.store.suspend(claim.lease, later.plan)
    await _die(engine, run.run_id)  # try 2 was running when this worker died
    await _recover(engine)
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.DONE
    assert SEEN[job.id, "a"] == [3]
    assert await _attempts(engine, run.run_id) == {"a": 3, "b": 1}


async def test_a_storage_abort_counts_as_a_lost_attempt(engine: Engine) -> None:
    flow = engine.flow("storage-abort", input=Job, output=list[str])(two_steps)
    job = _job()
    run = await flow.start(job)
    claim = await engine.store.claim(run.run_id, "other-worker", 30)
    assert claim is not None
    # the attempt ran a, its checkpoint failed (outage), it released the run for a retry soon
    await engine.store.suspend(claim.lease, decisions.outage_plan(claim.db_now))
    assert await engine.worker.advance(run.run_id) == AttemptOutcome.DONE
    assert (SEEN[job.id, "a"], SEEN[job.id, "b"]) == ([2], [1])
