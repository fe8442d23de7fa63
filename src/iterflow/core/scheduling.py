"""Schedules as records, and what one sweep does with one schedule: pure.

:mod:`iterflow.core.schedule` is the tick math (which ticks are due, jitter, keys, overlap);
this module is what the engine, the stores and the sweep share on top of it:

* :class:`Tick`, the built-in input of a scheduled flow (``scheduled_at``, ``schedule_id``);
* :class:`ScheduleSpec`, a validated definition (:func:`schedule_spec` checks every field and
  raises ``SCHEDULE_INVALID`` naming it), and :class:`ScheduleRecord`, a stored schedule with its
  state (watermark ``last_tick``, ``next_tick``, ``buffered_tick``, ``last_run_id``);
* :func:`plan_sweep`: given a due schedule, the database's ``now`` and whether its last run is
  still live, the ticks to start, the previous run to cancel, the new watermark and the events
  to record, by :func:`~iterflow.core.schedule.due_ticks` and
  :func:`~iterflow.core.schedule.decide_overlap`;
* :func:`first_state`: the watermark and first tick of a new (or resumed, or redefined)
  schedule: nothing at or before ``now`` is due.

Overlap inside one sweep: a run started by this sweep counts as live for the next tick of the
same sweep (a catch-up under ``skip`` starts the oldest due tick only). Under
``cancel_previous`` the newer tick supersedes the older one started in the same sweep, which is
then recorded as skipped; only a run of an earlier sweep is canceled. A buffered tick
(``buffer_one``) starts at the first sweep after the live run ended, before any new tick.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from iterflow.core.codec import shown
from iterflow.core.errors import ScheduleInvalid
from iterflow.core.schedule import (
    OVERLAP_POLICIES,
    OverlapPolicy,
    check_schedule_id,
    decide_overlap,
    due_ticks,
    parse_schedule,
    validate_window,
)

__all__ = [
    "SCHEDULE_EVENT_TYPES",
    "SCHEDULE_SOURCES",
    "ScheduleEvent",
    "ScheduleRecord",
    "ScheduleSource",
    "ScheduleSpec",
    "SweepPlan",
    "Tick",
    "check_tick_input",
    "first_state",
    "plan_sweep",
    "schedule_spec",
]

ScheduleSource = Literal["code", "api"]
SCHEDULE_SOURCES: tuple[ScheduleSource, ...] = ("code", "api")

#: Every decision recorded in ``schedule_events``.
SCHEDULE_EVENT_TYPES = (
    "created",
    "updated",
    "started",
    "skipped",
    "buffered",
    "canceled_previous",
    "paused",
    "resumed",
    "triggered",
    "backfilled",
    "removed_from_code",
)
_LISTED_SKIPS = 10


class Tick(BaseModel):
    """The input of a scheduled flow that takes no other: which tick started the run."""

    model_config = ConfigDict(frozen=True)

    scheduled_at: datetime
    """The tick (UTC), not the moment the run started (a catch-up or a jitter is later)."""
    schedule_id: str


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A validated schedule definition (build it with :func:`schedule_spec`)."""

    id: str
    flow: str
    cron: str
    tz: str = "UTC"
    version: int | None = None
    """A pinned flow version, or None: the newest registered one."""
    input: Any = None
    """The run input as JSON data, or None: the built-in :class:`Tick`."""
    overlap: OverlapPolicy = "skip"
    catchup_seconds: int | None = None
    jitter_seconds: int = 0
    start_at: datetime | None = None
    end_at: datetime | None = None
    source: ScheduleSource = "api"

    @property
    def catchup(self) -> timedelta | None:
        return None if self.catchup_seconds is None else timedelta(seconds=self.catchup_seconds)

    @property
    def jitter(self) -> timedelta:
        return timedelta(seconds=self.jitter_seconds)

    def same_definition(self, other: ScheduleSpec) -> bool:
        """Equal in everything but ``source``."""
        return _fields(self) == _fields(other)


