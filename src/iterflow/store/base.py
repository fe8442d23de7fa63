"""The storage Protocol every store implements (PostgreSQL, in-memory)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from iterflow.core.errors import IdempotencyConflict, SignalLimitExceeded
from iterflow.core.limits import Gate, Limits
from iterflow.core.models import (
    CancelResult,
    ChildRecord,
    NewRun,
    RetryResult,
    RunDetail,
    RunFilter,
    RunRecord,
    RunStatus,
    SignalRecord,
    SignalResult,
    StartResult,
    StepRecord,
    SuspendPlan,
    TimerRecord,
    WorkerInfo,
    WorkerRecord,
)
from iterflow.core.scheduling import ScheduleEvent, ScheduleRecord, ScheduleSpec

__all__ = [
    "WORKER_PRUNE_SECONDS",
    "Claim",
    "DueSchedule",
    "Lease",
    "PurgeBatch",
    "ScheduleBatch",
    "ScheduleStore",
    "ScheduleWrite",
    "ScheduledStart",
    "Store",
    "WakeUp",
    "WorkerStore",
    "idempotency_conflict",
    "signal_limit",
]


def signal_limit(run_id: uuid.UUID, cap: int) -> SignalLimitExceeded:
    """The error both stores raise when a run already holds ``cap`` signals."""
    return SignalLimitExceeded(
        f"run {run_id} already holds {cap} signals (Settings.max_signals_per_run); this one "
        "was not stored. A flood of deliveries to one run is refused rather than stored",
        details={"limit": cap},
    )


def idempotency_conflict(name: str, key: str) -> IdempotencyConflict:
    """The error both stores raise when a start reuses ``key`` with another input."""
    return IdempotencyConflict(
        f"flow {name} already has a run started with idempotency key {key!r} and a different "
        "input; nothing was written. Use a new key for a new request (or the same input to "
        "get that run back)",
        details={"flow": name, "idempotency_key": key},
    )


@dataclass(frozen=True, slots=True)
class Lease:
    """Proof of ownership of one run for one attempt; every write is fenced by ``token``."""

    run_id: uuid.UUID
    token: uuid.UUID
    owner: str
    seconds: float
    #: The procrastinate job this attempt runs (the one a worker fetched, or the one a start
    #: claimed in its commit holds; None: none, as in the in-memory store): the attempt's last
    #: write (suspend, finish, park) deletes it in its transaction.
    job_id: int | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed run with everything replay needs, loaded in one round trip."""

    run: RunRecord
    lease: Lease
    history: Sequence[StepRecord]
    timers: Mapping[str, TimerRecord]
    inbox: Sequence[SignalRecord]
    db_now: datetime
    children: Mapping[str, ChildRecord] = field(default_factory=dict)
    #: When the run last became claimable by a transition of its own, read before this claim:
    #: its ``updated_at`` (its start, or the retry, resume, unpark or recovery that set it
    #: pending), or for a ``running`` run whose lease expired, that expiry.
    ready_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PurgeBatch:
    """What one :meth:`Store.purge` call deleted (or counted): ``top_level`` runs selected,
    ``runs`` rows in all (children included)."""

    top_level: int
    runs: int


@dataclass(frozen=True, slots=True)
class WakeUp:
    """A queued wake-up: due at ``scheduled_at`` (None = now)."""

    run_id: uuid.UUID
    scheduled_at: datetime | None
    priority: int = 0


