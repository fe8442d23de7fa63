"""Frozen records shared by every layer.

The statuses and their sets live in :mod:`iterflow.core.states`; they are re-exported here so
``from iterflow.core.models import RunStatus`` keeps working.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

# Re-exported (listed in __all__) for code written before core.states existed.
from iterflow.core.states import (
    RESUMABLE_STATUSES,
    TERMINAL_STATUSES,
    RunStatus,
    StepKind,
    StepStatus,
)

__all__ = [
    "RESUMABLE_STATUSES",
    "TERMINAL_STATUSES",
    "CancelResult",
    "ChildRecord",
    "EventRecord",
    "RetryResult",
    "RunDetail",
    "RunPage",
    "RunRecord",
    "RunStatus",
    "SignalRecord",
    "SignalResult",
    "StartOptions",
    "StartResult",
    "StepKind",
    "StepRecord",
    "StepStatus",
    "SuspendPlan",
    "TimerRecord",
]


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One row of ``runs``."""

    id: uuid.UUID
    name: str
    version: int
    status: RunStatus
    input: Any
    output: Any
    error: dict[str, Any] | None
    idempotency_key: str | None
    parent_run_id: uuid.UUID | None
    parent_cursor_key: str | None
    tags: tuple[str, ...]
    priority: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    #: How many times a worker claimed the run (attempts made); a step's own attempts are on
    #: its :class:`StepRecord`.
    claims: int
    stalled_claims: int
    waiting_for: str | None
    wake_at: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    seq: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        """True once the run is done, failed or canceled."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One memo row of ``steps``: the recorded outcome of one cursor key."""

    position: int
    cursor_key: str
    kind: StepKind
    label: str
    status: StepStatus
    output: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 1
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TimerRecord:
    """One row of ``timers``: a pinned due time for a sleep, a timeout or a retry backoff."""

    cursor_key: str
    fire_at: datetime
    fired_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SignalRecord:
    """One message of a run's signal inbox."""

    id: int
    name: str
    payload: Any
    idempotency_key: str | None
    received_at: datetime
    consumed_by: str | None = None
    consumed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ChildRecord:
    """A terminal child run whose outcome its parent has not recorded yet."""

    id: uuid.UUID
    cursor_key: str
    status: RunStatus
    output: Any = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One run-level transition for the timeline."""

    id: int
    type: str
    cursor_key: str | None
    data: Any
    at: datetime


@dataclass(frozen=True, slots=True)
class RunDetail:
    """Everything ``engine.status(run_id)`` knows about a run."""

    run: RunRecord
    steps: tuple[StepRecord, ...] = ()
    signals: tuple[SignalRecord, ...] = ()
    timers: tuple[TimerRecord, ...] = ()
    events: tuple[EventRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class RunPage:
    """One page of ``engine.list_runs``; pass ``next_cursor`` back to get the next page."""

    runs: tuple[RunRecord, ...]
    next_cursor: int | None


@dataclass(frozen=True, slots=True)
class StartResult:
    """What ``handle.start`` returns. ``created`` is False when an idempotency key matched."""

    run_id: uuid.UUID
    created: bool
    status: RunStatus


@dataclass(frozen=True, slots=True)
class SignalResult:
    """What ``engine.signal`` returns.

    * ``delivered``: the run was waiting for this signal and has been woken.
    * ``buffered``: stored in the run's inbox; consumed by its next wait for this name.
    * ``duplicate``: a signal with the same idempotency key was already received.
    * ``not_found``: no run with that id.
    * ``closed``: the run is terminal; nothing was stored.
    """

    kind: Literal["delivered", "buffered", "duplicate", "not_found", "closed"]
    signal_id: int | None = None


@dataclass(frozen=True, slots=True)
class RetryResult:
    """What ``engine.retry`` returns: ``queued``, ``missing`` or ``not_failed``."""

    kind: Literal["queued", "missing", "not_failed"]
    status: RunStatus | None = None


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What ``engine.cancel`` returns: ``canceled``, ``not_found`` or ``already_terminal``."""

    kind: Literal["canceled", "not_found", "already_terminal"]
    status: RunStatus | None = None


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run to insert (built by the engine after validation)."""

    id: uuid.UUID
    name: str
    version: int
    input: Any
    idempotency_key: str | None = None
    tags: tuple[str, ...] = ()
    priority: int = 0
    #: An absolute due time for the first attempt (None: at once, or after ``delay``).
    wake_at: datetime | None = None
    parent_run_id: uuid.UUID | None = None
    parent_cursor_key: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: Due this long after the store's "now" (PostgreSQL's ``now()`` in the start transaction,
    #: the in-memory store's clock); the run's ``wake_at`` and its job's ``scheduled_at``.
    delay: timedelta | None = None

    def __post_init__(self) -> None:
        if self.wake_at is not None and self.delay is not None:
            raise ValueError("a new run is due at wake_at or after delay, not both")


@dataclass(frozen=True, slots=True)
class StartOptions:
    """How to start a run: the keywords of ``handle.start`` / ``engine.start`` as one record.

    Built from the caller's values as given (``tags`` any iterable, ``delay`` any duration);
    ``Engine._start`` validates every field before anything is written. ``delay`` counts from
    the store's clock: the database's ``now()`` on PostgreSQL, not the application's.
    """

    idempotency_key: str | None = None
    tags: Iterable[str] = ()
    #: A duration (``core.durations.DurationLike``, spelled out: durations imports errors,
    #: which imports this module): ``"90s"``, a ``timedelta`` or seconds.
    delay: str | timedelta | int | float | None = None
    priority: int = 0


@dataclass(frozen=True, slots=True)
class SuspendPlan:
    """How an attempt ends without finishing: the new status, when to wake, what to arm."""

    status: RunStatus
    reason: str
    cursor_key: str
    wake_at: datetime | None
    waiting_for: str | None = None
    new_timers: tuple[TimerRecord, ...] = ()
    progress: bool = True

    def merge(self, other: SuspendPlan) -> SuspendPlan:
        """Combine two branches of a ``ctx.gather``: wake at the earliest due time."""
        wakes = [w for w in (self.wake_at, other.wake_at) if w is not None]
        return SuspendPlan(
            status=self.status,
            reason=self.reason,
            cursor_key=self.cursor_key,
            wake_at=min(wakes) if wakes else None,
            waiting_for=self.waiting_for,
            new_timers=self.new_timers + other.new_timers,
            progress=self.progress or other.progress,
        )
