"""The engine facade: register flows, start runs, deliver signals, retry, inspect, wait.

The public API, one method per operation, so it stays one module (~700 lines, most of it
docstrings): each method checks its arguments (``core/inputs.py``, the codec, the flow's
definition) and delegates to the store, the worker or ``runtime/schedules.py``. Opening the
database lives in ``runtime/backend.py``, waiting for a result in ``runtime/results.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from iterflow.core import codec, inputs
from iterflow.core.definition import DriftPolicy, FlowDef, Registry
from iterflow.core.durations import DurationLike, parse_duration
from iterflow.core.errors import (
    ConfigInvalid,
    FlowUnknown,
    InputInvalid,
    RunNotFound,
)
from iterflow.core.models import (
    CancelResult,
    NewRun,
    RetryResult,
    RunDetail,
    RunPage,
    RunRecord,
    RunStatus,
    SignalResult,
    StartOptions,
    StartResult,
)
from iterflow.core.scheduling import ScheduleEvent, ScheduleRecord
from iterflow.core.settings import CONNECTION_SETTINGS, Settings
from iterflow.runtime.backend import Backend, open_backend
from iterflow.runtime.host import run_procrastinate, stale_worker_seconds
from iterflow.runtime.notify import LocalNotifier, TerminalListener
from iterflow.runtime.reconciler import Reconciler, ReconcileReport
from iterflow.runtime.results import Notifier, wait_for_end
from iterflow.runtime.scheduler import Scheduler, SweepReport
from iterflow.runtime.schedules import Schedules
from iterflow.runtime.worker import Worker
from iterflow.store.base import ScheduleStore, Store
from iterflow.store.memory import MemoryStore

if TYPE_CHECKING:
    from iterflow.runtime.context import FlowContext

__all__ = ["Engine", "FlowHandle"]

In = TypeVar("In")
Out = TypeVar("Out")

logger = logging.getLogger(__name__)


class FlowHandle(Generic[In, Out]):
    """A typed handle on a registered flow: ``start`` runs, wait for their ``result``."""

    def __init__(self, engine: Engine, definition: FlowDef[In, Out]) -> None:
        self.engine = engine
        self.definition = definition

    @property
    def name(self) -> str:
        """The flow's name."""
        return self.definition.name

    @property
    def version(self) -> int:
        """The flow's version."""
        return self.definition.version

    async def start(
        self,
        input: In | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        tags: Iterable[str] = (),
        delay: DurationLike | None = None,
        priority: int = 0,
        conn: Any = None,
    ) -> StartResult:
        """Start a run. Input is validated before anything is written (``INPUT_INVALID``).

        One transaction writes the run, its ``started`` event and its wake-up job; ``conn`` (a
        SQLAlchemy ``AsyncConnection`` in a transaction) joins the caller's transaction, so the
        run exists only if the caller commits. A repeated ``idempotency_key`` returns the
        existing run (``created=False``).
        """
        options = StartOptions(
            idempotency_key=idempotency_key, tags=tags, delay=delay, priority=priority
        )
        return await self.engine._start(self.definition, input, options, conn=conn)

    async def result(self, run_id: uuid.UUID | str, *, timeout: float | None = None) -> Out:
        """Wait for the run to finish and return its output as the flow's output model.

        Raises the run's :class:`FlowError` (code preserved) if it failed or was canceled, and
        ``RESULT_TIMEOUT`` if ``timeout`` seconds pass first.
        """
        rid = inputs.run_id(run_id)
        inputs.check_timeout(timeout)
        known = await self.engine.store.get_run(rid)
        if known is not None and known.name != self.definition.name:
            raise InputInvalid(
                f"run {rid} is a run of flow {known.name}@{known.version}, not of "
                f"{self.definition.key}; use that flow's handle or engine.result(run_id)"
            )
        run = await self.engine.wait(rid, timeout=timeout)
        return self.definition.decode_output(run.output)


