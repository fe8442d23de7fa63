"""Cursor keys, timer keys and ``waiting_for`` values: the persisted formats, built and parsed by
one module. Every kind round-trips build → parse."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iterflow.core import keys, replay
from iterflow.core.models import StepKind

#: Labels as stored. A label ending in ``#<n>`` reads as a counter (the stored format cannot tell
#: them apart), so those are left out of the round trips.
labels = st.text(min_size=1, max_size=40).filter(lambda s: not re.search(r"#[1-9][0-9]*$", s))
occurrences = st.integers(min_value=0, max_value=10_000)
LABELLED = [StepKind.STEP, StepKind.SLEEP, StepKind.SIGNAL, StepKind.INVOKE, StepKind.PATCH]
UNLABELLED = [StepKind.SLEEP, StepKind.NOW, StepKind.UUID, StepKind.RANDOM]


def test_the_documented_formats() -> None:
    assert keys.cursor_key(StepKind.STEP, "charge") == "charge"
    assert keys.cursor_key(StepKind.STEP, "charge", 1) == "charge#1"
    assert keys.cursor_key(StepKind.SLEEP, "cool-off") == "sleep:cool-off"
    assert keys.cursor_key(StepKind.SLEEP, "") == "sleep"
    assert keys.cursor_key(StepKind.SIGNAL, "approve", 2) == "signal:approve#2"
    assert keys.cursor_key(StepKind.INVOKE, "ship@1") == "invoke:ship@1"
    assert keys.cursor_key(StepKind.NOW, "", 3) == "now#3"
    assert keys.retry_timer_key("charge#1") == "retry:charge#1"
    assert keys.waiting_for_signal("approve") == "signal:approve"
    assert keys.waiting_for_timer("retry:charge") == "timer:retry:charge"
    child = uuid.UUID("00000000-0000-4000-8000-000000000001")
    assert keys.waiting_for_child(child) == f"child:{child}"
    assert (keys.WAITING_STORAGE, keys.WAITING_RECOVERY, keys.WAITING_DEPLOY) == (
        "storage",
        "recovery",
        "deploy",
    )


def test_the_cursor_uses_the_same_keys() -> None:
    cursor = replay.Cursor([])
    calls = [(StepKind.STEP, "a"), (StepKind.STEP, "a"), (StepKind.SIGNAL, "go")]
    taken = [cursor.next(kind, label)[0].cursor_key for kind, label in calls]
    assert taken == ["a", "a#1", "signal:go"]
    assert [keys.parse_cursor_key(k) for k in taken] == [
        keys.CursorKey(StepKind.STEP, "a"),
        keys.CursorKey(StepKind.STEP, "a", 1),
        keys.CursorKey(StepKind.SIGNAL, "go"),
    ]


@given(kind=st.sampled_from(LABELLED), label=labels, n=occurrences)
def test_labelled_cursor_keys_round_trip_with_their_kind(
    kind: StepKind, label: str, n: int
) -> None:
    key = keys.cursor_key(kind, label, n)
    parsed = keys.parse_cursor_key(key, kind)
    assert parsed == keys.CursorKey(kind, label, n)
    assert str(parsed) == key
    assert parsed.base == keys.key_base(kind, label)


@given(kind=st.sampled_from(UNLABELLED), n=occurrences)
def test_unlabelled_cursor_keys_round_trip_without_a_kind(kind: StepKind, n: int) -> None:
    key = keys.cursor_key(kind, "", n)
    assert keys.parse_cursor_key(key) == keys.CursorKey(kind, "", n)
    assert keys.parse_cursor_key(key, kind) == keys.CursorKey(kind, "", n)


@given(kind=st.sampled_from([StepKind.SLEEP, StepKind.SIGNAL, StepKind.INVOKE]), label=labels)
def test_prefixed_keys_name_their_kind_without_one(kind: StepKind, label: str) -> None:
    assert keys.parse_cursor_key(keys.cursor_key(kind, label, 4)).kind is kind


def test_a_key_of_another_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="not the cursor key of a signal call"):
        keys.parse_cursor_key("sleep:x", StepKind.SIGNAL)
    assert keys.parse_cursor_key("charge").kind is StepKind.STEP


@given(owner=st.text(max_size=40))
def test_timer_keys_round_trip(owner: str) -> None:
    for retry in (False, True):
        key = str(keys.TimerKey(owner, retry))
        if not retry and owner.startswith(keys.RETRY_PREFIX):
            continue  # a call's own key never starts with "retry:" (it starts with its kind)
        assert keys.parse_timer_key(key) == keys.TimerKey(owner, retry)
    assert keys.parse_timer_key(keys.retry_timer_key(owner)).owner == owner


@given(
    waiting=st.one_of(
        st.builds(keys.waiting_for_signal, st.text(max_size=40)),
        st.builds(keys.waiting_for_timer, st.text(max_size=40)),
        st.builds(keys.waiting_for_child, st.uuids()),
        st.sampled_from([keys.WAITING_STORAGE, keys.WAITING_RECOVERY, keys.WAITING_DEPLOY]),
    )
)
def test_waiting_for_round_trips(waiting: str) -> None:
    parsed = keys.parse_waiting_for(waiting)
    assert str(parsed) == waiting


def test_waiting_for_parses_into_its_parts() -> None:
    child = uuid.uuid4()
    assert keys.parse_waiting_for(keys.waiting_for_child(child)).child_id == child
    timer = keys.parse_waiting_for("timer:retry:charge#2")
    assert timer == keys.Waiting(keys.WaitKind.TIMER, "retry:charge#2")
    assert keys.parse_timer_key(timer.ref) == keys.TimerKey("charge#2", retry=True)
    assert keys.parse_waiting_for("signal:a:b") == keys.Waiting(keys.WaitKind.SIGNAL, "a:b")
    assert keys.parse_waiting_for("deploy") == keys.Waiting(keys.WaitKind.DEPLOY)
    with pytest.raises(ValueError, match="waiting for signal, not a child"):
        _ = keys.parse_waiting_for("signal:go").child_id


@pytest.mark.parametrize(
    "value", ["", "nap", "signal", "deploy:x", "child:not-a-uuid", "storage:", "timer"]
)
def test_unknown_or_malformed_waiting_for_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="waiting_for"):
        keys.parse_waiting_for(value)
