"""The fork cut and a resume's children (``iterflow.core.decisions``), and what a bulk dry run
predicts (``iterflow.runtime.bulk.would_do``): pure, no database."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import pytest

from iterflow.core import decisions as d
from iterflow.core.errors import ForkStepUnknown
from iterflow.core.models import ChildRecord, RunRecord, RunStatus, StepKind, StepRecord, StepStatus
from iterflow.runtime.bulk import would_do

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def memo(position: int, key: str, status: StepStatus = StepStatus.OK) -> StepRecord:
    return StepRecord(position, key, StepKind.STEP, key, status)


STEPS = [
    memo(0, "a"),
    memo(1, "b", StepStatus.FAILED),
    memo(2, "c"),
    memo(3, "d", StepStatus.FAILED),
]


def test_fork_keeps_the_rows_before_the_key_with_the_same_cut_as_retry() -> None:
    fork = d.fork_cut(STEPS, [], [], [], "c")
    assert fork.kept == (0, 1)  # a caught failure before the key is kept as it is
    assert fork.cut == d.cut_at(2, STEPS, [], [], [])
    assert fork.from_step == "c"


def test_fork_without_a_key_replays_from_where_retry_would() -> None:
    fork = d.fork_cut(STEPS, [], [], [], None)
    assert fork.cut == d.retry_cut(STEPS, [], [], [])
    assert fork.kept == (0, 1, 2)
    assert d.fork_cut([memo(0, "a")], [], [], [], None).kept == (0,)  # nothing failed: all


def test_fork_refuses_a_key_the_run_never_recorded() -> None:
    with pytest.raises(ForkStepUnknown, match="recorded keys, in order: a, b, c, d"):
        d.fork_cut(list(reversed(STEPS)), [], [], [], "e")
    with pytest.raises(ForkStepUnknown, match="in order: none"):
        d.fork_cut([], [], [], [], "a")


def test_the_forked_run_copies_the_source_and_links_it() -> None:
    source = RunRecord(
        id=uuid.uuid4(), name="f", version=3, status=RunStatus.FAILED, input={"n": 1},
        output=None, error={"code": "E"}, idempotency_key="k", parent_run_id=uuid.uuid4(),
        parent_cursor_key="invoke:f@3", tags=("t",), priority=5, lease_owner=None,
        lease_expires_at=None, claims=2, stalled_claims=0, waiting_for=None, wake_at=None,
        created_at=NOW, updated_at=NOW, started_at=NOW, finished_at=NOW, seq=1, meta={"x": 1},
    )  # fmt: skip
    new_id = uuid.uuid4()
    new = d.forked_run(source, new_id, d.fork_cut(STEPS, [], [], [], "b"))
    assert (new.id, new.name, new.version, new.input) == (new_id, "f", 3, {"n": 1})
    assert (new.tags, new.priority) == (("t",), 5)
    assert new.parent_run_id is None and new.idempotency_key is None
    assert new.meta == {"forked_from": str(source.id), "fork_step": "b"}

    for status, action, resume, expected in [
        (RunStatus.FAILED, "retry", False, "would_retry"),
        (RunStatus.PARKED, "retry", False, "would_retry"),
        (RunStatus.CANCELED, "retry", False, "skipped"),
        (RunStatus.CANCELED, "retry", True, "would_resume"),
        (RunStatus.DONE, "retry", True, "skipped"),
        (RunStatus.SLEEPING, "cancel", False, "would_cancel"),
        (RunStatus.FAILED, "cancel", False, "skipped"),
    ]:
        run = dataclasses.replace(source, status=status)
        assert would_do(action, run, resume=resume) == expected  # type: ignore[arg-type]


def test_a_resume_brings_back_the_canceled_children_it_still_awaits() -> None:
    awaited, recorded, done, failed = (uuid.uuid4() for _ in range(4))
    steps = [memo(0, "invoke:k@1", StepStatus.FAILED)]  # its cancellation is recorded already
    children = [
        ChildRecord(recorded, "invoke:k@1", RunStatus.CANCELED),
        ChildRecord(awaited, "invoke:k@1#1", RunStatus.CANCELED),
        ChildRecord(done, "invoke:k@1#2", RunStatus.DONE),
        ChildRecord(failed, "invoke:k@1#3", RunStatus.FAILED),
    ]
    assert d.resume_children(steps, children) == (awaited,)