def _fields(spec: ScheduleSpec) -> tuple[Any, ...]:
    return (
        spec.id,
        spec.flow,
        spec.cron,
        spec.tz,
        spec.version,
        spec.input,
        spec.overlap,
        spec.catchup_seconds,
        spec.jitter_seconds,
        spec.start_at,
        spec.end_at,
    )


def _seconds(value: object, what: str, least: int) -> int:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        if seconds != int(seconds):
            raise ScheduleInvalid(f"{what} must be whole seconds, got {value}")
        value = int(seconds)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ScheduleInvalid(
            f"{what} must be a duration of at least {least} s, got {shown(value)}"
        )
    if value > 100 * 366 * 86400:
        raise ScheduleInvalid(f"{what} must be at most 100 years, got {value} s")
    return value


def schedule_spec(
    *,
    id: str,
    flow: str,
    cron: str,
    tz: str = "UTC",
    version: int | None = None,
    input: Any = None,
    overlap: str = "skip",
    catchup: timedelta | int | None = None,
    jitter: timedelta | int = 0,
    start_at: datetime | None = None,
    end_at: datetime | None = None,
    source: str = "api",
) -> ScheduleSpec:
    """Check every field (``SCHEDULE_INVALID`` naming it) and return the definition.

    The cron expression is kept normalized (macros expanded); ``catchup`` and ``jitter`` are
    whole seconds (a ``timedelta`` or an int); ``start_at``/``end_at`` aware, in UTC.
    """
    check_schedule_id(id)
    if not isinstance(flow, str) or not flow:
        raise ScheduleInvalid(f"a schedule's flow must be a flow name, got {shown(flow)}")
    parsed = parse_schedule(cron, tz)
    if overlap not in OVERLAP_POLICIES:
        raise ScheduleInvalid(
            f"unknown overlap policy {shown(overlap)}; use one of {', '.join(OVERLAP_POLICIES)}"
        )
    if source not in SCHEDULE_SOURCES:
        raise ScheduleInvalid(f"a schedule's source is 'code' or 'api', got {shown(source)}")
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or version < 1
    ):
        raise ScheduleInvalid(f"a pinned version must be a positive int, got {shown(version)}")
    start, end = validate_window(start_at, end_at)
    return ScheduleSpec(
        id=id,
        flow=flow,
        cron=parsed.expr,
        tz=parsed.tz,
        version=version,
        input=input,
        overlap=overlap,  # checked above
        catchup_seconds=None if catchup is None else _seconds(catchup, "catchup", 1),
        jitter_seconds=_seconds(jitter, "jitter", 0),
        start_at=start,
        end_at=end,
        source=source,  # checked above
    )


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A stored schedule: its definition and its state."""

    spec: ScheduleSpec
    paused: bool
    next_tick: datetime | None
    """The first pending tick; None once the schedule has ended (past ``end_at``)."""
    last_tick: datetime | None
    """The watermark: every tick at or before it was started or skipped."""
    buffered_tick: datetime | None
    last_run_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass(frozen=True, slots=True)
class ScheduleEvent:
    """One decision about a schedule (a ``schedule_events`` row, or one to write)."""

    type: str
    tick: datetime | None = None
    run_id: uuid.UUID | None = None
    data: dict[str, Any] | None = None
    at: datetime | None = None
    id: int | None = None


@dataclass(frozen=True, slots=True)
class SweepPlan:
    """What a sweep writes for one due schedule (with the runs of ``start``, in one
    transaction)."""

    start: tuple[datetime, ...]
    """Ticks to start, oldest first (a released buffered tick first)."""
    cancel_previous: bool
    """Cancel the schedule's last run (a run of an earlier sweep) before starting."""
    last_tick: datetime | None
    next_tick: datetime | None
    buffered_tick: datetime | None
    events: tuple[ScheduleEvent, ...] = field(default=())
    """Skips, buffers and cancels (the store records one ``started`` per run it starts)."""
    more: bool = False
    """More ticks are due now than one call starts: sweep again."""


