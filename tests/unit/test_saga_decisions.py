"""The pure decisions of sagas (``iterflow.core.decisions``): the compensation plan's order, how a
run ends after its compensations, the pending cancel request, the halting classification and
the retry cut of a compensated history."""

from __future__ import annotations

from iterflow.core import keys
from iterflow.core.decisions import (
    CompensationOutcome,
    EndCanceled,
    EndCompensated,
    EndFailed,
    EndHalted,
    EndReturned,
    Undo,
    cancel_meta,
    cancel_request,
    canceled_error,
    classify_attempt,
    compensated_end,
    compensation_plan,
    retry_cut,
    was_compensated,
)
from iterflow.core.errors import Halted, StepFailed
from iterflow.core.models import RunStatus, StepKind, StepRecord, StepStatus

ERROR = {"code": "STEP_FAILED", "message": "card declined", "details": {"attempts": 2}}


def _step(position: int, key: str, status: StepStatus = StepStatus.OK) -> StepRecord:
    return StepRecord(position, key, StepKind.STEP, key, status)


def _undo(position: int, step: str, status: StepStatus = StepStatus.OK) -> StepRecord:
    return StepRecord(position, keys.compensation_key(step), StepKind.COMPENSATE, step, status)


def test_compensations_run_in_reverse_history_order_once_each() -> None:
    # registered in completion order (a gather finished b before a): undone by position
    plan = compensation_plan([Undo("b", 2), Undo("a", 1), Undo("c#1", 4), Undo("b", 2)])
    assert [(u.step_key, u.cursor_key) for u in plan] == [
        ("c#1", "compensate:c#1"),
        ("b", "compensate:b"),
        ("a", "compensate:a"),
    ]
    assert compensation_plan([]) == ()
    assert keys.compensated_step("compensate:c#1") == "c#1"
    assert keys.compensated_step("c#1") is None


def test_a_run_ends_with_its_original_error_and_the_record() -> None:
    done = CompensationOutcome(("compensate:b", "compensate:a"))
    end = compensated_end(ERROR, done, canceled=False)
    record = {"status": "compensated", "steps": ["compensate:b", "compensate:a"]}
    assert end == EndCompensated(
        RunStatus.FAILED, {**ERROR, "details": {"attempts": 2, "compensation": record}}
    )
    assert end.outcome.value == "failed"

    canceled = compensated_end(canceled_error("stop"), done, canceled=True)
    assert canceled.status is RunStatus.CANCELED and canceled.outcome.value == "canceled"
    assert canceled.error == {
        "code": "RUN_CANCELED",
        "message": "stop",
        "details": {"compensation": record},
    }

    broken = CompensationOutcome(("compensate:b",), "compensate:a", {"code": "X"})
    for was_canceled in (False, True):
        end = compensated_end(ERROR, broken, canceled=was_canceled)
        assert end.status is RunStatus.COMPENSATION_FAILED
        assert end.error["details"]["compensation"] == {
            "status": "failed",
            "steps": ["compensate:b"],
            "failed": {"step": "compensate:a", "error": {"code": "X"}},
        }
    assert ERROR["details"] == {"attempts": 2}  # the original is not changed


def test_the_cancel_request_lives_in_meta() -> None:
    meta = {"depth": 0, **cancel_meta("customer left")}
    request = cancel_request(meta)
    assert request is not None and request.reason == "customer left"
    assert cancel_request({"depth": 0}) is None
    assert cancel_request({"cancel": "garbage"}) is None
    unreadable = cancel_request({"cancel": {"reason": 3}})
    assert unreadable is not None and unreadable.reason == "canceled"


def test_a_pending_cancel_request_turns_every_body_end_into_halting() -> None:
    failure = StepFailed("boom")
    assert classify_attempt(Halted(), Halted(), halting=True) == EndHalted()
    assert classify_attempt(None, None, halting=True) == EndHalted()  # returned meanwhile
    assert classify_attempt(failure, None, halting=True) == EndHalted()  # the failure replayed
    assert classify_attempt(ValueError("x"), Halted(), halting=True) == EndHalted()
    assert classify_attempt(None, None, halting=True, canceled=True) == EndCanceled()
    assert classify_attempt(None, None) == EndReturned()
    assert isinstance(classify_attempt(failure, None), EndFailed)


def test_retry_resumes_a_failed_compensation_or_redoes_the_undone_steps() -> None:
    history = [
        _step(0, "plain"),
        _step(1, "a"),
        _step(2, "b"),
        _step(3, "pay", StepStatus.FAILED),
        _undo(4, "b"),
        _undo(5, "a", StepStatus.FAILED),
    ]
    assert retry_cut(history, [], [], []).position == 5  # compensation_failed: from the failed one
    assert was_compensated(history) and not was_compensated(history[:4])

    history[5] = _undo(5, "a")
    assert retry_cut(history, [], [], []).position == 1  # compensated: redo from "a"
    # the body raised after its steps (no failed memo): the same
    assert retry_cut([*history[:3], *history[4:]], [], [], []).position == 1
    assert retry_cut(history[:4], [], [], []).position == 3  # no compensations: as before
