"""The test kit for your flows: drive an engine in a test, skip time, inject crashes, replay
recorded runs. Guide and runnable examples: ``docs/testing.md``.

* :class:`TestEngine`: ``async with TestEngine(order) as t:`` gives an in-memory engine on a
  :class:`FakeClock` (or drives a PostgreSQL engine, ``TestEngine(engine=...)``) that runs due work
  after every call like a worker would: ``await t.start(order, input)``, ``await t.advance("3d")``
  (timers, signal timeouts, retry backoffs and schedule ticks fire in due order),
  ``await t.signal(...)``, ``await t.result(run_id)``, ``t.history(run_id)``, ``t.steps_run``.
* Crash injection: ``t.crash_after("charge")`` kills the attempt right after that step's
  checkpoint is committed, ``t.crash_before("charge")`` right before; ``await t.recover()`` lets
  the dead worker's lease expire so another attempt resumes the run, as on a real cluster.
* :func:`replay`: replay a recorded run (``flowctl export RUN_ID > run.json``) against the
  current code, offline, and report drift (the recorded call and the one the code makes now).

The kit drives the engine through its public API. Two seams are its own: the store the worker
writes through is wrapped (to count executions and to fail writes as a dead process would), and
offline replay uses the engine's :class:`~iterflow.runtime.context.FlowContext` with one change,
it stops at the first call past the recorded history instead of doing new work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import importlib.metadata
import inspect
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Coroutine, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from os import PathLike
from pathlib import Path
from typing import Any, Literal, TypeAlias, TypeVar, cast

from iterflow.core import decisions, export
from iterflow.core.ctx import HasDefinition
from iterflow.core.definition import FlowDef
from iterflow.core.durations import DurationLike, parse_duration
from iterflow.core.errors import (
    ConfigInvalid,
    Drifted,
    FlowError,
    HistoryInvalid,
    InputInvalid,
    Interrupt,
    LeaseLost,
    ResultTimeout,
)
from iterflow.core.limits import Gate
from iterflow.core.models import (
    CancelResult,
    RetryResult,
    RunDetail,
    RunRecord,
    RunStatus,
    SignalResult,
    StepKind,
    StepRecord,
    StepStatus,
)
from iterflow.core.scheduling import ScheduleRecord
from iterflow.core.settings import Settings
from iterflow.core.signals import Signal
from iterflow.core.states import LIVE_STATUSES
from iterflow.runtime.context import FlowContext
from iterflow.runtime.engine import Engine, FlowHandle
from iterflow.store.base import Claim, Lease, Store

__all__ = [
    "Crash",
    "FakeClock",
    "FlowLike",
    "ReplayReport",
    "SimulatedCrash",
    "TestEngine",
    "replay",
    "replay_folder",
]

T = TypeVar("T")
logger = logging.getLogger(__name__)

FlowLike: TypeAlias = "FlowDef[Any, Any] | HasDefinition[Any, Any]"
"""A flow as the kit accepts it: a ``FlowDef`` (a built flow) or a handle (``@engine.flow``)."""

#: How long the kit waits for a PostgreSQL engine's worker to settle (real seconds).
_PG_SETTLE_SECONDS = 30.0


class FakeClock:
    """A clock that only moves when told to: ``clock.advance("3d")`` fires a 3-day sleep."""

    def __init__(self, start: datetime | None = None) -> None:
        if start is not None and start.tzinfo is None:
            raise ConfigInvalid("FakeClock(start=) must be timezone-aware, e.g. tzinfo=UTC")
        self._now = start or datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self._now

    def advance(self, duration: DurationLike) -> datetime:
        """Move time forward and return the new now."""
        self._now += parse_duration(duration)
        return self._now

    def advance_to(self, when: datetime) -> datetime:
        """Move time forward to ``when`` (never back: an earlier time leaves it unchanged)."""
        if when.tzinfo is None:
            raise ConfigInvalid("advance_to() needs a timezone-aware datetime")
        self._now = max(self._now, when)
        return self._now


# -- crash injection and execution counts: a seam around the store the worker writes through ----


class SimulatedCrash(LeaseLost):
    """Raised into an attempt by crash injection: the worker process "died". Like a lost lease,
    it stops the attempt without writing anything more; the run keeps its lease until it expires,
    as after a real crash."""


@dataclasses.dataclass(frozen=True, slots=True)
class Crash:
    """One injected crash: the run, the call (its cursor key), ``before``/``after`` its
    checkpoint."""

    run_id: uuid.UUID
    cursor_key: str
    when: Literal["before", "after"]


@dataclasses.dataclass
class _CrashPoint:
    label: str
    when: Literal["before", "after"]
    remaining: int


class _AttemptStore:
    """The store as the worker sees it: every method of the real store, plus

    * ``steps_run``: each step execution counted once by label (a step's checkpoint is proof it
      ran; replays write nothing, so they are not counted);
    * crash points: a checkpoint matching one raises :class:`SimulatedCrash` before or after the
      real write, and every later write of that attempt is refused the same way (a dead process
      writes nothing).
    """

    def __init__(self, inner: Store, steps_run: Counter[str]) -> None:
        self.inner = inner
        self.steps_run = steps_run
        self.points: list[_CrashPoint] = []
        self.crashes: list[Crash] = []
        self._dead: set[uuid.UUID] = set()  # lease tokens of crashed attempts
        self.held: set[uuid.UUID] = set()  # runs still leased to a crashed attempt
        self._counted: set[tuple[uuid.UUID, str, int]] = set()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        async def fenced(*args: Any, **kwargs: Any) -> Any:
            if args and isinstance(
                args[0], Lease
            ):  # a write of an attempt: dead ones write nothing
                self._fence(args[0])
            return await attr(*args, **kwargs)

        return fenced

    def _fence(self, lease: Lease) -> None:
        if lease.token in self._dead:
            raise SimulatedCrash(lease.run_id)

    async def claim(
        self, run_id: uuid.UUID, owner: str, lease_seconds: float, gate: Gate | None = None
    ) -> Claim | None:
        claim = await self.inner.claim(run_id, owner, lease_seconds, gate)
        if claim is not None:
            self.held.discard(run_id)  # a new attempt owns it: the crashed one is gone
        return claim

    def _point(self, record: StepRecord, when: str) -> _CrashPoint | None:
        for point in self.points:
            if (
                point.when == when
                and point.remaining > 0
                and point.label in (record.label, record.cursor_key)
            ):
                return point
        return None

    def _die(self, lease: Lease, record: StepRecord, point: _CrashPoint) -> None:
        point.remaining -= 1
        self._dead.add(lease.token)
        self.held.add(lease.run_id)
        self.crashes.append(Crash(lease.run_id, record.cursor_key, point.when))
        logger.warning(
            "crash injected %s the checkpoint of %s in run %s: the attempt dies (the worker "
            "logs it as a lost lease); the run is resumed once its lease expires",
            point.when,
            record.cursor_key,
            lease.run_id,
        )
        raise SimulatedCrash(lease.run_id)

    async def checkpoint(
        self,
        lease: Lease,
        record: StepRecord,
        *,
        consume_signal: int | None = None,
        fire_timer: str | None = None,
        renew: bool = True,
    ) -> None:
        self._fence(lease)
        counted = (lease.token, record.cursor_key, record.attempts)
        if record.kind is StepKind.STEP and counted not in self._counted:
            self._counted.add(counted)  # one execution, even if its checkpoint is written twice
            self.steps_run[record.label] += 1
        if (point := self._point(record, "before")) is not None:
            self._die(lease, record, point)
        await self.inner.checkpoint(
            lease, record, consume_signal=consume_signal, fire_timer=fire_timer, renew=renew
        )
        if (point := self._point(record, "after")) is not None:
            self._die(lease, record, point)


# -- the test engine --------------------------------------------------------------------------


def _definition(flow: object) -> FlowDef[Any, Any]:
    if isinstance(flow, FlowDef):
        return flow
    definition = getattr(flow, "definition", None)
    if isinstance(definition, FlowDef):
        return definition
    raise ConfigInvalid(
        f"expected a flow (a built FlowDef or an @engine.flow handle), got {type(flow).__name__}"
    )


class TestEngine:
    """An engine driven by a test: due work runs after every call, time moves on request.

    ``TestEngine(*flows)`` is an in-memory engine on a :class:`FakeClock` (``clock``, default
    2030-01-01 UTC), with step-retry backoffs suspending the run instead of sleeping in process
    (``inline_retry_max_seconds=0``) so that :meth:`advance` fires them; ``**settings`` are
    further engine settings. ``TestEngine(*flows, engine=Engine(url, ...))`` drives that engine
    (it must not be open yet) with an in-process worker instead: the same test runs on
    PostgreSQL, except :meth:`advance` (PostgreSQL's clock cannot be moved).

    ``flows`` are ``@engine.flow`` handles, built flows (``FlowDef``), or an ``Engine`` whose
    registered flows are all taken; a handle brings along every flow of its engine, so the
    children it invokes are registered too. :meth:`start` registers a flow it has not seen.
    """

    __test__ = False  # a class named Test* that pytest must not collect

    def __init__(
        self,
        *flows: FlowLike | Engine,
        engine: Engine | None = None,
        clock: FakeClock | None = None,
        **settings: Any,
    ) -> None:
        if engine is None:
            self.clock: FakeClock | None = clock or FakeClock()
            engine = Engine.in_memory(
                clock=self.clock, **{"inline_retry_max_seconds": 0, **settings}
            )
        else:
            if settings:
                raise ConfigInvalid(
                    "pass settings to the Engine given as engine=, not to TestEngine"
                )
            self.clock = clock
        self.engine = engine
        #: How many times each step (by label) actually executed, in every run; replays of a
        #: recorded step are not executions and are not counted.
        self.steps_run: Counter[str] = Counter()
        self._seam: _AttemptStore | None = None
        self._points: list[_CrashPoint] = []
        self._memory = False
        self._histories: dict[uuid.UUID, RunDetail] = {}
        self._worker: asyncio.Task[None] | None = None
        self._served: frozenset[str] = frozenset()
        self.register(*flows)

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> TestEngine:
        engine = self.engine
        await engine.open()
        self._memory = engine.database_url == "memory://"
        if self._memory and self.clock is None:
            clock = getattr(engine.store, "clock", None)
            self.clock = clock if isinstance(clock, FakeClock) else None
        worker = engine.worker
        self._seam = _AttemptStore(worker.store, self.steps_run)
        self._seam.points = self._points
        worker.store = cast(Store, self._seam)
        if not self._memory:
            await engine.store.get_run(uuid.UUID(int=0))  # SCHEMA_MISSING here, not in a task
            await self._serve()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop_worker()
        await self.engine.close()

    # -- flows ----------------------------------------------------------------------------------

    def register(self, *flows: FlowLike | Engine) -> None:
        """Register flows (see the class docstring for what a flow may be). Schedules declared
        in code (``@engine.flow(..., schedule=)``) come along with their flows' engine and fire
        as :meth:`advance` passes their ticks."""
        for item in flows:
            owner = item if isinstance(item, Engine) else getattr(item, "engine", None)
            definitions = [] if isinstance(item, Engine) else [_definition(item)]
            cron: dict[str, tuple[str, str]] = {}
            if isinstance(owner, Engine) and owner is not self.engine:
                definitions += owner.registry.all()  # the children it may invoke
                # the engine's code-declared schedules (written by a worker start, as here)
                cron = {spec.flow: (spec.cron, spec.tz) for spec in owner.declared_schedules}
            for definition in definitions:
                if self.engine.registry.get(definition.name, definition.version) is not None:
                    continue
                latest = (
                    owner.registry.latest(definition.name) if isinstance(owner, Engine) else None
                )
                if definition.name in cron and latest is definition:
                    expr, tz = cron[definition.name]
                    self.engine.register(definition, schedule=expr, tz=tz)
                else:
                    self.engine.register(definition)

    async def schedule(
        self,
        flow: FlowLike,
        *,
        cron: str,
        tz: str = "UTC",
        input: Any = None,
        id: str | None = None,
        overlap: str = "skip",
        catchup: DurationLike | None = None,
        jitter: DurationLike = 0,
        start_at: datetime | None = None,
        end_at: datetime | None = None,
        pin_version: bool = False,
    ) -> ScheduleRecord:
        """Register ``flow`` if it is not, and schedule it (as ``engine.schedule``, same
        keywords): its ticks fire as :meth:`advance` passes them, each run started then run
        like any other. Schedules declared in code come with their flow (:meth:`register`)."""
        self.register(flow)
        handle = FlowHandle(self.engine, _definition(flow))
        return await self.engine.schedule(
            handle,
            cron=cron,
            tz=tz,
            input=input,
            id=id,
            overlap=overlap,
            catchup=catchup,
            jitter=jitter,
            start_at=start_at,
            end_at=end_at,
            pin_version=pin_version,
        )

    # -- acting on runs (each runs the due work it causes before returning) -----------------

    async def start(
        self,
        flow: FlowLike | str,
        input: Any,
        *,
        idempotency_key: str | None = None,
        tags: Iterable[str] = (),
        delay: DurationLike | None = None,
        priority: int = 0,
    ) -> uuid.UUID:
        """Start a run (as ``handle.start``), run it until it waits or ends, return its id."""
        if isinstance(flow, str):
            result = await self.engine.start(
                flow,
                input,
                idempotency_key=idempotency_key,
                tags=tags,
                delay=delay,
                priority=priority,
            )
        else:
            definition = _definition(flow)
            self.register(flow)
            handle = FlowHandle(self.engine, definition)
            result = await handle.start(
                input, idempotency_key=idempotency_key, tags=tags, delay=delay, priority=priority
            )
        await self.run_due()
        return result.run_id

    async def signal(
        self,
        run_id: uuid.UUID | str,
        name: str | Signal[Any],
        payload: Any,
        *,
        idempotency_key: str | None = None,
    ) -> SignalResult:
        """Deliver a signal (as ``engine.signal``) and run what it wakes."""
        result = await self.engine.signal(run_id, name, payload, idempotency_key=idempotency_key)
        await self.run_due()
        return result

    async def cancel(self, run_id: uuid.UUID | str, *, reason: str | None = None) -> CancelResult:
        """Cancel a run (as ``engine.cancel``) and run what it wakes (a parent)."""
        result = await self.engine.cancel(run_id, reason=reason)
        await self.run_due()
        return result

    async def retry(self, run_id: uuid.UUID | str, *, resume: bool = False) -> RetryResult:
        """Retry a failed run (as ``engine.retry``; ``resume=True`` also resumes a canceled
        one) and run it."""
        result = await self.engine.retry(run_id, resume=resume)
        await self.run_due()
        return result

    async def status(self, run_id: uuid.UUID | str) -> RunDetail:
        """The run with its steps, signals, timers and events (as ``engine.status``)."""
        return await self.engine.status(run_id)

    async def result(self, run_id: uuid.UUID | str, *, timeout: float | None = None) -> Any:
        """The run's output (decoded with its flow's output model), or its error raised.

        In memory, a run that is still waiting raises ``RESULT_TIMEOUT`` at once, saying what it
        waits for (time does not move by itself: :meth:`advance` it or send the signal). On
        PostgreSQL it waits up to ``timeout`` seconds (default 30).
        """
        if self._memory:
            await self.run_due()
            run = (await self.engine.status(run_id)).run
            if not run.is_terminal:
                raise ResultTimeout(
                    f"run {run.id} is still {run.status.value}"
                    + (f" (waiting for {run.waiting_for})" if run.waiting_for else "")
                    + f" at {self.now().isoformat()}: advance the clock (await t.advance(...)) "
                    "or send the signal it waits for",
                    details={"status": run.status.value, "waiting_for": run.waiting_for},
                )
            return await self.engine.result(run_id, timeout=0)
        await self._serve()
        return await self.engine.result(
            run_id, timeout=_PG_SETTLE_SECONDS if timeout is None else timeout
        )

    def history(self, run_id: uuid.UUID | str) -> RunDetail:
        """The run as it stood after the kit's last call: its row (``.run``), memo rows
        (``.steps``, with cursor keys and outputs), signals, timers and events (``.events``).

        Raises ``RUN_NOT_FOUND`` for a run the kit has not seen."""
        rid = run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id))
        detail = self._histories.get(rid)
        if detail is None:
            from iterflow.core.errors import RunNotFound

            raise RunNotFound(f"no run {rid} (as of the test engine's last call)")
        return detail

    def export(self, run_id: uuid.UUID | str) -> dict[str, Any]:
        """The run as ``flowctl export`` writes it (``iterflow.run/1``), for :func:`replay`."""
        version = importlib.metadata.version("iterflow")
        return export.export_run(self.history(run_id), iterflow_version=version)

    # -- time -----------------------------------------------------------------------------------

    def now(self) -> datetime:
        """The engine's now (the fake clock in memory; the wall clock on PostgreSQL)."""
        return self.clock() if self.clock is not None else datetime.now(UTC)

    async def advance(self, duration: DurationLike) -> datetime:
        """Move the fake clock forward by ``duration``, stopping at every due time on the way
        (timers, signal timeouts, retry backoffs, delayed starts, schedule ticks, expired
        leases) to run what is due then, in order, as a worker would. Returns the new now."""
        clock = self._fake_clock("advance()")
        target = clock() + parse_duration(duration)
        await self.run_due()
        while (due := await self._next_due()) is not None and due <= target:
            clock.advance_to(due)
            await self.run_due()
        clock.advance_to(target)
        await self.run_due()
        return clock()

    async def run_due(self) -> None:
        """Run every due attempt (and those they cause) until the engine is quiet."""
        if self._memory:
            while True:
                await self.engine.drain()
                report = await self.engine.reconcile()  # expired leases, stranded runs
                if not report.total:
                    break
        else:
            await self._serve()
            await self._settle_postgres()
        await self._refresh()

    # -- crash injection ------------------------------------------------------------------------

    def crash_after(self, step: str, *, times: int = 1) -> None:
        """Kill the attempt right after ``step``'s checkpoint is committed (``step`` is a label,
        or a cursor key such as ``charge#1`` for one occurrence), ``times`` times. The run stays
        ``running`` under the dead worker's lease; :meth:`recover` resumes it, and the step is
        not run again: its memo is replayed."""
        self._points.append(_CrashPoint(step, "after", _times(times)))

    def crash_before(self, step: str, *, times: int = 1) -> None:
        """Kill the attempt after ``step`` ran but before its checkpoint is written: on
        :meth:`recover` the step runs again (at-least-once before its checkpoint)."""
        self._points.append(_CrashPoint(step, "before", _times(times)))

    @property
    def crashes(self) -> list[Crash]:
        """The crashes injected so far, in order."""
        return [] if self._seam is None else list(self._seam.crashes)

    async def recover(self) -> None:
        """Let the leases of crashed attempts expire and the reconciler hand their runs to a new
        attempt, then run due work: what happens after a worker dies. In memory the clock moves
        just past the last expiry; on PostgreSQL it waits for it (``lease_seconds``)."""
        dead = [] if self._seam is None else sorted(self._seam.held)
        if self._memory:
            clock = self._fake_clock("recover()")
            for rid in dead:
                run = await self.engine.store.get_run(rid)
                if run is not None and run.status is RunStatus.RUNNING and run.lease_expires_at:
                    clock.advance_to(run.lease_expires_at + timedelta(microseconds=1))
            await self.run_due()
            return
        deadline = time.monotonic() + self.engine.settings.lease_seconds + _PG_SETTLE_SECONDS
        while [rid for rid in dead if await self._held(rid)]:
            if time.monotonic() > deadline:
                raise ResultTimeout("crashed runs were not recovered in time")
            await self.engine.reconcile()
            await asyncio.sleep(0.05)
        await self.run_due()

    # -- internals ------------------------------------------------------------------------------

    async def _serve(self) -> None:
        """(PostgreSQL) Keep an in-process worker serving every flow registered on the engine.
        A worker serves the flow versions registered when it starts, and a test registers
        flows as it goes (``t.start`` of a flow not seen yet, ``@t.engine.flow``): when the
        registry has changed, the worker is restarted (between calls, when it is quiet)."""
        served = frozenset(f.key for f in self.engine.registry.all())
        if served == self._served and (self._worker is None or not self._worker.done()):
            return
        await self._stop_worker()
        self._served = served
        if served:
            self._worker = asyncio.create_task(
                self.engine.run_worker(concurrency=4), name="iterflow-test-worker"
            )
            await asyncio.sleep(0)

    async def _stop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker  # a worker that died raises its error here, in the test

    def _fake_clock(self, what: str) -> FakeClock:
        if self.clock is None:
            raise ConfigInvalid(
                f"{what} moves the fake clock: it needs the in-memory engine (TestEngine(...) "
                "without engine=, or the iterflow_engine fixture); PostgreSQL's now() is real"
            )
        return self.clock

    async def _held(self, run_id: uuid.UUID) -> bool:
        run = await self.engine.store.get_run(run_id)
        return run is not None and run.status is RunStatus.RUNNING and self._crashed(run)

    def _crashed(self, run: RunRecord) -> bool:
        """Whether the run is still leased to an attempt that crash injection killed."""
        return self._seam is not None and run.id in self._seam.held

    async def _live_runs(self) -> list[RunRecord]:
        runs: list[RunRecord] = []
        cursor: int | None = None
        while True:
            page = await self.engine.list_runs(status=list(LIVE_STATUSES), limit=500, cursor=cursor)
            runs += page.runs
            if page.next_cursor is None:
                return runs
            cursor = page.next_cursor

    async def _next_due(self) -> datetime | None:
        """The earliest time after now at which something becomes due."""
        now = self.now()
        times: list[datetime] = []
        for run in await self._live_runs():
            wake = await self.engine.store.pending_wake(run.id)
            if wake is not None and wake.scheduled_at is not None:
                times.append(wake.scheduled_at)
            if run.status is RunStatus.RUNNING and run.lease_expires_at is not None:
                times.append(run.lease_expires_at + timedelta(microseconds=1))  # recover after
        for schedule in await self.engine.list_schedules():
            if not schedule.paused and schedule.next_tick is not None:
                times.append(schedule.next_tick)
        later = [t for t in times if t > now]
        return min(later) if later else None

    async def _settle_postgres(self) -> None:
        """Wait until the worker is quiet: no run due, pending or running (crashed runs aside),
        seen twice 50 ms apart (a job the worker has fetched but not yet claimed shows in
        neither the run nor the queue for a moment)."""
        deadline = time.monotonic() + _PG_SETTLE_SECONDS
        quiet = 0
        while quiet < 2:
            busy = [r for r in await self._live_runs() if await self._busy(r)]
            quiet = 0 if busy else quiet + 1
            if busy and time.monotonic() > deadline:
                shown = ", ".join(f"{r.id} ({r.status.value})" for r in busy[:5])
                raise ResultTimeout(f"the worker did not settle in {_PG_SETTLE_SECONDS}s: {shown}")
            await asyncio.sleep(0.05 if not busy else 0.02)

    async def _busy(self, run: RunRecord) -> bool:
        now = datetime.now(UTC)
        if run.status is RunStatus.RUNNING:
            return not self._crashed(run)
        if run.status is RunStatus.PENDING:  # about to be claimed, unless started with a delay
            return run.wake_at is None or run.wake_at <= now
        wake = await self.engine.store.pending_wake(run.id)
        return wake is not None and (wake.scheduled_at is None or wake.scheduled_at <= now)

    async def _refresh(self) -> None:
        cursor: int | None = None
        while True:
            page = await self.engine.list_runs(limit=500, cursor=cursor)
            for run in page.runs:
                self._histories[run.id] = await self.engine.status(run.id)
            if page.next_cursor is None:
                return
            cursor = page.next_cursor