class Engine:
    """Durable flows on PostgreSQL. Use as ``async with Engine(url) as engine: ...``.

    The database is chosen when the engine opens, by the same rule as ``flowctl``
    (:func:`iterflow.store.urls.resolve_database_url`): ``database_url`` if given, else
    ``$ITERFLOW_DATABASE_URL``, else ``$DATABASE_URL``, else an embedded PostgreSQL in
    ``settings.data_dir`` (logged with its data directory). Change settings with
    :meth:`configure`, before the engine opens.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> None:
        base = settings or Settings()
        if database_url is not None:
            overrides["database_url"] = database_url
        try:
            self._settings = (
                Settings.model_validate({**base.model_dump(), **overrides}) if overrides else base
            )
        except ValidationError as exc:
            raise ConfigInvalid(
                f"invalid engine settings: {codec.validation_message(exc)}"
            ) from exc
        self.registry = Registry()
        self._url: str | None = None
        self._backend: Backend | None = None
        self._store: Store | None = None
        self._worker: Worker | None = None
        self._listener: TerminalListener | None = None
        self._worker_tasks: list[asyncio.Task[None]] = []
        self._reconciler: Reconciler | None = None
        self._memory: MemoryStore | None = None
        self._notifier: Notifier | None = None
        self._local: LocalNotifier | None = None
        self._scheduler: Scheduler | None = None
        self._schedules = Schedules(self.registry, lambda: self.settings)
        self._synced = False

    @classmethod
    def in_memory(cls, *, clock: Callable[[], datetime] | None = None, **overrides: Any) -> Engine:
        """An engine on the in-memory store, for unit tests of your flows (no PostgreSQL).

        Wake-ups are executed in this process by ``await engine.drain()`` (or a background
        ``listen()``); pass an :class:`iterflow.testing.FakeClock` to fire ``sleep("3d")`` at
        once with ``clock.advance("3d")``.
        """
        engine = cls("memory://", **overrides)
        notifier = LocalNotifier()
        engine._memory = MemoryStore(clock, on_terminal=notifier.notify)
        engine._local = notifier
        return engine

    def configure(self, **changes: Any) -> None:
        """Change settings, validated like ``Settings(...)``, e.g. ``configure(database_url=url)``.

        Raises ``ConfigInvalid`` for an unknown field or an invalid value (nothing changes). The
        pool, the worker and the reconciler read settings when the engine opens, so changes are
        refused while it is open: configure it before ``async with engine`` (or close it first).
        """
        new = self.settings.model_copy(update=changes)  # validates (ConfigInvalid)
        changed = sorted(k for k in changes if getattr(new, k) != getattr(self.settings, k))
        if not changed:
            return
        if self._memory is not None and "database_url" in changed:
            raise ConfigInvalid("an in-memory engine has no database URL to change")
        if self._store is not None:
            names = ", ".join(changed)
            if CONNECTION_SETTINGS.intersection(changed):
                why = (
                    "connection-level settings ("
                    + ", ".join(sorted(CONNECTION_SETTINGS))
                    + ") take effect when the engine opens"
                )
            else:
                why = "the worker and the reconciler read settings when the engine opens"
            raise ConfigInvalid(
                f"cannot change {names} while the engine is open: {why}. Configure it before "
                "`async with engine` (or `await engine.open()`), or close it, configure it and "
                "open it again"
            )
        self._settings = new

    @property
    def settings(self) -> Settings:
        """The engine's settings (frozen). Change them with :meth:`configure`, which validates;
        assigning ``engine.settings = ...`` is refused so no path skips validation."""
        return self._settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        raise ConfigInvalid(
            "engine.settings cannot be assigned; use engine.configure(field=value, ...), which "
            "validates every change"
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def database_url(self) -> str:
        """The URL in use (available once open)."""
        if self._url is None:
            raise ConfigInvalid("the engine is not open; use `async with Engine(...)`")
        return self._url

    async def open(self) -> None:
        """Start the embedded server if needed and create the connection pool."""
        if self._store is not None:
            return
        if self._memory is not None:
            self._url = "memory://"
            self._store = self._memory
            self._notifier = self._local
            self._worker = Worker(
                self._store,
                self.registry,
                self.settings,
                watch=self._watch_run,
                clock=self._memory.clock,
            )
            self._reconciler = Reconciler(self._store, batch=self.settings.reconcile_batch)
            self._scheduler = Scheduler(self._memory, self.registry, self.settings)
            return
        backend = self._backend = await open_backend(self.settings)
        self._url = backend.url
        self._store = backend.store
        self._listener = self._notifier = backend.listener
        self._worker = Worker(self._store, self.registry, self.settings, watch=self._watch_run)
        self._reconciler = Reconciler(
            self._store,
            batch=self.settings.reconcile_batch,
            stale_worker_seconds=stale_worker_seconds(self.settings),
        )
        self._scheduler = Scheduler(backend.store, self.registry, self.settings)

    async def close(self) -> None:
        """Stop workers and the listener, dispose the pool, release the embedded server."""
        for task in self._worker_tasks:
            task.cancel()
        for task in self._worker_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._worker_tasks.clear()
        self._listener = self._notifier = None
        self._store = None
        if self._backend is not None:
            await self._backend.close()
            self._backend = None

    def _watch_run(self, run_id: uuid.UUID) -> tuple[asyncio.Event, Callable[[], None]]:
        listener = self._notifier
        if listener is None:
            return asyncio.Event(), lambda: None
        key = str(run_id)
        event = listener.subscribe(key)
        return event, lambda: listener.unsubscribe(key, event)

    async def migrate(self, *, stamp: bool = False) -> None:
        """Install or upgrade iterflow's tables (what ``flowctl migrate`` does).

        ``stamp=True`` is ``flowctl migrate --stamp``: adopt tables created from
        ``flowctl generate-schema`` by your own migrations (verified against this version's
        tables; procrastinate's schema installed if missing) without running iterflow's DDL.
        """
        if self._memory is not None:
            return
        from iterflow.store import migrate

        if stamp:
            await asyncio.to_thread(
                migrate.stamp, self.database_url, schema=self.settings.db_schema
            )
        else:
            await asyncio.to_thread(
                migrate.run_migrations, self.database_url, schema=self.settings.db_schema
            )

    @property
    def store(self) -> Store:
        """The store (open engines only)."""
        if self._store is None:
            raise ConfigInvalid("the engine is not open; use `async with Engine(...)`")
        return self._store

    @property
    def sqlalchemy_engine(self) -> AsyncEngine:
        """The SQLAlchemy engine, e.g. to open a connection for ``start(..., conn=)``."""
        if self._backend is None:
            raise ConfigInvalid("the engine is not open; use `async with Engine(...)`")
        return self._backend.sa

    @property
    def worker(self) -> Worker:
        """The attempt loop (open engines only)."""
        if self._worker is None:
            raise ConfigInvalid("the engine is not open; use `async with Engine(...)`")
        return self._worker

    # -- definition ---------------------------------------------------------------------------

    def flow(
        self,
        name: str,
        *,
        version: int = 1,
        input: type[In],
        output: type[Out],
        signals: Mapping[str, type[Any]] | None = None,
        drift_policy: DriftPolicy = "fail",
        schedule: str | None = None,
        tz: str = "UTC",
    ) -> Callable[[Callable[[FlowContext, In], Awaitable[Out]]], FlowHandle[In, Out]]:
        """Register ``async def body(ctx, input) -> output`` as flow ``name`` at ``version``.

        Every signal the body waits for must be declared in ``signals`` so that
        ``engine.signal`` can validate payloads before storing them. ``drift_policy="park"``
        parks runs whose history no longer matches the body (or whose version is gone) instead
        of failing them; ``engine.retry`` or a worker start re-checks them.
        ``schedule="0 9 * * MON-FRI"`` (with ``tz=``) starts it on that cron (its input must be
        :class:`iterflow.Tick`); see :meth:`register`.
        """

        def register(body: Callable[[FlowContext, In], Awaitable[Out]]) -> FlowHandle[In, Out]:
            definition: FlowDef[In, Out] = FlowDef(
                name=name,
                version=version,
                input_type=input,
                output_type=output,
                body=cast(Callable[[Any, Any], Awaitable[Any]], body),
                signals=dict(signals or {}),
                drift_policy=drift_policy,
            )
            return self.register(definition, schedule=schedule, tz=tz)

        return register

    def register(
        self, definition: FlowDef[In, Out], *, schedule: str | None = None, tz: str = "UTC"
    ) -> FlowHandle[In, Out]:
        """Register a flow definition and return its typed handle.

        With ``schedule`` (a 5-field cron, in IANA zone ``tz``) the flow, whose input must be
        :class:`iterflow.Tick`, is started on every tick by a schedule whose id is the flow's
        name, written when a worker starts (``SCHEDULE_INVALID`` here for a bad expression)."""
        if schedule is not None:
            self._schedules.declare(definition, schedule, tz)
        self.registry.add(definition)
        return FlowHandle(self, definition)

    # -- runs ---------------------------------------------------------------------------------

    async def _start(
        self, flow: FlowDef[Any, Any], input: Any, options: StartOptions, *, conn: Any
    ) -> StartResult:
        """The start path of ``handle.start`` and ``engine.start``: validate the input and every
        option (``INPUT_INVALID``, ``DURATION_INVALID``...), then one store write. A delay is
        counted by the store from its own clock (the database's ``now()`` on PostgreSQL), so
        every due time of a run comes from one clock."""
        value = flow.validate_input(input)
        data = codec.encode(
            value,
            flow.input_type,
            what=f"input of flow {flow.key}",
            limit=self.settings.max_payload_bytes,
        )
        settings = self.settings
        key = inputs.check_key(options.idempotency_key, max_chars=settings.max_key_chars)
        tags = inputs.check_tags(
            options.tags, cap=settings.max_tags_per_run, max_chars=settings.max_tag_chars
        )
        priority = inputs.check_priority(options.priority)
        delay = None if options.delay is None else parse_duration(options.delay)
        return await self.store.create_run(
            NewRun(
                id=uuid.uuid4(),
                name=flow.name,
                version=flow.version,
                input=data,
                idempotency_key=key,
                tags=tags,
                priority=priority,
                delay=delay,
            ),
            conn=conn,
        )

    async def start(
        self,
        name: str,
        input: Any,
        *,
        idempotency_key: str | None = None,
        tags: Iterable[str] = (),
        delay: DurationLike | None = None,
        priority: int = 0,
        conn: Any = None,
    ) -> StartResult:
        """Start a run of the **newest** registered version of flow ``name`` (untyped; the
        flow's typed handle starts its own version). Same options as ``FlowHandle.start``."""
        if not isinstance(name, str):
            raise InputInvalid(f"flow name must be a string, got {type(name).__name__}")
        flow = self.registry.latest(name)
        if flow is None:
            raise FlowUnknown(f"no flow named {codec.shown(name)} is registered in this process")
        options = StartOptions(
            idempotency_key=idempotency_key, tags=tags, delay=delay, priority=priority
        )
        return await self._start(flow, input, options, conn=conn)

    async def signal(
        self,
        run_id: uuid.UUID | str,
        name: str,
        payload: Any,
        *,
        idempotency_key: str | None = None,
    ) -> SignalResult:
        """Deliver signal ``name`` to a run (what a webhook handler calls).

        The payload is validated against the model the flow declares for ``name`` before
        anything is stored. Returns ``delivered``, ``buffered``, ``duplicate``, ``not_found`` or
        ``closed``; invalid input raises a :class:`FlowError` and writes nothing.
        """
        rid = inputs.run_id(run_id)
        codec.check_text(name, what="signal name", max_chars=200)
        key = inputs.check_key(idempotency_key, max_chars=self.settings.max_key_chars)
        run = await self.store.get_run(rid)
        if run is None:
            return SignalResult("not_found")
        flow = self.registry.get(run.name, run.version)
        if flow is None:
            raise FlowUnknown(
                f"flow {run.name}@{run.version} of run {rid} is not registered in this process; "
                "register it to validate its signals"
            )
        model, value = flow.validate_signal(name, payload)
        data = codec.encode(
            value, model, what=f"signal {name!r} payload", limit=self.settings.max_payload_bytes
        )
        return await self.store.deliver_signal(
            rid, name, data, key, max_signals=self.settings.max_signals_per_run
        )

    async def cancel(self, run_id: uuid.UUID | str, *, reason: str | None = None) -> CancelResult:
        """Cancel a live run and its non-detached live children.

        Returns ``canceled``, ``not_found`` or ``already_terminal`` (terminal runs never change).
        An attempt running elsewhere stops at once (async steps get ``CancelledError``) or at its
        next checkpoint at the latest, and writes nothing more; ``result`` raises
        ``RUN_CANCELED``.
        """
        rid = inputs.run_id(run_id)
        text = "canceled" if reason is None else reason
        codec.check_text(text, what="cancel reason", max_chars=1000)
        return await self.store.cancel(rid, text)

    async def retry(self, run_id: uuid.UUID | str) -> RetryResult:
        """Replay a failed run in place from its failed step (same id; ok steps kept).

        A ``parked`` run is woken as it is, to be re-checked against the code deployed now.
        """
        return await self.store.retry(inputs.run_id(run_id))

    async def status(self, run_id: uuid.UUID | str) -> RunDetail:
        """The run row with its steps, signals, timers and events (``RUN_NOT_FOUND`` if none)."""
        rid = inputs.run_id(run_id)
        detail = await self.store.detail(rid)
        if detail is None:
            raise RunNotFound(f"no run {rid}")
        return detail

    async def list_runs(
        self,
        *,
        name: str | None = None,
        status: RunStatus | str | Iterable[RunStatus | str] | None = None,
        tag: str | None = None,
        idempotency_key: str | None = None,
        limit: int = 50,
        cursor: int | None = None,
    ) -> RunPage:
        """Runs newest first, filtered by flow name, status(es), tag and idempotency key;
        keyset-paginated."""
        limit = inputs.check_limit(limit)
        if name is not None:
            codec.check_text(name, what="flow name filter", max_chars=200)
        if tag is not None:
            codec.check_text(tag, what="tag filter", max_chars=self.settings.max_tag_chars)
        runs = await self.store.list_runs(
            name=name,
            statuses=inputs.statuses(status),
            tag=tag,
            limit=limit,
            before_seq=inputs.check_cursor(cursor),
            idempotency_key=inputs.check_key(
                idempotency_key, max_chars=self.settings.max_key_chars
            ),
        )
        next_cursor = runs[-1].seq if len(runs) == limit else None
        return RunPage(runs=tuple(runs), next_cursor=next_cursor)

    async def find_run(
        self,
        flow: str | FlowHandle[Any, Any],
        *,
        idempotency_key: str | None = None,
        tag: str | None = None,
    ) -> RunRecord | None:
        """The newest run of ``flow`` (a name or a handle) started with ``idempotency_key``
        and/or carrying ``tag``, or None: find a run from a provider's identifiers (an order id
        used as the start's key) without keeping an order → run table."""
        name = flow.name if isinstance(flow, FlowHandle) else flow
        if idempotency_key is None and tag is None:
            raise InputInvalid("find_run needs an idempotency_key or a tag to look for")
        page = await self.list_runs(name=name, idempotency_key=idempotency_key, tag=tag, limit=1)
        return page.runs[0] if page.runs else None

    async def wait(self, run_id: uuid.UUID | str, *, timeout: float | None = None) -> RunRecord:
        """Wait until the run is terminal; return it, or raise its error if not ``done``."""
        rid = inputs.run_id(run_id)
        seconds = inputs.check_timeout(timeout)
        notifier = self._notifier
        if notifier is None:
            raise ConfigInvalid("the engine is not open; use `async with Engine(...)`")
        return await wait_for_end(
            self.store,
            notifier,
            rid,
            timeout=seconds,
            poll_max=self.settings.result_poll_max_seconds,
        )

    async def result(self, run_id: uuid.UUID | str, *, timeout: float | None = None) -> Any:
        """The run's output decoded with its flow's output model (untyped; prefer the handle)."""
        run = await self.wait(run_id, timeout=timeout)
        flow = self.registry.get(run.name, run.version)
        return run.output if flow is None else flow.decode_output(run.output)

    async def reconcile(self) -> ReconcileReport:
        """Run one reconciler sweep now (workers also run it periodically)."""
        if self._reconciler is None:
            raise ConfigInvalid("the engine is not open; use `async with Engine(...)`")
        return await self._reconciler.sweep()

    # -- schedules (runtime/schedules.py; semantics in docs/schedules.md) ----------------------

    @property
    def _schedule_store(self) -> ScheduleStore:
        return cast(ScheduleStore, self.store)

    async def schedule(
        self,
        flow: FlowHandle[Any, Any],
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
        """Start ``flow`` on every tick of ``cron`` in zone ``tz``; returns the schedule.

        Without ``input`` runs get a :class:`iterflow.Tick`. Everything is checked before any
        write (``SCHEDULE_INVALID``, ``INPUT_INVALID``); an ``id`` that exists with another
        definition is ``SCHEDULE_CONFLICT``, with the same one the existing schedule returns.
        """
        return await self._schedules.create(
            self._schedule_store,
            flow.definition,
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

    async def get_schedule(self, schedule_id: str) -> ScheduleRecord:
        """One schedule (``SCHEDULE_NOT_FOUND`` if none)."""
        return await self._schedules.get(self._schedule_store, schedule_id)

    async def list_schedules(self) -> list[ScheduleRecord]:
        """Every schedule, by id."""
        return await self._schedule_store.list_schedules()

    async def schedule_events(self, schedule_id: str, *, limit: int = 50) -> list[ScheduleEvent]:
        """A schedule's newest decisions (started, skipped, buffered, paused...), newest first."""
        await self.get_schedule(schedule_id)
        return await self._schedule_store.schedule_events(
            schedule_id, limit=inputs.check_limit(limit)
        )

    async def pause(self, schedule_id: str) -> ScheduleRecord:
        """Stop starting runs for the schedule (its runs go on)."""
        return await self._schedules.pause(self._schedule_store, schedule_id)

    async def resume(self, schedule_id: str) -> ScheduleRecord:
        """Start again from the next tick; ticks missed while paused are not caught up."""
        return await self._schedules.resume(self._schedule_store, schedule_id)

    async def delete_schedule(self, schedule_id: str) -> None:
        """Delete the schedule and its events; its runs stay."""
        await self._schedules.delete(self._schedule_store, schedule_id)

    async def trigger(self, schedule_id: str) -> StartResult:
        """Start one run of the schedule now, as if a tick fell now."""
        return await self._schedules.trigger(self._schedule_store, schedule_id)

    async def backfill(self, schedule_id: str, start: datetime, end: datetime) -> list[StartResult]:
        """Start the ticks in ``[start, end]``; ticks that already have a run start nothing."""
        return await self._schedules.backfill(self._schedule_store, schedule_id, start, end)

    async def sync_schedules(self) -> None:
        """Write the schedules declared in code (a worker start does it)."""
        await self._schedules.sync(self._schedule_store)
        self._synced = True

    async def sweep_schedules(self, *, now: datetime | None = None) -> SweepReport:
        """Run one schedule sweep now (workers run it every second); ``now`` replaces the
        database's clock (tests)."""
        if self._scheduler is None:
            raise ConfigInvalid("the engine is not open; use `async with Engine(...)`")
        if self._memory is not None and not self._synced:
            await self.sync_schedules()
        return await self._scheduler.sweep(now=now)

    # -- workers ------------------------------------------------------------------------------

    async def listen(self, *, concurrency: int = 4) -> None:
        """Start an in-process worker in the background; it stops when the engine closes.

        Raises ``SCHEMA_MISSING`` (or ``DATABASE_UNAVAILABLE``) here rather than in a background
        task nobody awaits; a worker task that dies later is logged at ERROR with its cause.
        """
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigInvalid("concurrency must be an integer of at least 1")
        await self.store.get_run(uuid.UUID(int=0))  # the tables are there and reachable
        task = asyncio.create_task(self.run_worker(concurrency=concurrency), name="iterflow-worker")
        task.add_done_callback(_log_worker_death)
        self._worker_tasks.append(task)
        await asyncio.sleep(0)

    async def drain(self) -> int:
        """In-memory engines: run every due wake-up (and those it causes) until none is due.

        Returns the number of attempts made.
        """
        memory = self._memory
        if memory is None:
            raise ConfigInvalid("drain() is for Engine.in_memory(); use workers on PostgreSQL")
        attempts, busy = 0, True
        while busy:
            busy = bool((await self.sweep_schedules()).schedules)  # due ticks fire here
            while (run_id := memory.take_due_wake()) is not None:
                try:
                    await self.worker.advance(run_id)
                finally:
                    memory.wake_done(run_id)
                attempts += 1
                busy = True
        return attempts

    async def run_worker(self, *, concurrency: int = 4) -> None:
        """Run a procrastinate worker executing wake-ups until cancelled."""
        if concurrency < 1:
            raise ConfigInvalid("concurrency must be at least 1")
        await self.sync_schedules()
        names = sorted({f.name for f in self.registry.all()})
        if requeued := await self.store.requeue_parked(names):  # re-check them on this code
            logger.info("re-checking %d parked run(s) on the flows of this worker", requeued)
        if self._memory is not None:
            while True:  # the in-memory store has its own in-process queue
                await self.drain()
                await asyncio.sleep(0.01)
        if self._listener is not None:
            await self._listener.start()  # cancel notifications must reach running attempts
        await run_procrastinate(
            self.worker,
            self.settings,
            self.database_url,
            reconcile=self.reconcile,
            sweep_schedules=self.sweep_schedules,
            concurrency=concurrency,
        )


def _log_worker_death(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        logger.error("the in-process iterflow worker stopped: %s", exc, exc_info=exc)