def check_tick_input(input_type: Any, flow_key: str) -> None:
    """A schedule without an ``input`` starts its flow with a :class:`Tick`: the flow's input
    model must be ``Tick`` (or a subclass)."""
    if not (isinstance(input_type, type) and issubclass(input_type, Tick)):
        name = getattr(input_type, "__name__", repr(input_type))
        raise ScheduleInvalid(
            f"flow {flow_key} takes {name}, not iterflow.Tick: a schedule without input= "
            "starts its runs with a Tick (scheduled_at, schedule_id); declare input=Tick or "
            "give the schedule an input"
        )


def first_state(spec: ScheduleSpec, now: datetime) -> tuple[datetime, datetime | None]:
    """``(last_tick, next_tick)`` for a schedule (re)defined or resumed at ``now``: the
    watermark is ``now`` (nothing at or before it is due), the first tick the first one after
    it inside ``[start_at, end_at]``."""
    plan = due_ticks(
        parse_schedule(spec.cron, spec.tz),
        last_tick=None,
        now=now,
        start_at=spec.start_at,
        end_at=spec.end_at,
    )
    return plan.last_tick, plan.next_tick


def plan_sweep(
    record: ScheduleRecord, *, now: datetime, previous_live: bool, limit: int = 100
) -> SweepPlan:
    """Plan one sweep of a due schedule (see the module docstring).

    ``previous_live``: the schedule's last run is live now. A schedule whose ``next_tick`` is
    not due only releases its buffered tick (if the previous run ended).
    """
    spec = record.spec
    starts: list[datetime] = []
    events: list[ScheduleEvent] = []
    buffered = record.buffered_tick
    live, cancel = previous_live, False
    if buffered is not None and not live:
        starts.append(buffered)
        buffered, live = None, True
    last_tick, next_at, more = record.last_tick, record.next_tick, False
    if record.next_tick is not None and record.next_tick <= now:
        plan = due_ticks(
            parse_schedule(spec.cron, spec.tz),
            last_tick=record.last_tick if record.last_tick is not None else now,
            now=now,
            catchup=spec.catchup,
            start_at=spec.start_at,
            end_at=spec.end_at,
            limit=limit,
        )
        if plan.skipped_count:
            listed = [t.isoformat() for t in plan.skipped[:_LISTED_SKIPS]]
            events.append(
                ScheduleEvent(
                    "skipped",
                    plan.skipped[0] if plan.skipped else None,
                    data={"reason": "missed", "count": plan.skipped_count, "ticks": listed},
                )
            )
        for tick in plan.start:
            decision = decide_overlap(
                spec.overlap, previous_live=live, buffered=buffered is not None
            )
            if decision.cancel_previous:
                if starts:  # the newer tick supersedes the one this sweep would start
                    older = starts.pop()
                    events.append(ScheduleEvent("skipped", older, data={"reason": "superseded"}))
                else:
                    cancel = True
                    events.append(
                        ScheduleEvent(
                            "canceled_previous",
                            tick,
                            record.last_run_id,
                            {"reason": decision.reason},
                        )
                    )
            if decision.start:
                starts.append(tick)
                live = True
            elif decision.buffer:
                buffered = tick
                events.append(ScheduleEvent("buffered", tick, data={"reason": decision.reason}))
            else:
                events.append(ScheduleEvent("skipped", tick, data={"reason": decision.reason}))
        last_tick, next_at, more = plan.last_tick, plan.next_tick, plan.more
    return SweepPlan(
        start=tuple(starts),
        cancel_previous=cancel,
        last_tick=last_tick,
        next_tick=next_at,
        buffered_tick=buffered,
        events=tuple(events),
        more=more,
    )
