"""PostgreSQL rows as core records: the decoding shared by the store's reads.

A row comes either from a plain ``SELECT`` (columns decoded by asyncpg: ``uuid``, ``timestamptz``)
or from a ``json_build_object`` inside a statement such as ``claim`` (timestamps as ISO text,
ids as strings); each decoder accepts both.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

from iterflow.core.models import (
    ChildRecord,
    EventRecord,
    RunRecord,
    RunStatus,
    SignalRecord,
    StepKind,
    StepRecord,
    StepStatus,
    TimerRecord,
)

__all__ = [
    "child_record",
    "event_record",
    "run_record",
    "signal_record",
    "step_record",
    "timer_record",
]

Row = Mapping[Any, Any]


def _ts(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def run_record(row: Row) -> RunRecord:
    """A ``runs`` row (the columns of ``queries.RUN_COLS``)."""
    return RunRecord(
        id=row["id"],
        seq=row["seq"],
        name=row["name"],
        version=row["version"],
        status=RunStatus(row["status"]),
        input=row["input"],
        output=row["output"],
        error=row["error"],
        idempotency_key=row["idempotency_key"],
        parent_run_id=row["parent_run_id"],
        parent_cursor_key=row["parent_cursor_key"],
        tags=tuple(row["tags"] or ()),
        priority=row["priority"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
        claims=row["claims"],
        stalled_claims=row["stalled_claims"],
        waiting_for=row["waiting_for"],
        wake_at=row["wake_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        meta=dict(row["meta"] or {}),
        deadline_at=_ts(row.get("deadline_at")),
        limit_key=row.get("limit_key"),
        held=row.get("held"),
    )


def step_record(d: Row) -> StepRecord:
    """A ``steps`` row (a memo)."""
    return StepRecord(
        position=d["position"],
        cursor_key=d["cursor_key"],
        kind=StepKind(d["kind"]),
        label=d["label"],
        status=StepStatus(d["status"]),
        output=d["output"],
        error=d["error"],
        attempts=d["attempts"],
        started_at=_ts(d["started_at"]),
        finished_at=_ts(d["finished_at"]),
    )


def signal_record(d: Row) -> SignalRecord:
    """A ``signals`` row."""
    return SignalRecord(
        id=d["id"],
        name=d["name"],
        payload=d["payload"],
        idempotency_key=d["idempotency_key"],
        received_at=cast(datetime, _ts(d["received_at"])),
        consumed_by=d["consumed_by"],
        consumed_at=_ts(d["consumed_at"]),
        meta=d.get("meta") or {},
    )


def timer_record(d: Row) -> TimerRecord:
    """A ``timers`` row."""
    return TimerRecord(
        cursor_key=d["cursor_key"],
        fire_at=cast(datetime, _ts(d["fire_at"])),
        fired_at=_ts(d["fired_at"]),
    )


def child_record(d: Row) -> ChildRecord:
    """A terminal child of the claimed run (``claim``'s ``children``)."""
    return ChildRecord(
        id=d["id"] if isinstance(d["id"], uuid.UUID) else uuid.UUID(d["id"]),
        cursor_key=d["cursor_key"],
        status=RunStatus(d["status"]),
        output=d["output"],
        error=d["error"],
        finished_at=_ts(d.get("finished_at")),
    )


def event_record(d: Row) -> EventRecord:
    """An ``events`` row."""
    return EventRecord(
        id=d["id"], type=d["type"], cursor_key=d["cursor_key"], data=d["data"], at=d["at"]
    )