class Store(Protocol):
    """Durable state of runs. Every status change is compare-and-set."""

    async def create_run(self, run: NewRun, *, conn: Any = None) -> StartResult:
        """Insert the run, its ``started`` event and its wake-up in one transaction.

        ``run.delay`` counts from the store's own clock (PostgreSQL's ``now()`` in that
        transaction), so the run's ``wake_at`` is exactly ``created_at + delay``. With ``conn``,
        join the caller's transaction. An existing idempotency key returns the existing run with
        ``created=False`` and writes nothing; an existing run id is ``DATA_REJECTED``.

        With ``run.run_key`` (:mod:`iterflow.core.debounce`), the starts of one (flow, key) are
        serialized; a ``debounce`` start joins the key's debounced run of its flow version no
        worker has begun (its input and limit key replaced for ``"last"``, its due time and
        queued wake-up moved to ``now + delay``)
        and a ``singleton`` start returns the key's live run, both with ``created=False``.
        """
        ...

    async def create_runs(self, runs: Sequence[NewRun], *, conn: Any = None) -> list[StartResult]:
        """:meth:`create_run` for each run, in order, in **one** transaction (``publish``):
        all of them or, on any refusal (``IDEMPOTENCY_CONFLICT``, ``DATA_REJECTED``), none.
        With ``conn`` it runs in a savepoint of the caller's transaction."""
        ...

    async def signal_with_start(
        self,
        run: NewRun,
        name: str,
        payload: Any,
        signal_key: str | None,
        *,
        max_signals: int,
        meta: Mapping[str, Any] | None = None,
    ) -> tuple[StartResult, SignalResult]:
        """Start ``run`` (or find the run its idempotency key names already) and deliver signal
        ``name`` to it as :meth:`deliver_signal` does, in one transaction: a run started now has
        it ``buffered``. Concurrent callers with one key start one run and each signal reaches
        it."""
        ...

    async def start_claimed(
        self, run: NewRun, owner: str, lease_seconds: float
    ) -> tuple[StartResult, Claim | None]:
        """:meth:`create_run` and the run's first :meth:`claim` by ``owner`` in **one**
        transaction, for a plain start (no ``conn``, run key, delay or limit key: the caller
        checks): the run is written ``running`` under a fresh lease, with its ``started`` event
        and no queued wake-up; the caller makes the attempt at once. The attempt holds the
        run's job lock as a fetched wake-up's does (``lease.job_id``, ended by its last write or
        :meth:`end_wake`), so a wake-up queued meanwhile waits for its end. If the caller dies
        first, the lease expires and the reconciler recovers the run like any other expired
        lease.
        An existing idempotency key returns that run with no claim and writes nothing."""
        ...

    async def claim(
        self, run_id: uuid.UUID, owner: str, lease_seconds: float, gate: Gate | None = None
    ) -> Claim | None:
        """Take the run if it is resumable (or running with an expired lease), and ``gate``
        (None: any flow, no limits) serves its flow version and admits it
        (:func:`iterflow.core.limits.admit`, counted across every worker).

        None, changing nothing, for a run that is not claimable or whose flow version the gate
        does not serve (a run in the engine's base queue moves to its flow version's queue). A
        limited run not admitted is **held**: ``held`` records why, no wake-up stays queued, and
        the first held runs of its flow and key are woken as the decision says."""
        ...

    async def release_limit(self, name: str, key: str, limits: Limits) -> int:
        """After an attempt of a run limited under (``name``, ``key``) ended: wake the held runs
        of that key there is room for now (:func:`iterflow.core.limits.release`), or the first
        in line when the rate window frees. Returns how many were woken."""
        ...

    async def renew(self, lease: Lease) -> None:
        """Extend the lease; raise :class:`LeaseLost` if it is gone."""
        ...

    async def checkpoint(
        self,
        lease: Lease,
        record: StepRecord,
        *,
        consume_signal: int | None = None,
        fire_timer: str | None = None,
        renew: bool = True,
    ) -> None:
        """Write one memo row (and its side marks) in one fenced transaction.

        With ``renew`` (an attempt's first checkpoint) the same transaction renews the lease and
        resets the run's no-progress count. Later checkpoints of the attempt pass False: the
        write must still be fenced by the lease, but need not renew it (the worker's renewer
        keeps it alive), which spares PostgreSQL a new version of the run row per step. A
        checkpoint that consumes a signal, fires a timer or records a retried step
        (``attempts > 1``) renews and resets all the same.

        A memo at a position already holding a ``retrying`` memo updates it (status, output,
        error, attempts, finish time); at a position holding another memo, a renewing checkpoint
        changes nothing (the first writer wins) and a plain one is ``DATA_REJECTED``, as is a
        cursor key the run already recorded at another position.
        """
        ...

    async def spawn_child(self, lease: Lease, child: NewRun) -> bool:
        """Create a child run (and its wake-up), fenced by the parent's lease; idempotent on the
        child's id. Returns True if it was created now."""
        ...

    async def suspend(self, lease: Lease, plan: SuspendPlan) -> None:
        """End the attempt: status, timer, event and wake-up in one fenced transaction."""
        ...

    async def finish(
        self, lease: Lease, status: RunStatus, output: Any, error: dict[str, Any] | None
    ) -> None:
        """Terminal write: status, output or error, event and NOTIFY in one transaction.

        ``status`` is ``done`` or ``failed``, or, after compensations, ``canceled`` or
        ``compensation_failed`` (``ValueError`` otherwise: a plain cancel is written by
        :meth:`cancel`)."""
        ...

    async def fail_unclaimed(self, lease: Lease, error: dict[str, Any]) -> None:
        """Fail a claimed run before its body ran (unknown flow, bad stored input...)."""
        ...

    async def end_wake(self, lease: Lease) -> None:
        """End the wake-up job of an attempt that ended without a last write of its own (its
        run was canceled meanwhile, or its lease lost): ``lease.job_id``, when it is still
        ``doing`` or the reconciler released it meanwhile (``failed``), and nothing else. A
        worker leaves this to procrastinate's ``finish_job`` for the jobs it fetched; a start
        claimed at once calls it for the job it holds."""
        ...

    async def park(self, lease: Lease, error: dict[str, Any]) -> None:
        """Set the claimed run ``parked`` with ``error`` (drift or unknown version, ``park``
        policy) and a ``parked`` event, fenced by the lease. Memos, timers and signals stay."""
        ...

    async def requeue_parked(self, names: Sequence[str]) -> int:
        """Set the parked runs of these flows ``pending`` and wake them (a worker start
        re-checks them against the code it now has); return how many."""
        ...

    async def deliver_signal(
        self,
        run_id: uuid.UUID,
        name: str,
        payload: Any,
        idempotency_key: str | None,
        *,
        max_signals: int,
        meta: Mapping[str, Any] | None = None,
    ) -> SignalResult:
        """Put a signal in the run's inbox, waking the run if it waits for it. ``meta`` (what the
        hooks injected where it was sent) is stored with it (:attr:`SignalRecord.meta`).

        ``duplicate`` if the key was delivered to this run before (even once the run is
        terminal), ``closed`` for a new key on a terminal run; ``SIGNAL_LIMIT_EXCEEDED`` if the
        run already holds ``max_signals`` signals.
        """
        ...

    async def cancel(
        self, run_id: uuid.UUID, reason: str, *, compensate: bool = False
    ) -> CancelResult:
        """Cancel a live run and its non-detached live descendants in one transaction.

        ``compensate=True``: the descendants are canceled, but the run itself is set
        ``pending`` with the request in ``meta`` (:func:`~iterflow.core.decisions.cancel_meta`),
        its lease cleared (an attempt in flight is fenced), a ``cancel_requested`` event and a
        wake-up: its next attempt runs its compensations and ends it ``canceled``
        (``canceling``)."""
        ...

    async def retry(self, run_id: uuid.UUID) -> RetryResult:
        """Reset a failed (or ``compensation_failed``) run so it replays from its failed step
        (:func:`~iterflow.core.decisions.retry_cut`); a parked run is only set ``pending`` and
        woken (nothing of its history is removed)."""
        ...

    async def resume(self, run_id: uuid.UUID) -> RetryResult:
        """Set a canceled run ``pending`` with its whole history kept (memo rows, timers,
        consumed signals), resume its canceled children whose invoke has no memo
        (:func:`~iterflow.core.decisions.resume_children`), record a ``resumed`` event and wake
        it, in one transaction. ``missing``, or ``not_failed`` with the status of a run that is
        not canceled, or was canceled after its compensations ran (its completed steps were
        undone: nothing to resume; nothing changes)."""
        ...

    async def fork(
        self, run_id: uuid.UUID, new_id: uuid.UUID, from_step: str | None
    ) -> StartResult | None:
        """Create run ``new_id``: the source's flow, version, input, tags and priority, its
        memo rows before the cut of :func:`~iterflow.core.decisions.fork_cut` copied, meta
        ``{"forked_from", "fork_step"}``, a ``started`` and a ``forked`` event and a wake-up, in
        one transaction (``FORK_STEP_UNKNOWN`` writes nothing). None if the source is missing."""
        ...

    async def expire(self, lease: Lease, error: dict[str, Any]) -> None:
        """Fail the claimed run at its deadline (``RUN_DEADLINE_EXCEEDED``), fenced by the
        lease, and cancel its live non-detached descendants, in one transaction."""
        ...

    async def purge(
        self,
        status: RunStatus,
        older_than: timedelta,
        *,
        flow: str | None = None,
        exclude: Sequence[str] = (),
        limit: int,
        dry_run: bool = False,
    ) -> PurgeBatch:
        """Delete up to ``limit`` top-level runs that finished with ``status`` more than
        ``older_than`` ago (on the store's clock), oldest first, of flow ``flow`` (None: any
        flow not in ``exclude``), each with its descendants and every row of theirs (steps,
        signals, timers, events), in one transaction. A run with a live descendant (a detached
        child still running) is left alone; rows another transaction holds are skipped
        (``SKIP LOCKED``), so live runs are never locked or waited for. ``dry_run`` deletes
        nothing and counts every matching run (``limit`` ignored)."""
        ...

    async def recover_expired(self, limit: int) -> int:
        """Re-drive up to ``limit`` runs whose lease expired; return how many."""
        ...

    async def release_orphaned_jobs(self, stale_seconds: float) -> int:
        """Delete wake-up jobs left ``doing`` while no lease owns their run, and reconciler sweeps
        left ``doing``: their worker stopped heartbeating, or they have been ``doing`` for
        ``stale_seconds`` (a lost ``finish_job``). Return how many."""
        ...

    async def rewake_stranded(self, limit: int) -> int:
        """Enqueue a wake-up for up to ``limit`` live runs that need one and have none."""
        ...

    async def list_runs(
        self,
        *,
        name: str | None,
        statuses: Sequence[RunStatus],
        tag: str | None,
        limit: int,
        before_seq: int | None,
        idempotency_key: str | None = None,
        filters: RunFilter | None = None,
        after_seq: int | None = None,
    ) -> list[RunRecord]:
        """Runs newest first, keyset-paginated on ``seq``; ``idempotency_key`` finds the run a
        caller started with that key (one per flow name). ``filters`` narrows further (with the
        keyword filters added); ``after_seq`` lists oldest first, after that ``seq``."""
        ...

    async def count_runs(self, filters: RunFilter) -> dict[RunStatus, int]:
        """How many runs ``filters`` selects, per status (statuses without runs left out)."""
        ...

    async def changes_since(
        self, since: int | None, limit: int
    ) -> tuple[list[tuple[uuid.UUID, RunStatus]], int]:
        """Runs with an event after the change token ``since`` (an events id), oldest change
        first (each run once, with its status now), and the token to pass next. ``since=None``
        returns no runs and the current token."""
        ...

    async def running_since(
        self, since: datetime | None, limit: int
    ) -> tuple[list[uuid.UUID], datetime]:
        """Runs ``running`` now whose row was written at or after ``since`` (a claim, which
        writes no event, or a checkpoint), oldest write first, and the mark to pass next: the
        database's clock now, or the last run's write time when ``limit`` cut the list.
        ``since=None`` returns no runs and the database's clock."""
        ...

    async def pending_wake(self, run_id: uuid.UUID) -> WakeUp | None:
        """The run's queued wake-up, if any."""
        ...

    async def get_run(self, run_id: uuid.UUID) -> RunRecord | None:
        """One run row."""
        ...

    async def detail(self, run_id: uuid.UUID) -> RunDetail | None:
        """A run with its steps, signals, timers and events."""
        ...


