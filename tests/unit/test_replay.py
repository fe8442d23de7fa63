"""The replay cursor: cursor keys in call order and drift detection (the decisions a call leads
to are tested in test_decisions.py)."""

from __future__ import annotations

import pytest

from iterflow.core import keys, replay
from iterflow.core.errors import ReplayNonDeterministic
from iterflow.core.models import StepKind, StepRecord, StepStatus


def rec(pos: int, kind: StepKind, key: str, label: str | None = None) -> StepRecord:
    return StepRecord(pos, key, kind, label or key, StepStatus.OK, output=pos)


def test_keys_are_label_plus_occurrence_in_call_order() -> None:
    cur = replay.Cursor([])
    keys = [
        cur.next(StepKind.STEP, "charge")[0].cursor_key,
        cur.next(StepKind.STEP, "charge")[0].cursor_key,
        cur.next(StepKind.SLEEP, "cool-off")[0].cursor_key,
        cur.next(StepKind.SLEEP, "")[0].cursor_key,
        cur.next(StepKind.SIGNAL, "approve")[0].cursor_key,
        cur.next(StepKind.SIGNAL, "approve")[0].cursor_key,
        cur.next(StepKind.SIGNAL, "approve")[0].cursor_key,
    ]
    assert keys == [
        "charge",
        "charge#1",
        "sleep:cool-off",
        "sleep",
        "signal:approve",
        "signal:approve#1",
        "signal:approve#2",
    ]


def test_matching_history_returns_memos_then_new_work() -> None:
    cur = replay.Cursor([rec(0, StepKind.STEP, "a"), rec(1, StepKind.STEP, "b")])
    assert cur.next(StepKind.STEP, "a")[1] is not None
    assert cur.next(StepKind.STEP, "b")[1] is not None
    call, memo = cur.next(StepKind.STEP, "c")
    assert memo is None and call.position == 2
    cur.check_complete()


@pytest.mark.parametrize(
    ("history", "calls"),
    [
        ([("step", "a"), ("step", "b")], [("step", "a"), ("step", "x")]),  # renamed
        ([("step", "a"), ("step", "b")], [("step", "b")]),  # removed / reordered
        ([("step", "a")], [("sleep", "a")]),  # changed kind
        ([("step", "a"), ("step", "b")], [("step", "x"), ("step", "a")]),  # inserted before
    ],
)
def test_drift_names_both_calls(
    history: list[tuple[str, str]], calls: list[tuple[str, str]]
) -> None:
    cur = replay.Cursor(
        [
            rec(i, StepKind(k), keys.key_base(StepKind(k), label), label)
            for i, (k, label) in enumerate(history)
        ]
    )
    with pytest.raises(ReplayNonDeterministic) as info:
        for kind, label in calls:
            cur.next(StepKind(kind), label)
    err = info.value
    assert err.error_code == "REPLAY_NON_DETERMINISTIC"
    assert set(err.details) == {"recorded", "requested"}
    assert "history recorded" in err.message and "now calls" in err.message


def test_history_longer_than_body_is_drift() -> None:
    cur = replay.Cursor([rec(0, StepKind.STEP, "a"), rec(1, StepKind.STEP, "b")])
    cur.next(StepKind.STEP, "a")
    with pytest.raises(ReplayNonDeterministic, match="no longer makes that call"):
        cur.check_complete()
