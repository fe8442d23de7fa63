"""The one vocabulary: status sets, the SQL generated from them, and typed event payloads."""

from __future__ import annotations

from pathlib import Path

import pytest

from iterflow.core import models
from iterflow.core.states import (
    LIVE_STATUSES,
    RESUMABLE_STATUSES,
    TERMINAL_STATUSES,
    TIMED_STATUSES,
    WAITING_STATUSES,
    Canceled,
    CancelRequested,
    CompensationFailed,
    Completed,
    EventPayload,
    EventType,
    Failed,
    Forked,
    Parked,
    Recovered,
    Resumed,
    Retried,
    Rewoken,
    RunStatus,
    SignalReceived,
    Started,
    StepStatus,
    Suspended,
    Unparked,
    finished_event,
    ordered,
    payload_of,
)
from iterflow.store import schema

ROOT = Path(__file__).resolve().parents[2]


def test_the_sets_partition_the_statuses() -> None:
    assert set(RunStatus) == LIVE_STATUSES | TERMINAL_STATUSES
    assert not LIVE_STATUSES & TERMINAL_STATUSES
    assert TIMED_STATUSES <= WAITING_STATUSES < RESUMABLE_STATUSES < LIVE_STATUSES
    assert {RunStatus.PENDING} == RESUMABLE_STATUSES - WAITING_STATUSES
    assert (
        RunStatus.RUNNING not in RESUMABLE_STATUSES and RunStatus.PARKED not in RESUMABLE_STATUSES
    )
    assert ordered(TERMINAL_STATUSES) == (
        RunStatus.DONE,
        RunStatus.FAILED,
        RunStatus.CANCELED,
        RunStatus.COMPENSATION_FAILED,
    )
    # models re-exports the vocabulary for code written before core.states
    assert models.RunStatus is RunStatus and models.TERMINAL_STATUSES is TERMINAL_STATUSES


def test_generated_constraints_equal_the_first_migrations_text() -> None:
    """Migrations are history: the generated CHECK text must stay what the migrations wrote
    (0001, and 0009 for the run statuses after ``compensation_failed`` was added)."""
    versions = ROOT / "migrations" / "versions"
    first = (versions / "0001_initial.py").read_text().replace('"\n    "', "")
    sagas = (versions / "0009_compensation.py").read_text().replace('"\n    "', "")
    assert schema.status_in(RunStatus) in sagas
    assert schema.LIVE_STATUS_SQL in first
    assert schema.status_in(StepStatus) == "status IN ('ok', 'failed', 'retrying')"
    assert schema.status_in(TERMINAL_STATUSES, "c.status") == (
        "c.status IN ('done', 'failed', 'canceled', 'compensation_failed')"
    )


PAYLOADS: list[tuple[EventPayload, object]] = [
    (Started(1), {"version": 1, "delayed_until": None}),
    (
        Started(2, delayed_until="2030-01-01T00:00:00+00:00"),
        {"version": 2, "delayed_until": "2030-01-01T00:00:00+00:00"},
    ),
    (Started(3, parent="p"), {"version": 3, "parent": "p"}),
    (Suspended("sleep", None), {"reason": "sleep", "wake_at": None}),
    (Completed(), None),
    (Failed("E"), {"code": "E"}),
    (Canceled("stop", "r"), {"reason": "stop", "root": "r"}),
    (Parked("C", "m"), {"code": "C", "message": "m"}),
    (Unparked("retry"), {"reason": "retry"}),
    (Retried(4), {"from": 4}),
    (Recovered(), {"reason": "lease_expired"}),
    (Rewoken(), {"reason": "no pending wake-up"}),
    (SignalReceived("go", 7, True), {"name": "go", "signal_id": 7, "waiting": True}),
    (Resumed(2), {"children": 2}),
    (Forked("r", "pay", 3), {"source": "r", "from_step": "pay", "from": 3}),
    (
        Failed("E", {"status": "compensated"}),
        {"code": "E", "compensation": {"status": "compensated"}},
    ),
    (
        Canceled("stop", "r", {"steps": []}),
        {"reason": "stop", "root": "r", "compensation": {"steps": []}},
    ),
    (CancelRequested("stop"), {"reason": "stop"}),
    (
        CompensationFailed("E", {"status": "failed"}),
        {"code": "E", "compensation": {"status": "failed"}},
    ),
]


@pytest.mark.parametrize(("payload", "data"), PAYLOADS)
def test_each_payload_writes_its_keys_and_reads_back(payload: EventPayload, data: object) -> None:
    assert payload.to_data() == data
    assert payload_of(payload.type.value, data) == payload


def test_every_event_type_has_a_payload_and_unknown_shapes_read_as_none() -> None:
    assert {p.type for p, _ in PAYLOADS} == set(EventType)
    assert payload_of("exploded", {}) is None
    assert payload_of("failed", {"no": "code"}) is None
    assert finished_event(RunStatus.DONE, None) == Completed()
    assert finished_event(RunStatus.FAILED, {"code": "X"}) == Failed("X")
    record = {"status": "compensated", "steps": ["compensate:a"]}
    error = {"code": "RUN_CANCELED", "message": "stop", "details": {"compensation": record}}
    assert finished_event(RunStatus.CANCELED, error, "r") == Canceled("stop", "r", record)
    failed = {**error, "code": "X"}
    assert finished_event(RunStatus.COMPENSATION_FAILED, failed) == CompensationFailed("X", record)
    with pytest.raises(ValueError):
        finished_event(RunStatus.RUNNING, None)
    for status in (RunStatus.CANCELED, RunStatus.COMPENSATION_FAILED):  # no compensation record
        with pytest.raises(ValueError):
            finished_event(status, {"code": "RUN_CANCELED", "message": "stop"})