# -- schedules ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DueSchedule:
    """A due schedule, locked for this sweep, with the live state of its last run."""

    record: ScheduleRecord
    previous_live: bool


@dataclass(frozen=True, slots=True)
class ScheduledStart:
    """A run to start for a tick (its idempotency key, tags, meta and due time are set)."""

    tick: datetime
    run: NewRun


@dataclass(frozen=True, slots=True)
class ScheduleWrite:
    """What :meth:`ScheduleBatch.apply` writes for one schedule, in the sweep's transaction:
    ``cancel_previous`` (the schedule's last run, with its live descendants), the runs of
    ``starts`` (each with its ``started`` run event and wake-up job, plus a ``started``
    schedule event), the new state and ``events``."""

    starts: tuple[ScheduledStart, ...]
    cancel_previous: bool
    last_tick: datetime | None
    next_tick: datetime | None
    buffered_tick: datetime | None
    events: tuple[ScheduleEvent, ...] = ()


class ScheduleBatch(Protocol):
    """The due schedules of one sweep, locked until the sweep's transaction ends.

    ``now`` is the store's clock (PostgreSQL's ``now()`` of the transaction) unless the sweep
    was given one. The caller computes each schedule's write from ``due`` (the pure core) and
    calls :meth:`apply` once per schedule; leaving the ``async with`` commits everything
    applied, an exception rolls it all back.
    """

    now: datetime
    due: Sequence[DueSchedule]

    async def apply(self, schedule_id: str, write: ScheduleWrite) -> list[StartResult]:
        """Write one schedule's plan; returns the start results, in ``write.starts`` order (an
        existing idempotency key returns the existing run, ``created=False``)."""
        ...


