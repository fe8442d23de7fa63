"""A run's recorded history as a stable JSON document (``flowctl export``, ``testing.replay``).

The document (format ``iterflow.run/1``) is what :class:`~iterflow.core.models.RunDetail` holds,
spelled in plain JSON: the run row, its memo rows (``steps``), its signal inbox, its timers and
its events, plus the iterflow version that exported it. Times are ISO 8601 with their offset,
ids are strings. The shape is documented in ``docs/testing.md``; it only grows (new fields are
added, none is renamed or removed within format 1), and readers ignore fields they do not know.

Pure: :func:`export_run` and :func:`load_run` convert between the records and the JSON data;
reading files and the database is the caller's (``flowctl export``, ``iterflow.testing``). A
document that is not a valid export raises ``HISTORY_INVALID`` naming the first wrong field; a
value PostgreSQL could not have stored (NUL, lone surrogates, NaN, nesting too deep) raises it
too, so a hostile file never reaches a flow body.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from iterflow.core import codec
from iterflow.core.errors import HistoryInvalid, PayloadInvalid
from iterflow.core.models import (
    EventRecord,
    RunDetail,
    RunRecord,
    RunStatus,
    SignalRecord,
    StepKind,
    StepRecord,
    StepStatus,
    TimerRecord,
)

__all__ = ["FORMAT", "RunExport", "export_run", "load_run", "parse_export", "step_data", "step_of"]

FORMAT = "iterflow.run/1"
"""The format of the documents this version writes (and the only one it reads)."""

_DocT = TypeVar("_DocT", bound="_Doc")

#: No byte cap on recorded values: the exporting engine applied its own when they were written.
_NO_CAP = 2**62


class _Doc(BaseModel):
    # ignore unknown fields: format 1 only grows, and an older reader must read newer files
    model_config = ConfigDict(frozen=True, extra="ignore")


class _Run(_Doc):
    id: uuid.UUID
    name: str
    version: int
    status: RunStatus
    input: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    idempotency_key: str | None = None
    parent_run_id: uuid.UUID | None = None
    parent_cursor_key: str | None = None
    tags: tuple[str, ...] = ()
    priority: int = 0
    claims: int = 0
    stalled_claims: int = 0
    waiting_for: str | None = None
    wake_at: AwareDatetime | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    started_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


class _Step(_Doc):
    position: int = Field(ge=0)
    cursor_key: str
    kind: StepKind
    label: str
    status: StepStatus
    output: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 1
    started_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None


class _Signal(_Doc):
    id: int
    name: str
    payload: Any = None
    idempotency_key: str | None = None
    received_at: AwareDatetime
    consumed_by: str | None = None
    consumed_at: AwareDatetime | None = None


class _Timer(_Doc):
    cursor_key: str
    fire_at: AwareDatetime
    fired_at: AwareDatetime | None = None


class _Event(_Doc):
    id: int
    type: str
    cursor_key: str | None = None
    data: Any = None
    at: AwareDatetime


class RunExport(_Doc):
    """The exported document (format ``iterflow.run/1``); see ``docs/testing.md``."""

    format: Literal["iterflow.run/1"]
    iterflow: str = Field(description="version of iterflow that exported the run")
    run: _Run
    steps: tuple[_Step, ...] = ()
    signals: tuple[_Signal, ...] = ()
    timers: tuple[_Timer, ...] = ()
    events: tuple[_Event, ...] = ()


def step_data(step: StepRecord) -> dict[str, Any]:
    """One memo row as JSON data (the ``steps`` items of an export)."""
    return _Step.model_validate(step, from_attributes=True).model_dump(mode="json")


def step_of(data: Any) -> StepRecord:
    """One memo row from its JSON data (``HISTORY_INVALID`` if it is not one)."""
    return _step_record(_validated(_Step, data, "step"))


def export_run(detail: RunDetail, *, iterflow_version: str) -> dict[str, Any]:
    """The export document of a run, as JSON data (``json.dumps`` it as it is)."""
    run = detail.run
    doc = RunExport(
        format=FORMAT,
        iterflow=iterflow_version,
        run=_Run.model_validate(run, from_attributes=True),
        steps=tuple(_Step.model_validate(s, from_attributes=True) for s in detail.steps),
        signals=tuple(_Signal.model_validate(s, from_attributes=True) for s in detail.signals),
        timers=tuple(_Timer.model_validate(t, from_attributes=True) for t in detail.timers),
        events=tuple(_Event.model_validate(e, from_attributes=True) for e in detail.events),
    )
    return doc.model_dump(mode="json")


def parse_export(text: str | bytes) -> RunExport:
    """Parse an export document from its JSON text (``HISTORY_INVALID`` if it is not one)."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise HistoryInvalid(f"the run export is not valid JSON: {codec.shown(str(exc))}") from None
    return _checked(data)


def load_run(data: Any) -> RunDetail:
    """The records of an export document (parsed JSON data or a :class:`RunExport`)."""
    doc = data if isinstance(data, RunExport) else _checked(data)
    run = doc.run
    record = RunRecord(
        id=run.id,
        name=run.name,
        version=run.version,
        status=run.status,
        input=run.input,
        output=run.output,
        error=run.error,
        idempotency_key=run.idempotency_key,
        parent_run_id=run.parent_run_id,
        parent_cursor_key=run.parent_cursor_key,
        tags=run.tags,
        priority=run.priority,
        lease_owner=None,
        lease_expires_at=None,
        claims=run.claims,
        stalled_claims=run.stalled_claims,
        waiting_for=run.waiting_for,
        wake_at=run.wake_at,
        created_at=run.created_at,
        updated_at=run.updated_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        seq=0,
        meta=dict(run.meta),
    )
    return RunDetail(
        run=record,
        steps=tuple(sorted((_step_record(s) for s in doc.steps), key=lambda s: s.position)),
        signals=tuple(
            SignalRecord(
                s.id,
                s.name,
                s.payload,
                s.idempotency_key,
                s.received_at,
                s.consumed_by,
                s.consumed_at,
            )
            for s in doc.signals
        ),
        timers=tuple(TimerRecord(t.cursor_key, t.fire_at, t.fired_at) for t in doc.timers),
        events=tuple(EventRecord(e.id, e.type, e.cursor_key, e.data, e.at) for e in doc.events),
    )


def _step_record(s: _Step) -> StepRecord:
    return StepRecord(
        position=s.position,
        cursor_key=s.cursor_key,
        kind=s.kind,
        label=s.label,
        status=s.status,
        output=s.output,
        error=s.error,
        attempts=s.attempts,
        started_at=s.started_at,
        finished_at=s.finished_at,
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _validated(model: type[_DocT], data: Any, what: str) -> _DocT:
    """``data`` as ``model``; first checked as ``jsonb`` would check it (NUL and lone surrogates
    in any string, NaN, nesting too deep), so a hostile file never reaches a flow body."""
    try:
        codec.check_data(data, what=f"the run export's {what}", limit=_NO_CAP)
    except PayloadInvalid as exc:
        raise HistoryInvalid(f"{exc.message}; PostgreSQL could not have stored it") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HistoryInvalid(
            f"the run export's {what} is not valid: {codec.validation_message(exc)}"
        ) from None


def _checked(data: Any) -> RunExport:
    if isinstance(data, dict) and data.get("format") not in (None, FORMAT):
        raise HistoryInvalid(
            f"unknown run export format {codec.shown(data.get('format'))}; this iterflow reads "
            f"{FORMAT!r} (export the run again with this version's flowctl)"
        )
    return _validated(RunExport, data, "document")