def _times(times: int) -> int:
    if isinstance(times, bool) or not isinstance(times, int) or times < 1:
        raise ConfigInvalid("times must be an integer of at least 1")
    return times


# -- offline replay of a recorded run ---------------------------------------------------------

Outcome: TypeAlias = Literal["done", "failed", "stopped", "drift", "missing"]


@dataclasses.dataclass(frozen=True)
class ReplayReport:
    """What replaying one recorded run with the current code found.

    ``outcome``: ``stopped`` (every recorded call matched; the code reached the first call past
    the history, ``requested``, which is new work and was not run), ``done`` / ``failed`` (the
    body returned / raised on recorded results alone), ``drift`` (a call differs from the one
    recorded at its position: ``recorded`` and ``requested`` name both, as ``kind``, ``label``,
    ``cursor_key``, ``position``) or ``missing`` (no flow of that name and version was given).
    ``ok`` is False for drift, a missing flow, a failure the recorded run did not have, and a
    completed run whose code now makes more calls. ``message`` says it in one line.
    """

    source: str
    run_id: uuid.UUID
    flow: str
    recorded_status: RunStatus
    outcome: Outcome
    ok: bool
    message: str
    recorded: dict[str, Any] | None = None
    requested: dict[str, Any] | None = None
    output: Any = None
    error: dict[str, Any] | None = None

    def __str__(self) -> str:
        return self.message

    def check(self) -> None:
        """Raise ``AssertionError`` with :attr:`message` unless the replay is :attr:`ok`."""
        if not self.ok:
            raise AssertionError(self.message)