class ScheduleStore(Protocol):
    """Schedules and their decisions. A tick's run is started with the idempotency key
    ``tick_idempotency_key(id, tick)``, so racing sweeps or backfills never start it twice."""

    async def schedule_now(self) -> datetime:
        """The store's clock (PostgreSQL's ``now()``)."""
        ...

    async def create_schedule(
        self, spec: ScheduleSpec, *, last_tick: datetime | None, next_tick: datetime | None
    ) -> bool:
        """Insert the schedule (and a ``created`` event) unless its id exists; True if created."""
        ...

    async def update_schedule(
        self,
        spec: ScheduleSpec,
        *,
        last_tick: datetime | None,
        next_tick: datetime | None,
        paused: bool,
    ) -> bool:
        """Replace a schedule's definition and state (an ``updated`` event); False if absent.
        A buffered tick is dropped."""
        ...

    async def set_schedule_paused(
        self,
        schedule_id: str,
        paused: bool,
        *,
        event: ScheduleEvent,
        last_tick: datetime | None = None,
        next_tick: datetime | None = None,
    ) -> bool:
        """Pause or resume (resuming sets ``last_tick``/``next_tick``), recording ``event``;
        False if absent."""
        ...

    async def delete_schedule(self, schedule_id: str) -> bool:
        """Delete a schedule and its events (its runs stay); False if absent."""
        ...

    async def get_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        """One schedule."""
        ...

    async def list_schedules(self) -> list[ScheduleRecord]:
        """Every schedule, by id."""
        ...

    async def schedule_events(self, schedule_id: str, *, limit: int) -> list[ScheduleEvent]:
        """A schedule's newest ``limit`` events, newest first."""
        ...

    async def purge_schedule_events(self, older_than: timedelta, *, limit: int) -> int:
        """Delete, of the ``limit`` oldest schedule events (every schedule's, by id), those
        recorded more than ``older_than`` ago (the store's clock), in one transaction; return
        how many. A batch never reads more than ``limit`` events: the caller goes on while a
        batch comes back full."""
        ...

    def sweep_schedules(
        self, *, limit: int, now: datetime | None = None
    ) -> AbstractAsyncContextManager[ScheduleBatch]:
        """Lock up to ``limit`` due schedules (``FOR UPDATE SKIP LOCKED``: concurrent sweeps
        take disjoint rows), oldest ``next_tick`` first, in one transaction. Due: not paused and
        ``next_tick <= now``, or a buffered tick whose previous run is no longer live."""
        ...

    async def start_scheduled(
        self, schedule_id: str, starts: Sequence[ScheduledStart], *, event: str
    ) -> list[StartResult]:
        """Start runs of a schedule outside the sweep (``triggered``, ``backfilled``) in one
        transaction, recording one ``event`` per run; a ``triggered`` run becomes the
        schedule's last run."""
        ...


# -- workers --------------------------------------------------------------------------------

#: A worker row without a heartbeat for this long (a killed worker) is deleted when any worker
#: registers; until then it is listed as stale.
WORKER_PRUNE_SECONDS = 86_400.0


class WorkerStore(Protocol):
    """The registry of running workers (``flowctl workers``, ``flowctl explain``): a row per
    worker, written when it starts and at each heartbeat, removed when it stops cleanly."""

    async def register_worker(self, info: WorkerInfo) -> None:
        """Insert or refresh the worker's row (its heartbeat is the store's clock)."""
        ...

    async def remove_worker(self, worker_id: str) -> None:
        """Delete the worker's row (a clean stop)."""
        ...

    async def list_workers(self, stale_seconds: float) -> list[WorkerRecord]:
        """Every registered worker, oldest first; ``stale`` when its last heartbeat is older than
        ``stale_seconds`` on the store's clock."""
        ...
