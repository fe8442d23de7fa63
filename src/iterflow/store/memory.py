"""The in-memory store: the same Protocol and meaning as PostgreSQL, for users' unit tests.

Every method runs without awaiting anything, so on one event loop each call is atomic, like one
PostgreSQL transaction. Wake-ups live in an in-process queue that ``Engine.in_memory()`` drains;
time comes from a clock the tests can move (:class:`iterflow.testing.FakeClock`): it plays the part
of PostgreSQL's ``now()``. It passes the same contract suite as the PostgreSQL store
(``tests/contract``), which asserts the rows, the event data and the side effects of every write.
Each kind of row is numbered from its own counter, as each PostgreSQL table has its own sequence;
PostgreSQL may leave gaps (a refused or conflicting insert consumes a number), which this store
does not reproduce: ids are unique and increasing per table, nothing more is promised.

At ~880 lines it is over the usual module size on purpose: it is the twin of ``postgres.py``,
``pg_schedules.py`` and their statements together (one method per Store and ScheduleStore
operation, each the meaning of one statement), and reads best as one class beside them; the data
checks at its end stand for PostgreSQL's. (A split into run and schedule halves, like the
PostgreSQL store's mixin, is the next step if it grows.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from iterflow.core import keys
from iterflow.core.codec import check_data
from iterflow.core.debounce import DEBOUNCE_META_KEY
from iterflow.core.decisions import (
    cancel_meta,
    fork_cut,
    forked_run,
    resume_children,
    retry_cut,
    was_compensated,
)
from iterflow.core.errors import ConfigInvalid, DataRejected, LeaseLost, PayloadInvalid
from iterflow.core.limits import Admission, Gate, Limits, LimitState, admit, release
from iterflow.core.models import (
    CancelResult,
    ChildRecord,
    EventRecord,
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
    StepStatus,
    SuspendPlan,
    TimerRecord,
    WorkerInfo,
    WorkerRecord,
)
from iterflow.core.scheduling import ScheduleEvent, ScheduleRecord, ScheduleSpec
from iterflow.core.states import (
    RESUMABLE_STATUSES,
    RETRYABLE_STATUSES,
    TERMINAL_STATUSES,
    TIMED_STATUSES,
    Canceled,
    CancelRequested,
    EventPayload,
    Forked,
    Parked,
    Recovered,
    Resumed,
    Retried,
    Rewoken,
    SignalReceived,
    Started,
    Suspended,
    Unparked,
    finished_event,
)
from iterflow.store.base import (
    WORKER_PRUNE_SECONDS,
    Claim,
    DueSchedule,
    Lease,
    PurgeBatch,
    ScheduledStart,
    ScheduleWrite,
    WakeUp,
    idempotency_conflict,
    signal_limit,
)

__all__ = ["MemoryStore"]

_SURROGATE = re.compile("[\\ud800-\\udfff]")


@dataclasses.dataclass
class _Run:
    id: uuid.UUID
    seq: int
    name: str
    version: int
    input: Any
    created_at: datetime
    idempotency_key: str | None = None
    parent_run_id: uuid.UUID | None = None
    parent_cursor_key: str | None = None
    tags: tuple[str, ...] = ()
    priority: int = 0
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    status: RunStatus = RunStatus.PENDING
    output: Any = None
    error: dict[str, Any] | None = None
    lease_token: uuid.UUID | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    claims: int = 0
    stalled_claims: int = 0
    waiting_for: str | None = None
    wake_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    deadline_at: datetime | None = None
    input_hash: str | None = None
    run_key: str | None = None
    limit_key: str | None = None
    held: dict[str, Any] | None = None

    def record(self) -> RunRecord:
        return RunRecord(
            id=self.id,
            name=self.name,
            version=self.version,
            status=self.status,
            input=self.input,
            output=self.output,
            error=self.error,
            idempotency_key=self.idempotency_key,
            parent_run_id=self.parent_run_id,
            parent_cursor_key=self.parent_cursor_key,
            tags=self.tags,
            priority=self.priority,
            lease_owner=self.lease_owner,
            lease_expires_at=self.lease_expires_at,
            claims=self.claims,
            stalled_claims=self.stalled_claims,
            waiting_for=self.waiting_for,
            wake_at=self.wake_at,
            created_at=self.created_at,
            updated_at=self.updated_at or self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            seq=self.seq,
            meta=dict(self.meta),
            deadline_at=self.deadline_at,
            limit_key=self.limit_key,
            held=None if self.held is None else dict(self.held),
        )


class MemoryStore:
    """The :class:`~iterflow.store.base.Store` in process memory."""

    def __init__(
        self,
        clock: Callable[[], datetime] | None = None,
        *,
        on_terminal: Callable[[str], None] | None = None,
    ) -> None:
        """``on_terminal(run_id)`` is called when a run ends (the engine wakes its waiters)."""
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self._on_terminal = on_terminal
        self._runs: dict[uuid.UUID, _Run] = {}
        self._steps: dict[uuid.UUID, dict[int, StepRecord]] = {}
        self._signals: dict[uuid.UUID, list[SignalRecord]] = {}
        self._timers: dict[uuid.UUID, dict[str, TimerRecord]] = {}
        self._events: dict[uuid.UUID, list[EventRecord]] = {}
        self._wakes: dict[uuid.UUID, WakeUp] = {}
        self._doing: set[uuid.UUID] = set()
        self._children: dict[uuid.UUID, list[uuid.UUID]] = {}  # parent -> child run ids
        self._idempotent: dict[tuple[str, str], uuid.UUID] = {}  # (name, key) -> run id
        self._seq = 0  # runs.seq
        self._signal_ids = 0  # signals.id
        self._event_ids = 0  # events.id
        self._schedule_event_ids = 0  # schedule_events.id
        self._schedules: dict[str, ScheduleRecord] = {}
        self._schedule_events: dict[str, list[ScheduleEvent]] = {}
        self._swept: set[str] = set()  # schedules locked by a sweep in progress
        self._workers: dict[str, WorkerRecord] = {}
        self._rate_windows: dict[tuple[str, str], tuple[datetime, ...]] = {}  # rate_windows

    # -- helpers ------------------------------------------------------------------------------

    def _children_of(self, parent: uuid.UUID) -> list[_Run]:
        return [self._runs[c] for c in self._children.get(parent, ())]

    def _event(
        self, run_id: uuid.UUID, type_: str, data: Any = None, key: str | None = None
    ) -> None:
        self._event_ids += 1
        self._events.setdefault(run_id, []).append(
            EventRecord(id=self._event_ids, type=type_, cursor_key=key, data=data, at=self.clock())
        )

    def _log(self, run_id: uuid.UUID, payload: EventPayload, key: str | None = None) -> None:
        """Append a typed event to the run's timeline."""
        self._event(run_id, payload.type.value, payload.to_data(), key)

    def _wake(self, run_id: uuid.UUID, at: datetime | None, priority: int) -> None:
        """Queue a wake-up; a second one merges, keeping the earliest due time."""
        current = self._wakes.get(run_id)
        if current is None:
            self._wakes[run_id] = WakeUp(run_id, at, priority)
            return
        merged_at = (
            None if current.scheduled_at is None or at is None else min(current.scheduled_at, at)
        )
        self._wakes[run_id] = WakeUp(run_id, merged_at, max(current.priority, priority))

    def _fenced(self, lease: Lease) -> _Run:
        run = self._runs.get(lease.run_id)
        if run is None or run.status is not RunStatus.RUNNING or run.lease_token != lease.token:
            raise LeaseLost(lease.run_id)
        return run

    def _renewed(self, lease: Lease) -> _Run:
        """The leased run with its lease renewed, as a write fenced by the lease does."""
        run = self._fenced(lease)
        now = self.clock()
        run.lease_expires_at = now + timedelta(seconds=lease.seconds)
        run.updated_at = now
        return run

    def _terminal(self, run: _Run, status: RunStatus, output: Any, error: Any) -> None:
        now = self.clock()
        run.status = status
        run.output = output
        run.error = error
        run.finished_at = run.updated_at = now
        run.lease_token = run.lease_owner = run.lease_expires_at = None
        run.waiting_for = None
        run.wake_at = None
        if self._on_terminal is not None:
            self._on_terminal(str(run.id))

    # -- the in-process queue (used by Engine.in_memory's driver) -------------------------------

    def take_due_wake(self) -> uuid.UUID | None:
        """Pop the next due wake-up whose run is not being executed (priority, then age)."""
        now = self.clock()
        due = [
            w
            for w in self._wakes.values()
            if (w.scheduled_at is None or w.scheduled_at <= now) and w.run_id not in self._doing
        ]
        if not due:
            return None
        wake = max(due, key=lambda w: w.priority)
        del self._wakes[wake.run_id]
        self._doing.add(wake.run_id)
        return wake.run_id

    def wake_done(self, run_id: uuid.UUID) -> None:
        """The attempt of a taken wake-up has ended."""
        self._doing.discard(run_id)

    # -- start --------------------------------------------------------------------------------

    async def create_run(self, run: NewRun, *, conn: Any = None) -> StartResult:
        existing = self._check_start(run, conn)
        if existing is not None:
            return StartResult(existing.id, False, existing.status)
        if run.run_key is not None and (keyed := self._keyed_start(run)) is not None:
            return keyed
        if run.id in self._runs:
            raise _duplicate("run id", str(run.id))
        now = self.clock()
        wake_at = run.wake_at if run.delay is None else now + run.delay
        self._insert(dataclasses.replace(run, wake_at=wake_at, delay=None), now)
        # PostgreSQL's start statement spells the due time in UTC
        delayed_until = None if wake_at is None else _utc(wake_at).isoformat()
        self._log(run.id, Started(version=run.version, delayed_until=delayed_until))
        self._wake(run.id, wake_at, run.priority)
        return StartResult(run.id, True, RunStatus.PENDING)

    async def start_claimed(
        self, run: NewRun, owner: str, lease_seconds: float
    ) -> tuple[StartResult, Claim | None]:
        started = await self.create_run(run)
        if not started.created:
            return started, None
        del self._wakes[run.id]  # the claim below is the start's wake-up
        claim = await self.claim(run.id, owner, lease_seconds)
        return dataclasses.replace(started, status=RunStatus.RUNNING), claim

    def _check_start(self, run: NewRun, conn: Any) -> _Run | None:
        """What PostgreSQL refuses of a start (``DATA_REJECTED``, ``IDEMPOTENCY_CONFLICT``),
        checked before anything is written; the run its idempotency key names, if any."""
        if conn is not None:
            raise ConfigInvalid("conn= joins a PostgreSQL transaction; the memory store has none")
        _storable(
            "run",
            run.input,
            run.meta,
            texts=(run.name, run.idempotency_key, run.run_key, *run.tags),
            ints=(run.priority, run.version),
        )
        if run.idempotency_key is None:
            return None
        existing_id = self._idempotent.get((run.name, run.idempotency_key))
        if existing_id is None:
            return None
        existing = self._runs[existing_id]
        if _conflicts(existing.input_hash, run.input_hash):
            raise idempotency_conflict(run.name, run.idempotency_key)
        return existing

    def _keyed_start(self, run: NewRun) -> StartResult | None:
        """A debounced start joins the key's run of its flow version that has not begun (its
        input and limit key, quiet period and queued wake-up renewed); a singleton start returns
        the key's live run. None: insert (PostgreSQL's ``pg_starts.py``, serialized there by an
        advisory lock)."""
        live = [
            r
            for r in self._runs.values()
            if r.name == run.name
            and r.run_key == run.run_key
            and r.finished_at is None
            and r.status not in TERMINAL_STATUSES
        ]
        if run.debounce is not None:
            waiting = [
                r
                for r in live
                if r.version == run.version
                and r.status is RunStatus.PENDING
                and r.started_at is None
                and DEBOUNCE_META_KEY in r.meta
            ]
            if waiting:
                target = max(waiting, key=lambda r: r.seq)
                now = self.clock()
                if run.debounce == "last":
                    target.input, target.limit_key = run.input, run.limit_key
                target.wake_at = now + (run.delay or timedelta(0))
                target.updated_at = now
                if target.id in self._wakes:
                    self._wakes[target.id] = WakeUp(target.id, target.wake_at, target.priority)
                return StartResult(target.id, False, RunStatus.PENDING)
        if run.singleton and live:
            newest = max(live, key=lambda r: r.seq)
            return StartResult(newest.id, False, newest.status)
        return None

    async def create_runs(self, runs: Sequence[NewRun], *, conn: Any = None) -> list[StartResult]:
        for run in runs:  # all or nothing, as one PostgreSQL transaction
            self._check_start(run, conn)
        return [await self.create_run(run) for run in runs]

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
        existing = self._check_start(run, None)
        if existing is not None:
            started = StartResult(existing.id, False, existing.status)
        else:
            _storable("signal", payload, texts=(name, signal_key))  # refused before the start
            started = await self.create_run(run)
        delivered = await self.deliver_signal(
            started.run_id, name, payload, signal_key, max_signals=max_signals, meta=meta
        )
        return started, delivered

    def _insert(self, run: NewRun, now: datetime) -> None:
        self._seq += 1
        self._runs[run.id] = _Run(
            id=run.id,
            seq=self._seq,
            name=run.name,
            version=run.version,
            input=run.input,
            created_at=now,
            idempotency_key=run.idempotency_key,
            parent_run_id=run.parent_run_id,
            parent_cursor_key=run.parent_cursor_key,
            tags=run.tags,
            priority=run.priority,
            meta=dict(run.meta),
            wake_at=run.wake_at,
            deadline_at=None if run.deadline is None else now + run.deadline,
            input_hash=run.input_hash,
            run_key=run.run_key,
            limit_key=run.limit_key,
        )
        if run.parent_run_id is not None:
            self._children.setdefault(run.parent_run_id, []).append(run.id)
        if run.idempotency_key is not None:
            self._idempotent[(run.name, run.idempotency_key)] = run.id

    # -- attempts -----------------------------------------------------------------------------

    async def claim(
        self, run_id: uuid.UUID, owner: str, lease_seconds: float, gate: Gate | None = None
    ) -> Claim | None:
        run = self._runs.get(run_id)
        now = self.clock()
        if run is None:
            return None
        expired = (
            run.status is RunStatus.RUNNING
            and run.lease_expires_at is not None
            and run.lease_expires_at < now
        )
        if run.status not in RESUMABLE_STATUSES and not expired:
            return None
        if gate is not None and not gate.serves(run.name, run.version):
            return None  # left queued for a worker that serves it (no queues in memory)
        key = run.limit_key
        limits = None if gate is None or key is None else gate.limits_of(run.name, run.version)
        decision = None
        if limits is not None and key is not None:
            decision = admit(limits, self._limit_state(run.name, key, run.id), now, key=key)
            if not decision.admitted:
                since = (run.held or {}).get("since") or _utc(now).isoformat()
                run.held = {**(decision.held or {}), "since": since}
                self._wake_line(run.name, key, run.id, limits, decision)
                return None
        run.held = None
        if decision is not None and limits is not None and key is not None:
            self._wake_line(run.name, key, run.id, limits, decision)
        ready_at = run.lease_expires_at if expired else (run.updated_at or run.created_at)
        if expired:  # taken from a lost attempt, as the reconciler's recovery would
            run.waiting_for = keys.WAITING_RECOVERY
        token = uuid.uuid4()
        run.status = RunStatus.RUNNING
        run.lease_token, run.lease_owner = token, owner
        run.lease_expires_at = now + timedelta(seconds=lease_seconds)
        run.claims += 1
        run.stalled_claims += 1
        run.started_at = run.started_at or now
        run.updated_at = now
        steps = self._steps.get(run_id, {})
        memo_keys = {s.cursor_key for s in steps.values()}
        children = {
            c.parent_cursor_key: ChildRecord(
                c.id, c.parent_cursor_key, c.status, c.output, c.error, c.finished_at
            )
            for c in self._children_of(run_id)
            if c.status in TERMINAL_STATUSES
            and c.parent_cursor_key is not None
            and c.parent_cursor_key not in memo_keys
        }
        return Claim(
            run=run.record(),
            lease=Lease(run_id=run_id, token=token, owner=owner, seconds=lease_seconds),
            history=[steps[p] for p in sorted(steps)],
            timers={k: t for k, t in self._timers.get(run_id, {}).items() if t.fired_at is None},
            inbox=[s for s in self._signals.get(run_id, []) if s.consumed_at is None],
            db_now=now,
            children=children,
            ready_at=ready_at,
        )

    def _limit_state(self, name: str, key: str, me: uuid.UUID | None) -> LimitState:
        """:class:`LimitState` of (``name``, ``key``), as ``Statements.limit_state`` reads it."""
        live = woken = held = 0
        for r in self._runs.values():
            if r.name != name or r.limit_key != key or r.id == me:
                continue
            if r.status is RunStatus.RUNNING:
                live += 1
            elif r.held is not None and r.status in RESUMABLE_STATUSES:
                if r.id in self._wakes or r.id in self._doing:
                    woken += 1
                else:
                    held += 1
        return LimitState(live, self._rate_windows.get((name, key), ()), woken, held)

    def _wake_line(
        self, name: str, key: str, me: uuid.UUID | None, limits: Limits, decision: Admission
    ) -> int:
        """Store the rate window and wake the held line as ``decision`` says (``pg_limits``)."""
        if limits.rate is not None and decision.admitted:
            self._rate_windows[(name, key)] = decision.starts
        n, at = decision.wake_now, None
        if not n and decision.wake_at is not None:
            n, at = 1, decision.wake_at
        line = sorted(
            (
                r
                for r in self._runs.values()
                if r.name == name
                and r.limit_key == key
                and r.held is not None
                and r.status in RESUMABLE_STATUSES
                and (r.id == me or (r.id not in self._wakes and r.id not in self._doing))
            ),
            key=lambda r: (-r.priority, r.seq),
        )[:n]
        for r in line:
            self._wake(r.id, at, r.priority)
        return len(line)

    async def release_limit(self, name: str, key: str, limits: Limits) -> int:
        decision = release(limits, self._limit_state(name, key, None), self.clock())
        return self._wake_line(name, key, None, limits, decision)

    def _held_head(self, run: _Run) -> bool:
        """The reconciler wakes a held run first in its line when nothing else would."""
        for o in self._runs.values():
            if o.name != run.name or o.limit_key != run.limit_key or o.id == run.id:
                continue
            if o.status is RunStatus.RUNNING:
                return False
            if o.held is not None and o.status in RESUMABLE_STATUSES:
                if o.id in self._wakes or o.id in self._doing:
                    return False
                if (-o.priority, o.seq) < (-run.priority, run.seq):
                    return False
        return True

    async def renew(self, lease: Lease) -> None:
        run = self._fenced(lease)  # the expiry only, like PostgreSQL's renew (not updated_at)
        run.lease_expires_at = self.clock() + timedelta(seconds=lease.seconds)

    async def checkpoint(
        self,
        lease: Lease,
        record: StepRecord,
        *,
        consume_signal: int | None = None,
        fire_timer: str | None = None,
        renew: bool = True,
    ) -> None:
        _storable("step", record.output, record.error, texts=(record.cursor_key, record.label))
        run = self._fenced(lease)
        steps = self._steps.setdefault(run.id, {})
        current = steps.get(record.position)
        # As PostgreSQL's checkpoint statements: a checkpoint that marks a signal or a timer, or
        # replaces a retried step's memo (attempts > 1), renews the lease and marks progress
        # like an attempt's first one; any other later checkpoint only inserts a fresh memo.
        renewing = renew or record.attempts > 1 or consume_signal is not None
        renewing = renewing or fire_timer is not None
        if current is None and any(s.cursor_key == record.cursor_key for s in steps.values()):
            raise _duplicate("cursor key", record.cursor_key)
        if current is not None and not renewing:
            raise _duplicate("step position", str(record.position))
        now = self.clock()
        if renewing:
            run.lease_expires_at = now + timedelta(seconds=lease.seconds)
            run.stalled_claims = 0
            run.updated_at = now
        if current is None:
            steps[record.position] = dataclasses.replace(record, finished_at=now)
        elif current.status is StepStatus.RETRYING:  # its identity and start time stay
            steps[record.position] = dataclasses.replace(
                current,
                status=record.status,
                output=record.output,
                error=record.error,
                attempts=record.attempts,
                finished_at=now,
            )
        if consume_signal is not None:
            inbox = self._signals.get(run.id, [])
            for i, sig in enumerate(inbox):
                if sig.id == consume_signal and sig.consumed_at is None:
                    inbox[i] = dataclasses.replace(
                        sig, consumed_by=record.cursor_key, consumed_at=now
                    )
        if fire_timer is not None:
            timers = self._timers.get(run.id, {})
            timer = timers.get(fire_timer)
            if timer is not None and timer.fired_at is None:
                timers[fire_timer] = dataclasses.replace(timer, fired_at=now)

    async def spawn_child(self, lease: Lease, child: NewRun) -> bool:
        _storable("child run", child.input, child.meta, texts=(child.name, *child.tags))
        self._renewed(lease)
        if child.id in self._runs:
            return False
        # A child is due at once, has no idempotency key and belongs to the leased run.
        spawned = dataclasses.replace(
            child, parent_run_id=lease.run_id, idempotency_key=None, wake_at=None, delay=None
        )
        self._insert(spawned, self.clock())
        self._log(child.id, Started(version=child.version, parent=str(lease.run_id)))
        self._wake(child.id, None, child.priority)
        return True

    async def suspend(self, lease: Lease, plan: SuspendPlan) -> None:
        run = self._fenced(lease)
        run.status = plan.status
        run.waiting_for = plan.waiting_for
        # The deadline is one more due time: the run wakes at the earlier of the two.
        dues = [t for t in (plan.wake_at, run.deadline_at) if t is not None]
        run.wake_at = min(dues) if dues else None
        run.lease_token = run.lease_owner = run.lease_expires_at = None
        run.updated_at = self.clock()
        if plan.progress:
            run.stalled_claims = 0
        timers = self._timers.setdefault(run.id, {})
        for timer in plan.new_timers:
            timers.setdefault(timer.cursor_key, timer)
        wake_at = plan.wake_at.isoformat() if plan.wake_at else None
        self._log(run.id, Suspended(reason=plan.reason, wake_at=wake_at), plan.cursor_key)
        if run.wake_at is not None:
            self._wake(run.id, run.wake_at, run.priority)

    async def finish(
        self, lease: Lease, status: RunStatus, output: Any, error: dict[str, Any] | None
    ) -> None:
        _storable("run result", output, error)
        event = finished_event(status, error, str(lease.run_id))
        run = self._fenced(lease)
        self._terminal(run, status, output, error)
        self._log(run.id, event)
        if run.parent_run_id is not None:
            self._wake(run.parent_run_id, None, 0)

    async def end_wake(self, lease: Lease) -> None:
        return None  # attempts here hold no job (the in-process queue tracks them: wake_done)

    async def fail_unclaimed(self, lease: Lease, error: dict[str, Any]) -> None:
        await self.finish(lease, RunStatus.FAILED, None, error)

    async def expire(self, lease: Lease, error: dict[str, Any]) -> None:
        await self.finish(lease, RunStatus.FAILED, None, error)
        message = str(error.get("message", "deadline exceeded"))
        self._cancel_tree(self._runs[lease.run_id], message)

    async def park(self, lease: Lease, error: dict[str, Any]) -> None:
        _storable("park error", error)
        run = self._fenced(lease)
        run.status = RunStatus.PARKED
        run.error = error
        run.waiting_for = keys.WAITING_DEPLOY
        run.wake_at = None
        run.lease_token = run.lease_owner = run.lease_expires_at = None
        run.updated_at = self.clock()
        self._log(run.id, Parked(code=error.get("code"), message=error.get("message")))

    def _unpark(self, run: _Run, reason: Literal["retry", "worker_start"]) -> None:
        run.status = RunStatus.PENDING
        run.error = None
        run.waiting_for = run.wake_at = None
        run.stalled_claims = 0
        run.updated_at = self.clock()
        self._log(run.id, Unparked(reason))
        self._wake(run.id, None, run.priority)

    async def requeue_parked(self, names: Sequence[str]) -> int:
        parked = [
            r for r in self._runs.values() if r.status is RunStatus.PARKED and r.name in names
        ]
        for run in parked:
            self._unpark(run, "worker_start")
        return len(parked)

    # -- signals, cancel, retry -----------------------------------------------------------------

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
        run = self._runs.get(run_id)
        if run is None:
            return SignalResult("not_found")
        inbox = self._signals.setdefault(run_id, [])
        if idempotency_key is not None and any(s.idempotency_key == idempotency_key for s in inbox):
            return SignalResult("duplicate")
        if run.status in TERMINAL_STATUSES:
            return SignalResult("closed")
        if len(inbox) >= max_signals:
            raise signal_limit(run_id, max_signals)
        _storable("signal", payload, texts=(name, idempotency_key))
        self._signal_ids += 1
        sig = SignalRecord(
            self._signal_ids, name, payload, idempotency_key, self.clock(), meta=dict(meta or {})
        )
        inbox.append(sig)
        waiting = (
            run.status is RunStatus.AWAITING_SIGNAL
            and run.waiting_for == keys.waiting_for_signal(name)
        )
        if waiting or run.status is RunStatus.RUNNING:
            self._wake(run_id, None, run.priority)
        self._log(run_id, SignalReceived(name=name, signal_id=sig.id, waiting=waiting))
        return SignalResult("delivered" if waiting else "buffered", signal_id=sig.id)

    async def cancel(
        self, run_id: uuid.UUID, reason: str, *, compensate: bool = False
    ) -> CancelResult:
        root = self._runs.get(run_id)
        if root is None:
            return CancelResult("not_found")
        if root.status in TERMINAL_STATUSES:
            return CancelResult("already_terminal", root.status)
        _storable("cancel reason", texts=(reason,))  # refused when written, as in PostgreSQL
        if not compensate:
            self._cancel_tree(root, reason)
            return CancelResult("canceled", RunStatus.CANCELED)
        self._cancel_tree(root, reason, keep_root=True)
        root.meta = {**root.meta, **cancel_meta(reason)}
        root.status = RunStatus.PENDING
        root.lease_token = root.lease_owner = root.lease_expires_at = None
        root.waiting_for = None
        root.wake_at = None
        root.updated_at = self.clock()
        self._log(root.id, CancelRequested(reason=reason))
        self._wake(root.id, None, root.priority)
        if self._on_terminal is not None:  # an attempt in flight stops (it is fenced anyway)
            self._on_terminal(str(root.id))
        return CancelResult("canceling", RunStatus.PENDING)

    def _tree(self, root: _Run, *, all_children: bool = False) -> list[_Run]:
        """``root`` and its descendants (detached ones and theirs only with ``all_children``)."""
        tree = [root]
        frontier = [root.id]
        while frontier:
            parent = frontier.pop()
            for child in self._children_of(parent):
                if all_children or not child.meta.get("detached", False):
                    tree.append(child)
                    frontier.append(child.id)
        return tree

    def _cancel_tree(self, root: _Run, reason: str, *, keep_root: bool = False) -> None:
        """Cancel the live runs of ``root``'s tree (non-detached; ``root`` itself unless
        ``keep_root``); wake their parents that are left live (not the root of an expired
        tree: it is already terminal)."""
        tree = self._tree(root)[1:] if keep_root else self._tree(root)
        canceled = {r.id for r in tree if r.status not in TERMINAL_STATUSES}
        for run in tree:
            if run.id not in canceled:
                continue
            self._terminal(
                run, RunStatus.CANCELED, None, {"code": "RUN_CANCELED", "message": reason}
            )
            self._log(run.id, Canceled(reason=reason, root=str(root.id)))
            self._wakes.pop(run.id, None)
            parent = self._runs.get(run.parent_run_id) if run.parent_run_id else None
            if parent is not None and parent.status not in TERMINAL_STATUSES:
                self._wake(parent.id, None, 0)

    async def retry(self, run_id: uuid.UUID) -> RetryResult:
        run = self._runs.get(run_id)
        if run is None:
            return RetryResult("missing")
        if run.status is RunStatus.PARKED:  # re-check on the code deployed now
            self._unpark(run, "retry")
            return RetryResult("queued", RunStatus.PENDING)
        if run.status not in RETRYABLE_STATUSES:
            return RetryResult("not_failed", run.status)
        steps = self._steps.setdefault(run_id, {})
        inbox = self._signals.get(run_id, [])
        timers = self._timers.get(run_id, {})
        children = self._child_records(run_id)
        cut = retry_cut(list(steps.values()), inbox, list(timers.values()), children)
        for child_id in cut.child_ids:  # a failed child is retried with its parent
            await self.retry(child_id)
        for i, sig in enumerate(inbox):
            if sig.id in cut.signal_ids:
                inbox[i] = dataclasses.replace(sig, consumed_by=None, consumed_at=None)
        for key in cut.timer_keys:
            timers.pop(key, None)
        for position in cut.positions:
            steps.pop(position, None)
        run.status = RunStatus.PENDING
        run.error = run.output = run.finished_at = None
        run.deadline_at = None  # a retried run has no deadline
        run.stalled_claims = 0
        run.waiting_for = None
        run.wake_at = None
        run.updated_at = self.clock()
        self._log(run_id, Retried(from_position=cut.position))
        self._wake(run_id, None, run.priority)
        return RetryResult("queued", RunStatus.PENDING)

    def _child_records(self, run_id: uuid.UUID) -> list[ChildRecord]:
        return [
            ChildRecord(c.id, c.parent_cursor_key or "", c.status)
            for c in self._children_of(run_id)
        ]

    async def resume(self, run_id: uuid.UUID) -> RetryResult:
        run = self._runs.get(run_id)
        if run is None:
            return RetryResult("missing")
        if run.status is not RunStatus.CANCELED:
            return RetryResult("not_failed", run.status)
        steps = list(self._steps.get(run_id, {}).values())
        if was_compensated(steps):  # its completed steps were undone: nothing to resume
            return RetryResult("not_failed", run.status)
        children = resume_children(steps, self._child_records(run_id))
        for child_id in children:
            await self.resume(child_id)
        run.status = RunStatus.PENDING
        run.error = run.output = run.finished_at = None
        run.stalled_claims = 0
        run.waiting_for = None
        run.wake_at = None
        run.updated_at = self.clock()
        self._log(run_id, Resumed(children=len(children)))
        self._wake(run_id, None, run.priority)
        return RetryResult("queued", RunStatus.PENDING)

    async def fork(
        self, run_id: uuid.UUID, new_id: uuid.UUID, from_step: str | None
    ) -> StartResult | None:
        source = self._runs.get(run_id)
        if source is None:
            return None
        steps = self._steps.get(run_id, {})
        fork = fork_cut(
            list(steps.values()),
            self._signals.get(run_id, []),
            list(self._timers.get(run_id, {}).values()),
            self._child_records(run_id),
            from_step,
        )
        if new_id in self._runs:
            raise _duplicate("run id", str(new_id))
        new = forked_run(source.record(), new_id, fork)
        self._insert(new, self.clock())
        self._steps[new_id] = {p: steps[p] for p in fork.kept}
        self._log(new_id, Started(version=new.version))
        self._log(new_id, Forked(str(run_id), from_step, fork.cut.position))
        self._wake(new_id, None, new.priority)
        return StartResult(new_id, True, RunStatus.PENDING)

    # -- workers ------------------------------------------------------------------------------

    async def register_worker(self, info: WorkerInfo) -> None:
        now = self.clock()
        dead = now - timedelta(seconds=WORKER_PRUNE_SECONDS)
        for other in [w for w in self._workers.values() if w.heartbeat_at < dead]:
            if other.id != info.id:
                del self._workers[other.id]
        known = self._workers.get(info.id)
        started = now if known is None else known.started_at
        self._workers[info.id] = WorkerRecord(
            info.id, info.host, info.pid, info.flows, info.queues, started, now
        )

    async def remove_worker(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    async def list_workers(self, stale_seconds: float) -> list[WorkerRecord]:
        limit = self.clock() - timedelta(seconds=stale_seconds)
        return [
            dataclasses.replace(w, stale=w.heartbeat_at < limit)
            for w in sorted(self._workers.values(), key=lambda w: (w.started_at, w.id))
        ]

    # -- recovery -----------------------------------------------------------------------------

    async def recover_expired(self, limit: int) -> int:
        now = self.clock()
        stale = sorted(
            (
                r
                for r in self._runs.values()
                if r.status is RunStatus.RUNNING
                and r.lease_expires_at is not None
                and r.lease_expires_at < now
            ),
            key=lambda r: r.lease_expires_at or now,
        )[:limit]
        for run in stale:
            run.status = RunStatus.RETRYING
            run.lease_token = run.lease_owner = run.lease_expires_at = None
            run.waiting_for = keys.WAITING_RECOVERY
            run.updated_at = now
            self._doing.discard(run.id)
            self._log(run.id, Recovered())
            self._wake(run.id, None, run.priority)
        return len(stale)

    async def release_orphaned_jobs(self, stale_seconds: float) -> int:
        return 0  # wake-ups are executed in this process: there are no other workers to die

    async def rewake_stranded(self, limit: int) -> int:
        now = self.clock()
        stranded = [
            r
            for r in sorted(self._runs.values(), key=lambda r: r.updated_at or r.created_at)
            if r.status in RESUMABLE_STATUSES
            and r.id not in self._wakes
            and r.id not in self._doing
            and (self._held_head(r) if r.held is not None else self._needs_wake(r, now))
        ][:limit]
        for run in stranded:
            self._log(run.id, Rewoken())
            self._wake(run.id, None, run.priority)
        return len(stranded)

    def _needs_wake(self, run: _Run, now: datetime) -> bool:
        if run.deadline_at is not None and run.deadline_at <= now:
            return True  # it fails at its next claim
        timers = [t for t in self._timers.get(run.id, {}).values() if t.fired_at is None]
        if run.status is RunStatus.PENDING:
            return run.wake_at is None or run.wake_at <= now
        if run.status is RunStatus.RETRYING and not any(t.fire_at > now for t in timers):
            return True
        if run.status in TIMED_STATUSES and any(t.fire_at <= now for t in timers):
            return True
        if run.status is RunStatus.AWAITING_SIGNAL and any(
            s.consumed_at is None and keys.waiting_for_signal(s.name) == run.waiting_for
            for s in self._signals.get(run.id, [])
        ):
            return True
        if run.status is RunStatus.AWAITING_CHILD:
            memo_keys = {s.cursor_key for s in self._steps.get(run.id, {}).values()}
            return any(
                c.status in TERMINAL_STATUSES and c.parent_cursor_key not in memo_keys
                for c in self._children_of(run.id)
            )
        return False

    # -- retention ----------------------------------------------------------------------------

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
        cutoff = self.clock() - older_than
        roots = sorted(
            (
                r
                for r in self._runs.values()
                if r.parent_run_id is None
                and r.status is status
                and r.finished_at is not None
                and r.finished_at < cutoff
                and (r.name == flow if flow is not None else r.name not in exclude)
            ),
            key=lambda r: (r.finished_at or cutoff, r.seq),
        )
        trees = [self._tree(r, all_children=True) for r in roots]
        trees = [t for t in trees if all(r.status in TERMINAL_STATUSES for r in t)]
        if not dry_run:
            trees = trees[:limit]
            for run in (run for tree in trees for run in tree):
                self._delete(run)
        return PurgeBatch(top_level=len(trees), runs=sum(len(t) for t in trees))

    def _delete(self, run: _Run) -> None:
        """Remove a run and every row of it (PostgreSQL's ON DELETE CASCADE)."""
        del self._runs[run.id]
        for rows in (self._steps, self._signals, self._timers, self._events, self._children):
            rows.pop(run.id, None)
        self._wakes.pop(run.id, None)
        if run.parent_run_id is not None and run.parent_run_id in self._children:
            self._children[run.parent_run_id].remove(run.id)
        if run.idempotency_key is not None:  # the key is free again
            self._idempotent.pop((run.name, run.idempotency_key), None)

    # -- reads --------------------------------------------------------------------------------

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
        where = (filters or RunFilter()).narrowed(
            name=name, statuses=statuses, tag=tag, idempotency_key=idempotency_key
        )
        runs = [
            record
            for r in self._runs.values()
            if (before_seq is None or r.seq < before_seq)
            and (after_seq is None or r.seq > after_seq)
            and where.matches(record := r.record())
        ]
        runs.sort(key=lambda r: r.seq, reverse=after_seq is None)
        return runs[:limit]

    async def count_runs(self, filters: RunFilter) -> dict[RunStatus, int]:
        counts: dict[RunStatus, int] = {}
        for r in self._runs.values():
            if filters.matches(record := r.record()):
                counts[record.status] = counts.get(record.status, 0) + 1
        return counts

    async def changes_since(
        self, since: int | None, limit: int
    ) -> tuple[list[tuple[uuid.UUID, RunStatus]], int]:
        if since is None:
            return [], self._event_ids
        changed: dict[uuid.UUID, int] = {}
        for run_id, events in self._events.items():
            last = max((e.id for e in events if e.id > since), default=None)
            if last is not None and run_id in self._runs:
                changed[run_id] = last
        ordered_ids = sorted(changed, key=changed.__getitem__)[:limit]
        token = max((changed[r] for r in ordered_ids), default=since)
        return [(r, self._runs[r].status) for r in ordered_ids], token

    async def running_since(
        self, since: datetime | None, limit: int
    ) -> tuple[list[uuid.UUID], datetime]:
        now = self.clock()
        if since is None:
            return [], now
        written = sorted(
            (run.updated_at, run_id)
            for run_id, run in self._runs.items()
            if run.status is RunStatus.RUNNING
            and run.updated_at is not None
            and run.updated_at >= since
        )[:limit]
        mark = written[-1][0] if len(written) >= limit else now
        return [run_id for _, run_id in written], mark

    async def pending_wake(self, run_id: uuid.UUID) -> WakeUp | None:
        return self._wakes.get(run_id)

    async def get_run(self, run_id: uuid.UUID) -> RunRecord | None:
        run = self._runs.get(run_id)
        return None if run is None else run.record()

    async def detail(self, run_id: uuid.UUID) -> RunDetail | None:
        run = self._runs.get(run_id)
        if run is None:
            return None
        steps = self._steps.get(run_id, {})
        return RunDetail(
            run=run.record(),
            steps=tuple(steps[p] for p in sorted(steps)),
            signals=tuple(self._signals.get(run_id, [])),
            timers=tuple(sorted(self._timers.get(run_id, {}).values(), key=lambda t: t.fire_at)),
            events=tuple(self._events.get(run_id, [])),
        )

    # -- schedules ----------------------------------------------------------------------------

    async def schedule_now(self) -> datetime:
        return self.clock()

    def _schedule_event(self, schedule_id: str, event: ScheduleEvent) -> None:
        self._schedule_event_ids += 1
        at = self.clock()
        self._schedule_events.setdefault(schedule_id, []).append(
            dataclasses.replace(event, id=self._schedule_event_ids, at=at)
        )

    async def create_schedule(
        self, spec: ScheduleSpec, *, last_tick: datetime | None, next_tick: datetime | None
    ) -> bool:
        if spec.id in self._schedules:
            return False
        _storable("schedule", spec.input, texts=(spec.id, spec.flow, spec.cron, spec.tz))
        now = self.clock()
        self._schedules[spec.id] = ScheduleRecord(
            spec, False, next_tick, last_tick, None, None, now, now
        )
        data = {"cron": spec.cron, "tz": spec.tz, "source": spec.source}
        self._schedule_event(spec.id, ScheduleEvent("created", data=data))
        return True

    async def update_schedule(
        self,
        spec: ScheduleSpec,
        *,
        last_tick: datetime | None,
        next_tick: datetime | None,
        paused: bool,
    ) -> bool:
        current = self._schedules.get(spec.id)
        if current is None:
            return False
        _storable("schedule", spec.input, texts=(spec.id, spec.flow, spec.cron, spec.tz))
        self._schedules[spec.id] = dataclasses.replace(
            current,
            spec=spec,
            last_tick=last_tick,
            next_tick=next_tick,
            paused=paused,
            buffered_tick=None,
            updated_at=self.clock(),
        )
        data = {"cron": spec.cron, "tz": spec.tz, "source": spec.source}
        self._schedule_event(spec.id, ScheduleEvent("updated", data=data))
        return True

    async def set_schedule_paused(
        self,
        schedule_id: str,
        paused: bool,
        *,
        event: ScheduleEvent,
        last_tick: datetime | None = None,
        next_tick: datetime | None = None,
    ) -> bool:
        current = self._schedules.get(schedule_id)
        if current is None:
            return False
        self._schedules[schedule_id] = dataclasses.replace(
            current,
            paused=paused,
            last_tick=current.last_tick if last_tick is None else last_tick,
            next_tick=current.next_tick if paused else next_tick,
            updated_at=self.clock(),
        )
        self._schedule_event(schedule_id, event)
        return True

    async def delete_schedule(self, schedule_id: str) -> bool:
        self._schedule_events.pop(schedule_id, None)
        return self._schedules.pop(schedule_id, None) is not None

    async def get_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        return self._schedules.get(schedule_id)

    async def list_schedules(self) -> list[ScheduleRecord]:
        return [self._schedules[k] for k in sorted(self._schedules)]

    async def schedule_events(self, schedule_id: str, *, limit: int) -> list[ScheduleEvent]:
        return list(reversed(self._schedule_events.get(schedule_id, [])))[:limit]

    async def purge_schedule_events(self, older_than: timedelta, *, limit: int) -> int:
        events = self._schedule_events  # every event has its id and time (_schedule_event)
        first = set(sorted(e.id or 0 for kept in events.values() for e in kept)[:limit])
        cutoff = self.clock() - older_than

        def gone(e: ScheduleEvent) -> bool:
            return (e.id or 0) in first and e.at is not None and e.at < cutoff

        deleted = 0
        for schedule_id, kept in events.items():
            left = [e for e in kept if not gone(e)]
            deleted += len(kept) - len(left)
            events[schedule_id] = left
        return deleted

    def _previous_live(self, record: ScheduleRecord) -> bool:
        run = None if record.last_run_id is None else self._runs.get(record.last_run_id)
        return run is not None and run.status not in TERMINAL_STATUSES

    @contextlib.asynccontextmanager
    async def sweep_schedules(
        self, *, limit: int, now: datetime | None = None
    ) -> AsyncIterator[_MemoryBatch]:
        at = self.clock() if now is None else now
        due = [
            DueSchedule(r, self._previous_live(r))
            for r in sorted(
                self._schedules.values(), key=lambda r: (r.next_tick is None, r.next_tick or at)
            )
            if not r.paused
            and r.id not in self._swept
            and (
                (r.next_tick is not None and r.next_tick <= at)
                or (r.buffered_tick is not None and not self._previous_live(r))
            )
        ][:limit]
        ids = {d.record.id for d in due}
        self._swept |= ids  # FOR UPDATE SKIP LOCKED: a concurrent sweep skips them
        saved = (dict(self._schedules), {k: list(v) for k, v in self._schedule_events.items()})
        try:
            yield _MemoryBatch(self, at, due)
        except BaseException:  # a failed sweep writes nothing of its schedules' state
            self._schedules, self._schedule_events = saved
            raise
        finally:
            self._swept -= ids

    async def _start_scheduled(
        self, schedule_id: str, start: ScheduledStart, event: str
    ) -> StartResult:
        result = await self.create_run(start.run)
        wake_at = None if start.run.wake_at is None else start.run.wake_at.isoformat()
        data = {"created": result.created, "wake_at": wake_at}
        self._schedule_event(schedule_id, ScheduleEvent(event, start.tick, result.run_id, data))
        return result

    async def start_scheduled(
        self, schedule_id: str, starts: Sequence[ScheduledStart], *, event: str
    ) -> list[StartResult]:
        record = self._schedules.get(schedule_id)
        if record is None:
            return []
        results = [await self._start_scheduled(schedule_id, s, event) for s in starts]
        if event == "triggered" and results:
            self._schedules[schedule_id] = dataclasses.replace(
                record, last_run_id=results[-1].run_id, updated_at=self.clock()
            )
        return results


@dataclasses.dataclass
class _MemoryBatch:
    """:class:`~iterflow.store.base.ScheduleBatch` of the in-memory store."""

    store: MemoryStore
    now: datetime
    due: Sequence[DueSchedule]

    async def apply(self, schedule_id: str, write: ScheduleWrite) -> list[StartResult]:
        store = self.store
        record = next((d.record for d in self.due if d.record.id == schedule_id), None)
        if record is None:
            raise ValueError(f"schedule {schedule_id!r} is not in this sweep")
        if write.cancel_previous and record.last_run_id is not None:
            reason = f"canceled by schedule {schedule_id}: a new tick started (cancel_previous)"
            await store.cancel(record.last_run_id, reason)
        results = [await store._start_scheduled(schedule_id, s, "started") for s in write.starts]
        for event in write.events:
            store._schedule_event(schedule_id, event)
        current = store._schedules[schedule_id]
        store._schedules[schedule_id] = dataclasses.replace(
            current,
            last_tick=write.last_tick,
            next_tick=write.next_tick,
            buffered_tick=write.buffered_tick,
            last_run_id=results[-1].run_id if results else current.last_run_id,
            updated_at=store.clock(),
        )
        return results


_INT4 = 2**31


def _conflicts(stored: str | None, given: str | None) -> bool:
    """A reused idempotency key conflicts when both inputs are known and differ."""
    return stored is not None and given is not None and stored != given


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is None else value.astimezone(UTC)


def _duplicate(what: str, value: str) -> DataRejected:
    """PostgreSQL's refusal of a second row with the same unique key (SQLSTATE 23505)."""
    return DataRejected(
        f"PostgreSQL would refuse the data (SQLSTATE 23505: duplicate {what} {value!r}); "
        "nothing was written",
        details={"sqlstate": "23505"},
    )


def _storable(
    what: str,
    *values: Any,
    texts: Sequence[str | None] = (),
    ints: Sequence[int] = (),
) -> None:
    """Refuse what PostgreSQL would refuse, the way it does (``DATA_REJECTED``): JSON values
    ``jsonb`` cannot hold, text with NUL or lone surrogates, integers out of ``integer`` range.
    The engine's own checks run before any store; this keeps the two stores equal below them."""
    try:
        for value in values:
            if value is not None:
                check_data(value, what=what, limit=2**62)
    except PayloadInvalid as exc:
        raise DataRejected(
            f"PostgreSQL would refuse the data ({exc.message}); nothing was written"
        ) from None
    for text in texts:
        if text is not None and ("\x00" in text or _SURROGATE.search(text)):
            raise DataRejected(
                f"PostgreSQL would refuse the {what} text (NUL or lone surrogate); "
                "nothing was written"
            )
    for number in ints:
        if not -_INT4 <= number < _INT4:
            raise DataRejected(f"{what}: integer {number} is out of range; nothing was written")