class _HistoryEnd(Interrupt):
    """Offline replay reached the first call past the recorded history."""

    def __init__(self, call: dict[str, Any]) -> None:
        super().__init__("end of the recorded history")
        self.call = call


class _ReplayContext(FlowContext):
    """The engine's ``FlowContext``, stopped at the first call that is not in the history (a
    call with no memo, or whose memo is a step still ``retrying``) before it does anything:
    offline replay never runs a step, waits or writes. Everything before it (cursor keys, drift
    detection, memo decoding) is the engine's own code."""

    _stop: dict[str, Any] | None = None
    _taking = False
    _gathering = False

    def _next(self, kind: StepKind, label: str) -> Any:
        self._taking = True  # the call site: stop when the call runs, not when it is made
        try:
            call, memo = super()._next(kind, label)
        finally:
            self._taking = False
        if self._stop is None and (memo is None or memo.status is StepStatus.RETRYING):
            self._stop = _call_data(call.kind, call.label, call.cursor_key, call.position)
        return call, memo

    def _check(self) -> None:
        super()._check()
        if self._gathering:  # the gather's own check: its branches stop themselves, awaited
            self._gathering = False
            return
        if self._stop is not None and not self._taking:
            self._raise(_HistoryEnd(self._stop))

    async def _run_gather(self, aws: tuple[Awaitable[Any], ...]) -> tuple[Any, ...]:
        self._gathering = True  # consumed by the check the gather makes first
        return await super()._run_gather(aws)


