"""Frozen records shared by every layer.

The statuses and their sets live in :mod:`iterflow.core.states`; they are re-exported here so
``from iterflow.core.models import RunStatus`` keeps working.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypedDict

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
    "BulkResult",
    "CancelResult",
    "ChildRecord",
    "EventRecord",
    "PurgeReport",
    "RetryResult",
    "RunDetail",
    "RunFilter",
    "RunPage",
    "RunQuery",
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
    "WorkerInfo",
    "WorkerRecord",
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
    #: A live run still live at this time fails with ``RUN_DEADLINE_EXCEEDED``.
    deadline_at: datetime | None = None
    #: The key its flow's limits count it under ("" flow-wide; None: no limits).
    limit_key: str | None = None
    #: Why it is held back by a limit (:mod:`iterflow.core.limits`), None when it is not.
    held: dict[str, Any] | None = None

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
    #: What the hooks injected where the signal was sent (``{"trace": carrier}``), else empty.
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChildRecord:
    """A terminal child run whose outcome its parent has not recorded yet."""

    id: uuid.UUID
    cursor_key: str
    status: RunStatus
    output: Any = None
    error: dict[str, Any] | None = None
    #: When the child finished (when its parent became due again).
    finished_at: datetime | None = None


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
class RunFilter:
    """Which runs ``engine.list_runs`` / ``engine.count_runs`` select (every field narrows).

    Built by the engine after validation. Time windows are ``[after, before)``; a ``finished_*``
    bound leaves out unfinished runs. ``tags`` must all be present. ``schedule_id`` selects the
    runs a schedule started (``meta["schedule_id"]``). ``id_prefix`` is lowercase hex without
    dashes (1 to 32 digits). :meth:`matches` is the semantics; the PostgreSQL store spells the
    same predicate in SQL (the contract tests hold both stores to it).
    """

    name: str | None = None
    version: int | None = None
    statuses: tuple[RunStatus, ...] = ()
    tags: tuple[str, ...] = ()
    idempotency_key: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    finished_after: datetime | None = None
    finished_before: datetime | None = None
    parent_run_id: uuid.UUID | None = None
    schedule_id: str | None = None
    id_prefix: str | None = None

    def narrowed(
        self,
        *,
        name: str | None = None,
        statuses: Iterable[RunStatus] = (),
        tag: str | None = None,
        idempotency_key: str | None = None,
    ) -> RunFilter:
        """This filter with the store's older keyword filters added (those given)."""
        return RunFilter(
            name=self.name if name is None else name,
            version=self.version,
            statuses=self.statuses or tuple(statuses),
            tags=self.tags if tag is None else (*self.tags, tag),
            idempotency_key=self.idempotency_key if idempotency_key is None else idempotency_key,
            created_after=self.created_after,
            created_before=self.created_before,
            finished_after=self.finished_after,
            finished_before=self.finished_before,
            parent_run_id=self.parent_run_id,
            schedule_id=self.schedule_id,
            id_prefix=self.id_prefix,
        )

    def id_bounds(self) -> tuple[uuid.UUID, uuid.UUID] | None:
        """The smallest and largest run id with :attr:`id_prefix` (an index range scan)."""
        if self.id_prefix is None:
            return None
        low = self.id_prefix.ljust(32, "0")
        high = self.id_prefix.ljust(32, "f")
        return uuid.UUID(hex=low), uuid.UUID(hex=high)

    def matches(self, run: RunRecord) -> bool:
        """Whether ``run`` is selected."""
        checks = (
            self.name is None or run.name == self.name,
            self.version is None or run.version == self.version,
            not self.statuses or run.status in self.statuses,
            all(t in run.tags for t in self.tags),
            self.idempotency_key is None or run.idempotency_key == self.idempotency_key,
            self.created_after is None or run.created_at >= self.created_after,
            self.created_before is None or run.created_at < self.created_before,
            self.finished_after is None
            or (run.finished_at is not None and run.finished_at >= self.finished_after),
            self.finished_before is None
            or (run.finished_at is not None and run.finished_at < self.finished_before),
            self.parent_run_id is None or run.parent_run_id == self.parent_run_id,
            self.schedule_id is None or run.meta.get("schedule_id") == self.schedule_id,
            self.id_prefix is None or run.id.hex.startswith(self.id_prefix),
        )
        return all(checks)


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
    """What ``engine.cancel`` returns: ``canceled``, ``not_found`` or ``already_terminal``;
    ``canceling`` for ``cancel(compensate=True)`` of a live run (status ``pending``: its next
    attempt runs the compensations, then ends it ``canceled``)."""

    kind: Literal["canceled", "canceling", "not_found", "already_terminal"]
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
    #: The run fails with ``RUN_DEADLINE_EXCEEDED`` if still live this long after the store's
    #: "now" at creation (``runs.deadline_at``).
    deadline: timedelta | None = None
    #: :func:`iterflow.core.codec.digest` of ``input``: the same idempotency key with another
    #: input is ``IDEMPOTENCY_CONFLICT`` (None: not checked).
    input_hash: str | None = None
    #: ``runs.limit_key``: the key the flow's concurrency and rate limits count the run under
    #: ("" flow-wide), None when the flow has no limits (:mod:`iterflow.core.limits`).
    limit_key: str | None = None
    #: ``runs.run_key``: the key a debounced or singleton start names the run by
    #: (:mod:`iterflow.core.debounce`; "" for the flow itself). None: neither.
    run_key: str | None = None
    #: Return the flow's live run with ``run_key`` instead of starting another.
    singleton: bool = False
    #: A debounced start (``delay`` is the quiet period): join the flow's run with ``run_key``
    #: that has not begun, keeping the ``"last"`` or the ``"first"`` input.
    debounce: Literal["last", "first"] | None = None

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
    #: A duration like ``delay``: the run fails with ``RUN_DEADLINE_EXCEEDED`` if still live
    #: this long after it was started (None: the flow's own ``deadline=``, if any).
    deadline: str | timedelta | int | float | None = None
    #: The run key of ``debounce``/``singleton`` (:mod:`iterflow.core.debounce`).
    key: str | None = None
    #: A quiet period (a duration like ``delay``): starts with the same key join one run.
    debounce: str | timedelta | int | float | None = None
    #: Which input a debounced run keeps: ``"last"`` or ``"first"``.
    debounce_keep: str = "last"
    #: A start while the key's run is live returns that run.
    singleton: bool = False


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What ``engine.purge`` (or one retention sweep) deleted, or with ``dry_run`` would delete:
    ``runs`` counts every run row, children included (their steps, signals, timers and events
    go with them); ``by_status`` counts the top-level runs by their status;
    ``schedule_events`` counts the schedules' decisions a sweep deleted
    (``Retention.schedule_events``)."""

    runs: int = 0
    by_status: dict[RunStatus, int] = field(default_factory=dict)
    dry_run: bool = False
    schedule_events: int = 0

    @property
    def top_level(self) -> int:
        """How many top-level runs (the rest of ``runs`` are their children)."""
        return sum(self.by_status.values())


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


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a worker registers when it starts (``flowctl workers``, ``explain``): ``flows`` are
    the ``name@version`` it can run."""

    id: str
    host: str
    pid: int
    flows: tuple[str, ...]
    queues: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A registered worker. ``stale``: no heartbeat for longer than the store was told (the
    worker was killed, or its host lost the database); a clean stop removes the row."""

    id: str
    host: str
    pid: int
    flows: tuple[str, ...]
    queues: tuple[str, ...]
    started_at: datetime
    heartbeat_at: datetime
    stale: bool = False


class RunQuery(TypedDict, total=False):
    """The filter keywords of ``Engine.list_runs`` / ``count_runs``, as taken by
    ``Engine.bulk``."""

    name: str | None
    status: RunStatus | str | Iterable[RunStatus | str] | None
    tag: str | None
    idempotency_key: str | None
    version: int | None
    tags: Iterable[str]
    created_after: datetime | None
    created_before: datetime | None
    finished_after: datetime | None
    finished_before: datetime | None
    parent: uuid.UUID | str | None
    schedule: str | None
    id_prefix: str | None


@dataclass(frozen=True, slots=True)
class BulkResult:
    """What ``engine.bulk`` did (or, with ``dry_run``, would do) to the runs a filter selects.

    ``matched``: runs the filter selected; ``acted``: those the action applied to (would apply
    to); ``outcomes``: how many ended with each result kind (``queued``, ``not_failed``,
    ``canceled``, ``already_terminal``...; with ``dry_run``: ``would_retry``, ``would_resume``,
    ``would_cancel`` and ``skipped``); ``run_ids``: the runs acted on, in list order;
    ``more``: the call stopped at its ``limit`` with runs left (call again for the rest).
    """

    action: Literal["retry", "cancel"]
    dry_run: bool
    matched: int
    acted: int
    outcomes: dict[str, int]
    run_ids: tuple[uuid.UUID, ...]
    more: bool = False