class _NoWrites:
    """The store of an offline replay: it never writes (the replay stops before new work)."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"offline replay must not touch the store (store.{name})")


def _call_data(kind: StepKind | str, label: str, key: str, position: int) -> dict[str, Any]:
    return {"kind": str(kind), "label": label, "cursor_key": key, "position": position}


def _shown_call(call: Mapping[str, Any]) -> str:
    return (
        f"{call['kind']} {call['label']!r} (key {call['cursor_key']}) at position "
        f"{call['position']}"
    )


def _load(history: str | PathLike[str] | Mapping[str, Any]) -> tuple[str, RunDetail]:
    if isinstance(history, Mapping):
        return "<export>", export.load_run(dict(history))
    path = Path(history)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise HistoryInvalid(f"cannot read the run export {str(path)!r}: {exc.strerror}") from None
    return path.name, export.load_run(export.parse_export(text))


def replay(
    flows: FlowLike | Iterable[FlowLike],
    history: str | PathLike[str] | Mapping[str, Any],
) -> ReplayReport:
    """Replay a recorded run (a ``flowctl export`` file, or its parsed JSON) against the current
    code of ``flows`` (one flow, or several: the one with the run's name and version is used),
    without any database, and report drift or OK (:class:`ReplayReport`; ``.check()`` raises).

    The body runs on the recorded results only: every ``ctx`` call is matched with the history
    exactly as a worker's replay matches it, and the replay stops at the first call past the
    history (new work is never run: no step function is called). Bad files raise
    ``HISTORY_INVALID``. Blocking; from async code it runs on a private thread.
    """
    source, detail = _load(history)
    candidates = [flows] if isinstance(flows, FlowDef) or hasattr(flows, "definition") else flows
    definitions = [_definition(f) for f in cast(Iterable[Any], candidates)]
    return _blocking(_replay(definitions, detail, source))


def replay_folder(
    folder: str | PathLike[str], flows: FlowLike | Iterable[FlowLike]
) -> list[ReplayReport]:
    """:func:`replay` every ``*.json`` export in ``folder`` (sorted by name). For pytest::

    @pytest.mark.parametrize("report", replay_folder("tests/runs", [order]), ids=str)
    def test_recorded_runs_replay(report): report.check()
    """
    directory = Path(folder)
    if not directory.is_dir():
        raise HistoryInvalid(f"{str(directory)!r} is not a folder of run exports")
    flows = flows if isinstance(flows, FlowDef) or hasattr(flows, "definition") else list(flows)
    return [replay(flows, path) for path in sorted(directory.glob("*.json"))]


def _blocking(coro: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="iterflow-replay") as pool:
        return pool.submit(asyncio.run, coro).result()


async def _replay(
    definitions: list[FlowDef[Any, Any]], detail: RunDetail, source: str
) -> ReplayReport:
    run = detail.run
    report = functools.partial(
        ReplayReport, source, run.id, f"{run.name}@{run.version}", run.status
    )
    flow = next((d for d in definitions if (d.name, d.version) == (run.name, run.version)), None)
    if flow is None:
        given = ", ".join(sorted(d.key for d in definitions)) or "none"
        return report(
            "missing",
            False,
            f"MISSING {source}: no flow {run.name}@{run.version} among the flows given "
            f"({given}); its runs in flight would wait for a worker that registers it",
        )
    try:
        value = flow.validate_input(run.input)
    except InputInvalid as exc:
        return report(
            "failed",
            False,
            f"FAILED {source}: the recorded input no longer validates: {exc}",
            error=exc.to_dict(),
        )
    now = run.finished_at or run.updated_at
    claim = Claim(
        run=dataclasses.replace(run, status=RunStatus.RUNNING),
        lease=Lease(run.id, uuid.uuid4(), "replay", 30.0),
        history=detail.steps,
        timers={t.cursor_key: t for t in detail.timers if t.fired_at is None},
        inbox=[s for s in detail.signals if s.consumed_at is None],
        db_now=now,
    )
    ctx = _ReplayContext(
        claim,
        store=cast(Store, _NoWrites()),
        settings=Settings(),
        signal_models=flow.signals,
        clock=lambda: now,
        rng=random.Random(0),
    )
    raised: BaseException | None = None
    result: Any = None
    try:
        result = await flow.body(ctx, value)
        ctx.check_complete()
    except (Interrupt, LeaseLost, Exception) as exc:
        raised = exc
    name = f"{source} ({run.name}@{run.version}, run {run.id}, recorded {run.status.value})"
    if ctx._stop is not None and isinstance(ctx.interrupted, _HistoryEnd | None):
        nxt = ctx._stop
        if run.status is RunStatus.DONE:
            return report(
                "drift",
                False,
                f"DRIFT {name}: the recorded run finished, but the code now makes another call, "
                f"{_shown_call(nxt)}",
                requested=nxt,
            )
        return report(
            "stopped",
            True,
            f"OK {name}: {len(detail.steps)} recorded call(s) replay; the next call, "
            f"{_shown_call(nxt)}, is new work (not run)",
            requested=nxt,
        )
    end = decisions.classify_attempt(
        cast("Drifted | Exception | None", raised), cast(Any, ctx.interrupted)
    )
    match end:
        case decisions.EndDrifted(error=error):
            details = error.details or {}
            return report(
                "drift",
                False,
                f"DRIFT {name}: {error.message}",
                recorded=details.get("recorded"),
                requested=details.get("requested"),
                error=error.to_dict(),
            )
        case decisions.EndReturned():
            try:
                output = flow.encode_output(result)
            except FlowError as exc:
                return report("failed", False, f"FAILED {name}: {exc}", error=exc.to_dict())
            return report(
                "done", True, f"OK {name}: the body returns on the recorded results", output=output
            )
        case decisions.EndFailed(error=error):
            recorded_code = (run.error or {}).get("code")
            same = run.status is RunStatus.FAILED and recorded_code == error.error_code
            verdict = "OK" if same else "FAILED"
            why = "as recorded" if same else f"but the recorded run is {run.status.value}"
            if not same and run.status is RunStatus.FAILED:
                why = f"but the recorded run failed with {recorded_code}"
            return report(
                "failed",
                same,
                f"{verdict} {name}: the body raises {error.error_code} ({error.message}) {why}",
                error=error.to_dict(),
            )
    raise AssertionError(f"offline replay cannot end with {end!r}")  # pragma: no cover
