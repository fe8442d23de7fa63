"""The engine facade: register flows, start runs, deliver signals, retry, inspect, wait.

The public API, one method per operation, so it stays one module (~700 lines, most of it
docstrings): each method checks its arguments (``core/inputs.py``, the codec, the flow's
definition) and delegates to the store, the worker or ``runtime/schedules.py``. Opening the
database lives in ``runtime/backend.py``, waiting for a result in ``runtime/results.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine
from typing_extensions import Unpack

from iterflow.core import codec, inputs
from iterflow.core.builder import BuiltFlow
from iterflow.core.debounce import DEBOUNCE_META_KEY, DebounceKeep, start_control
from iterflow.core.definition import DriftPolicy, FlowDef, Registry, validate_signal_payload
from iterflow.core.durations import DurationLike, parse_duration
from iterflow.core.errors import (
    ConfigInvalid,
    EventInputInvalid,
    FlowDefinitionError,
    FlowUnknown,
    InputInvalid,
    RunNotFound,
)
from iterflow.core.events import (
    EVENT_META_KEY,
    PublishedRun,
    PublishResult,
    SignalWithStartResult,
    Subscriptions,
    check_event_name,
    event_run_key,
)
from iterflow.core.explain import Explanation
from iterflow.core.explain import explain as explain_run
from iterflow.core.hooks import (
    TRACE_META_KEY,
    Hook,
    Hooks,
    RunFinishedInfo,
    SignalInfo,
    StartInfo,
    clean_carrier,
    wait_reason,
)
from iterflow.core.limits import DEFAULT_QUEUE, RateLimitLike, flow_limits
from iterflow.core.models import (
    BulkResult,
    CancelResult,
    NewRun,
    PurgeReport,
    RetryResult,
    RunDetail,
    RunFilter,
    RunPage,
    RunQuery,
    RunRecord,
    RunStatus,
    SignalResult,
    StartOptions,
    StartResult,
    WorkerInfo,
    WorkerRecord,
)
from iterflow.core.scheduling import ScheduleEvent, ScheduleRecord, ScheduleSpec
from iterflow.core.settings import CONNECTION_SETTINGS, RetentionRule, Settings
from iterflow.core.signals import Signal, SignalsSpec, declared, payload_model
from iterflow.core.states import WAITING_STATUSES
from iterflow.runtime.backend import Backend, open_backend
from iterflow.runtime.bulk import BULK_PAGE, BulkAction, run_bulk
from iterflow.runtime.eager import EagerAttempts
from iterflow.runtime.host import run_procrastinate, stale_worker_seconds
from iterflow.runtime.notify import LocalNotifier, TerminalListener
from iterflow.runtime.reconciler import Reconciler, ReconcileReport
from iterflow.runtime.registry import WORKER_STALE_SECONDS, registered, worker_info
from iterflow.runtime.results import Notifier, wait_for_end
from iterflow.runtime.retention import RetentionSweeper
from iterflow.runtime.scheduler import Scheduler, SweepReport
from iterflow.runtime.schedules import Schedules
from iterflow.runtime.worker import Worker
from iterflow.store.base import ScheduleStore, Store, WorkerStore
from iterflow.store.memory import MemoryStore
from iterflow.store.outbox import flow_queue

if TYPE_CHECKING:
    from iterflow.runtime.context import FlowContext

__all__ = ["Engine", "FlowHandle"]

In = TypeVar("In")
Out = TypeVar("Out")
M = TypeVar("M")

logger = logging.getLogger(__name__)

#: How far :meth:`Engine.claimed_runs`'s mark trails the database's clock: longer than a claim
#: statement takes to commit, so a claim read late by one poll is seen by the next.
CLAIM_MARGIN = timedelta(seconds=5)
#: How long :meth:`Engine.close` waits for its in-process workers (a graceful stop takes at
#: most ~15 s: procrastinate's 5 s window, then attempts still running are cancelled).
CLOSE_PATIENCE_SECONDS = 30.0


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
        deadline: DurationLike | None = None,
        key: str | None = None,
        debounce: DurationLike | None = None,
        debounce_keep: DebounceKeep = "last",
        singleton: bool = False,
    ) -> StartResult:
        """Start a run. Input is validated before anything is written (``INPUT_INVALID``).

        One transaction writes the run, its ``started`` event and its wake-up job; ``conn`` (a
        SQLAlchemy ``AsyncConnection`` in a transaction) joins the caller's transaction, so the
        run exists only if the caller commits. A repeated ``idempotency_key`` returns the
        existing run (``created=False``); with a different input it raises
        ``IDEMPOTENCY_CONFLICT``. ``deadline="2d"`` fails the run with
        ``RUN_DEADLINE_EXCEEDED`` if it is still live 2 days after this start (default: the
        flow's ``deadline=``).

        ``debounce="5s", key="cart-1"``: starts with that key within 5 s of each other join one
        run (``created=False``) that begins after 5 s of quiet with the latest input
        (``debounce_keep="first"``: the first). ``singleton=True, key=...``: while a run of this
        flow with that key is live, a start returns it. See :mod:`iterflow.core.debounce`.
        """
        options = StartOptions(
            idempotency_key=idempotency_key,
            tags=tags,
            delay=delay,
            priority=priority,
            deadline=deadline,
            key=key,
            debounce=debounce,
            debounce_keep=debounce_keep,
            singleton=singleton,
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
        if known is not None:
            _check_run_of(known, self.definition)
        run = await self.engine.wait(rid, timeout=timeout)
        return self.definition.decode_output(run.output)

    @overload
    async def signal(
        self,
        run_id: uuid.UUID | str,
        name: Signal[M],
        payload: M,
        *,
        idempotency_key: str | None = None,
    ) -> SignalResult: ...

    @overload
    async def signal(
        self,
        run_id: uuid.UUID | str,
        name: str,
        payload: Any,
        *,
        idempotency_key: str | None = None,
    ) -> SignalResult: ...

    async def signal(
        self,
        run_id: uuid.UUID | str,
        name: str | Signal[Any],
        payload: Any,
        *,
        idempotency_key: str | None = None,
    ) -> SignalResult:
        """Deliver a signal to a run of this flow: ``await handle.signal(run_id, approve,
        Approval(...))`` with a :class:`~iterflow.core.signals.Signal` descriptor (the payload's
        type is checked against its model), or by name. As :meth:`Engine.signal`, and
        ``INPUT_INVALID`` for a run of another flow."""
        return await self.engine._signal(
            run_id, name, payload, idempotency_key, flow=self.definition
        )


def _check_run_of(run: RunRecord, flow: FlowDef[Any, Any]) -> None:
    """A handle acts on runs of its own flow only (``INPUT_INVALID``)."""
    if run.name != flow.name:
        raise InputInvalid(
            f"run {run.id} is a run of flow {run.name}@{run.version}, not of {flow.key}; use "
            "that flow's handle, or the engine's untyped methods (engine.result, engine.signal)"
        )


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
        hooks: Iterable[Hook] | None = None,
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
        self.subscriptions = Subscriptions()
        self._url: str | None = None
        self._backend: Backend | None = None
        self._store: Store | None = None
        self._worker: Worker | None = None
        self._listener: TerminalListener | None = None
        self._worker_tasks: list[asyncio.Task[None]] = []
        #: Set by :meth:`close`: the in-process workers stop even if a cancellation is lost.
        self._stop = asyncio.Event()
        self._eager = EagerAttempts()
        self._reconciler: Reconciler | None = None
        self._memory: MemoryStore | None = None
        self._notifier: Notifier | None = None
        self._local: LocalNotifier | None = None
        self._scheduler: Scheduler | None = None
        self._schedules = Schedules(self.registry, lambda: self.settings)
        self._synced = False
        self._hooks = Hooks.of(hooks, _hook_failed)

    @property
    def hooks(self) -> Hooks | None:
        """The installed hooks' dispatcher, None when no hook is installed
        (:mod:`iterflow.core.hooks`)."""
        return self._hooks

    def add_hook(self, hook: Hook) -> None:
        """Install ``hook`` after those given to ``Engine(hooks=[...])`` (what
        :func:`iterflow.contrib.otel.instrument` does); it applies to an open engine at once."""
        current = self._hooks.hooks if self._hooks is not None else ()
        self._hooks = Hooks.of((*current, hook), _hook_failed)
        if self._worker is not None:
            self._worker.hooks = self._hooks
        if self._reconciler is not None:
            self._reconciler.hooks = self._hooks

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

        Raises ``ConfigInvalid`` for an unknown field or an invalid value (nothing changes),
        including a ``max_label_chars`` below a label of a flow already registered (every run of
        it would fail). The pool, the worker and the reconciler read settings when the engine
        opens, so changes are refused while it is open: configure it before ``async with
        engine`` (or close it first).
        """
        new = self.settings.model_copy(update=changes)  # validates (ConfigInvalid)
        changed = sorted(k for k in changes if getattr(new, k) != getattr(self.settings, k))
        if not changed:
            return
        if "max_label_chars" in changed:
            for flow in self.registry.all():
                if isinstance(flow, BuiltFlow):
                    try:
                        flow.check_labels(new.max_label_chars)
                    except FlowDefinitionError as exc:
                        raise ConfigInvalid(
                            f"max_label_chars={new.max_label_chars} is too small for a flow "
                            f"already registered: {exc.message}. Keep the larger limit, or "
                            "configure it before registering"
                        ) from exc
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
        self._stop = asyncio.Event()
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
                hooks=self._hooks,
            )
            self._reconciler = Reconciler(
                self._store, batch=self.settings.reconcile_batch, hooks=self._hooks
            )
            self._scheduler = Scheduler(self._memory, self.registry, self.settings)
            return
        backend = self._backend = await open_backend(self.settings)
        self._url = backend.url
        self._store = backend.store
        self._listener = self._notifier = backend.listener
        self._worker = Worker(
            self._store, self.registry, self.settings, watch=self._watch_run, hooks=self._hooks
        )
        self._reconciler = Reconciler(
            self._store,
            batch=self.settings.reconcile_batch,
            stale_worker_seconds=stale_worker_seconds(self.settings),
            hooks=self._hooks,
        )
        self._scheduler = Scheduler(backend.store, self.registry, self.settings)

    async def close(self) -> None:
        """Stop workers and the listener, dispose the pool, release the embedded server."""
        self._stop.set()
        for task in self._worker_tasks:
            task.cancel()
        if self._worker_tasks:
            _, stuck = await asyncio.wait(self._worker_tasks, timeout=CLOSE_PATIENCE_SECONDS)
            for task in stuck:  # never expected (the stop event ends them): do not hang on it
                logger.error("an in-process worker ignored its stop; cancelling it again")
                task.cancel()
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

    async def migrate(
        self, *, stamp: bool = False, progress: Callable[[int, int], None] | None = None
    ) -> None:
        """Install or upgrade iterflow's tables (what ``flowctl migrate`` does);
        ``progress(done, total)`` is told as revisions are applied (from a worker thread).

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
                migrate.run_migrations,
                self.database_url,
                schema=self.settings.db_schema,
                progress=progress,
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
        signals: SignalsSpec | None = None,
        drift_policy: DriftPolicy = "fail",
        schedule: str | None = None,
        tz: str = "UTC",
        deadline: DurationLike | None = None,
        on: Iterable[str] = (),
        queue: str = DEFAULT_QUEUE,
        concurrency: int | None = None,
        concurrency_key: Callable[[In], str | int] | None = None,
        rate_limit: RateLimitLike | None = None,
    ) -> Callable[[Callable[[FlowContext, In], Awaitable[Out]]], FlowHandle[In, Out]]:
        """Register ``async def body(ctx, input) -> output`` as flow ``name`` at ``version``.

        Every signal the body waits for must be declared in ``signals`` (``Signal``
        descriptors, ``[approve]``, or a ``{"approve": Approval}`` mapping) so that
        ``engine.signal`` can validate payloads before storing them. ``drift_policy="park"``
        parks runs whose history no longer matches the body (or whose version is gone) instead
        of failing them; ``engine.retry`` or a worker start re-checks them.
        ``schedule="0 9 * * MON-FRI"`` (with ``tz=``) starts it on that cron (its input must be
        :class:`iterflow.Tick`); see :meth:`register`. ``deadline="1h"``: a run still live
        1 hour after its start fails with ``RUN_DEADLINE_EXCEEDED`` (a start's own
        ``deadline=`` wins). ``on=["user.signed_up"]``: :meth:`publish` of that event starts it,
        with the event's payload as input.

        Flow control (``docs/flow-control.md``): ``queue="billing"`` routes its runs to the
        workers serving that queue (``flowctl worker --queues billing``); ``concurrency=5``
        allows 5 live attempts at once, per flow or, with ``concurrency_key=lambda i:
        i.customer_id``, per key; ``rate_limit=(10, "1m")`` (or ``RateLimit``) allows 10 attempt
        starts a minute, per flow or per key. A run over a limit waits, held back; workers
        enforce it together through PostgreSQL.
        """
        limit = None if deadline is None else inputs.check_deadline(deadline)
        limits = flow_limits(concurrency, concurrency_key, rate_limit)

        def register(body: Callable[[FlowContext, In], Awaitable[Out]]) -> FlowHandle[In, Out]:
            definition: FlowDef[In, Out] = FlowDef(
                name=name,
                version=version,
                input_type=input,
                output_type=output,
                body=cast(Callable[[Any, Any], Awaitable[Any]], body),
                signals=declared(name, signals),
                drift_policy=drift_policy,
                deadline=limit,
                queue=queue,
                limits=limits,
            )
            return self.register(definition, schedule=schedule, tz=tz, on=on)

        return register

    def register(
        self,
        definition: FlowDef[In, Out],
        *,
        schedule: str | None = None,
        tz: str = "UTC",
        on: Iterable[str] = (),
        queue: str | None = None,
        concurrency: int | None = None,
        concurrency_key: Callable[[In], str | int] | None = None,
        rate_limit: RateLimitLike | None = None,
    ) -> FlowHandle[In, Out]:
        """Register a flow definition (a built ``flow(...)...build()``) and return its typed
        handle.

        With ``schedule`` (a 5-field cron, in IANA zone ``tz``) the flow, whose input must be
        :class:`iterflow.Tick`, is started on every tick by a schedule whose id is the flow's
        name, written when a worker starts (``SCHEDULE_INVALID`` here for a bad expression).
        ``on``: the events whose :meth:`publish` starts it (``FLOW_DEFINITION_INVALID`` for a
        bad name). ``queue``, ``concurrency``, ``concurrency_key`` and ``rate_limit`` route and
        limit its runs as for :meth:`flow` (given here, they replace the definition's). A built
        flow's step, map and sleep labels must fit ``max_label_chars`` (the builder checks all
        but their length): ``FLOW_DEFINITION_INVALID`` here, nothing registered."""
        if queue is not None:
            definition = dataclasses.replace(definition, queue=queue)
        if concurrency is not None or concurrency_key is not None or rate_limit is not None:
            limits = flow_limits(concurrency, concurrency_key, rate_limit)
            definition = dataclasses.replace(definition, limits=limits)
        if isinstance(definition, BuiltFlow):
            definition.check_labels(self.settings.max_label_chars)
        if schedule is not None:
            self._schedules.declare(definition, schedule, tz)
        events = Subscriptions.checked(definition, on)
        self.registry.add(definition)
        self.subscriptions.add(definition, events)
        return FlowHandle(self, definition)

    # -- runs ---------------------------------------------------------------------------------

    async def _start(
        self, flow: FlowDef[Any, Any], input: Any, options: StartOptions, *, conn: Any
    ) -> StartResult:
        """The start path of ``handle.start`` and ``engine.start``: validate the input and every
        option (``INPUT_INVALID``, ``DURATION_INVALID``...), then one store write: the run
        already claimed by this process's worker when it can take it (``runtime/eager.py``),
        else queued. A delay is counted by the store from its own clock (the database's
        ``now()`` on PostgreSQL), so every due time of a run comes from one clock."""
        new = self._new_run(flow, input, options)
        eager = self._eager
        if conn is None and eager.serving and self._claimable_here(new) and eager.reserve():
            try:
                started, claim = await self.store.start_claimed(
                    new, self.worker.owner, self.settings.lease_seconds
                )
            except BaseException:
                eager.release()
                raise
            if claim is None:
                eager.release()
            else:
                eager.run(self.worker, claim)
        else:
            started = await self.store.create_run(new, conn=conn)
        if self._hooks is not None:
            self._hooks.start(StartInfo(started.run_id, flow.name, flow.version, started.created))
        return started

    def _claimable_here(self, run: NewRun) -> bool:
        """A start this process's worker may claim in the same commit (``runtime/eager.py``):
        a plain start due now (no run key, delay or limit key) of a flow version it serves with
        no flow-control limit; the slot is checked by the caller."""
        if run.run_key is not None or run.delay is not None or run.wake_at is not None:
            return False
        gate = self.worker.gate
        return (
            run.limit_key is None
            and gate.serves(run.name, run.version)
            and gate.limits_of(run.name, run.version) is None
        )

    def _new_run(self, flow: FlowDef[Any, Any], input: Any, options: StartOptions) -> NewRun:
        """The run a start writes, every argument checked (nothing is written here)."""
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
        deadline = flow.deadline
        if options.deadline is not None:
            deadline = inputs.check_deadline(options.deadline)
        control = start_control(
            key=options.key,
            debounce=options.debounce,
            debounce_keep=options.debounce_keep,
            singleton=options.singleton,
            idempotency_key=key,
            delay=delay,
            max_key_chars=settings.max_key_chars,
        )
        carrier = self._hooks.inject() if self._hooks is not None else None
        meta: dict[str, Any] = {TRACE_META_KEY: carrier} if carrier else {}
        if control.keep is not None:
            meta[DEBOUNCE_META_KEY] = control.keep
        return NewRun(
            id=uuid.uuid4(),
            name=flow.name,
            version=flow.version,
            input=data,
            idempotency_key=key,
            tags=tags,
            priority=priority,
            delay=control.debounce or delay,
            meta=meta,
            deadline=deadline,
            input_hash=None if key is None else codec.digest(data),
            run_key=control.key,
            limit_key=flow.limit_key(value),
            singleton=control.singleton,
            debounce=control.keep,
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
        version: int | None = None,
        deadline: DurationLike | None = None,
        key: str | None = None,
        debounce: DurationLike | None = None,
        debounce_keep: DebounceKeep = "last",
        singleton: bool = False,
    ) -> StartResult:
        """Start a run of the **newest** registered version of flow ``name``, or of ``version``
        (untyped; the flow's typed handle starts its own version). Same options as
        ``FlowHandle.start``; ``FLOW_UNKNOWN`` if that flow (version) is not registered here.

        Prefer the typed path: the handle ``@engine.flow`` or ``engine.register(definition)``
        returns, whose ``start`` takes the input model and whose ``result`` returns the output
        model (``engine.start``/``engine.result`` are for code that only has a flow's name)."""
        if not isinstance(name, str):
            raise InputInvalid(f"flow name must be a string, got {type(name).__name__}")
        wanted = inputs.check_version(version)
        flow = self.registry.latest(name) if wanted is None else self.registry.get(name, wanted)
        if flow is None:
            at = "" if wanted is None else f" at version {wanted}"
            raise FlowUnknown(
                f"no flow named {codec.shown(name)}{at} is registered in this process"
            )
        options = StartOptions(
            idempotency_key=idempotency_key,
            tags=tags,
            delay=delay,
            priority=priority,
            deadline=deadline,
            key=key,
            debounce=debounce,
            debounce_keep=debounce_keep,
            singleton=singleton,
        )
        return await self._start(flow, input, options, conn=conn)

    # -- events (core/events.py; docs/flow-control.md) -----------------------------------------

    async def publish(
        self,
        event: str,
        payload: Any,
        *,
        idempotency_key: str | None = None,
        conn: Any = None,
    ) -> PublishResult:
        """Start every flow subscribed to ``event`` (``@engine.flow(..., on=[event])``) with
        ``payload`` as its input, all in **one** transaction; ``conn`` (a SQLAlchemy
        ``AsyncConnection`` in a transaction) joins the caller's, as ``start(conn=)`` does.

        The payload is validated against every subscriber's input model before anything is
        written: one that rejects it refuses the whole publish with ``EVENT_INPUT_INVALID``
        naming that flow. With ``idempotency_key`` each subscriber's run gets the key
        ``"event:<event>:<key>"`` (at most ``Settings.max_key_chars`` long, ``INPUT_INVALID``
        otherwise), so publishing again starts nothing new and returns the same runs
        (``created=False``; another payload is ``IDEMPOTENCY_CONFLICT``). No subscriber:
        an empty result. The subscribers are those this process registers (the newest version
        of each flow, when that version subscribes).
        """
        name = check_event_name(event)
        settings = self.settings
        key = inputs.check_key(idempotency_key, max_chars=settings.max_key_chars)
        options = StartOptions()
        if key is not None:  # the runs' key must fit where find_run can look it up
            run_key = event_run_key(name, key)
            what = "event:<event>:<idempotency_key>"
            codec.check_text(run_key, what=what, max_chars=settings.max_key_chars)
            options = StartOptions(idempotency_key=run_key)
        codec.encode(payload, what=f"payload of event {name!r}", limit=settings.max_payload_bytes)
        runs: list[NewRun] = []
        for flow in self.subscriptions.subscribers(name, self.registry):
            try:
                value = flow.validate_input(payload)
            except InputInvalid as exc:
                raise EventInputInvalid(
                    f"event {name!r} was not published (no run was started): subscribed flow "
                    f"{flow.key} rejects its payload. {exc.message}",
                    details={**exc.details, "event": name, "flow": flow.key},
                ) from exc
            run = self._new_run(flow, value, options)
            runs.append(dataclasses.replace(run, meta={**run.meta, EVENT_META_KEY: name}))
        results = await self.store.create_runs(runs, conn=conn) if runs else []
        published = tuple(
            PublishedRun(run.name, run.version, r.run_id, r.created, r.status)
            for run, r in zip(runs, results, strict=True)
        )
        if self._hooks is not None:
            for p in published:
                self._hooks.start(StartInfo(p.run_id, p.flow, p.version, p.created))
        return PublishResult(name, published)

    @overload
    async def signal_with_start(
        self,
        flow: FlowHandle[In, Any],
        input: In | Mapping[str, Any],
        signal: Signal[M],
        payload: M,
        *,
        idempotency_key: str,
        signal_idempotency_key: str | None = None,
        tags: Iterable[str] = (),
        priority: int = 0,
    ) -> SignalWithStartResult: ...

    @overload
    async def signal_with_start(
        self,
        flow: FlowHandle[In, Any],
        input: In | Mapping[str, Any],
        signal: str,
        payload: Any,
        *,
        idempotency_key: str,
        signal_idempotency_key: str | None = None,
        tags: Iterable[str] = (),
        priority: int = 0,
    ) -> SignalWithStartResult: ...

    @overload
    async def signal_with_start(
        self,
        flow: str,
        input: Any,
        signal: str | Signal[Any],
        payload: Any,
        *,
        idempotency_key: str,
        signal_idempotency_key: str | None = None,
        tags: Iterable[str] = (),
        priority: int = 0,
    ) -> SignalWithStartResult: ...

    async def signal_with_start(
        self,
        flow: str | FlowHandle[Any, Any],
        input: Any,
        signal: str | Signal[Any],
        payload: Any,
        *,
        idempotency_key: str,
        signal_idempotency_key: str | None = None,
        tags: Iterable[str] = (),
        priority: int = 0,
    ) -> SignalWithStartResult:
        """Deliver ``signal`` to the run of ``flow`` (a handle, or a name: its newest version)
        started with ``idempotency_key``, or start that run with ``input`` and the signal
        already in its inbox, atomically: concurrent callers with one key start one run, and
        every signal reaches it.

        ``input`` and ``payload`` are validated before anything is written (the payload
        against the signal model the flow declares). ``input`` only matters when the run is
        started: an existing run keeps its own (no ``IDEMPOTENCY_CONFLICT``). A run with that
        key that has ended is not restarted (its key is taken): the result says ``closed``.
        ``signal_idempotency_key`` makes the delivery itself idempotent (``duplicate``).
        Typed with a handle: ``input`` is the flow's input model (or a mapping), and a
        :class:`~iterflow.Signal` descriptor's ``payload`` its model.
        """
        definition = self._flow_of(flow)
        label, model = (signal.name, signal.model) if isinstance(signal, Signal) else (signal, None)
        codec.check_text(label, what="signal name", max_chars=200)
        settings = self.settings
        if idempotency_key is None:
            raise InputInvalid(
                "signal_with_start needs an idempotency_key: the key that finds the run to "
                "signal (or names the run it starts)"
            )
        sig_key = inputs.check_key(signal_idempotency_key, max_chars=settings.max_key_chars)
        options = StartOptions(idempotency_key=idempotency_key, tags=tags, priority=priority)
        run = dataclasses.replace(self._new_run(definition, input, options), input_hash=None)
        model = payload_model(self.registry, definition.name, definition.version, label, model)
        value = validate_signal_payload(label, model, payload)
        what = f"signal {label!r} payload"
        data = codec.encode(value, model, what=what, limit=settings.max_payload_bytes)
        sender = self._hooks.inject() if self._hooks is not None else None
        started, result = await self.store.signal_with_start(
            run,
            label,
            data,
            sig_key,
            max_signals=settings.max_signals_per_run,
            meta={TRACE_META_KEY: sender} if sender else None,
        )
        if self._hooks is not None:
            if started.created:
                self._hooks.start(
                    StartInfo(started.run_id, definition.name, definition.version, True)
                )
            carrier = clean_carrier(run.meta.get(TRACE_META_KEY))
            self._hooks.signal(
                SignalInfo(
                    started.run_id, definition.name, label, result.kind, result.signal_id, carrier
                )
            )
        return SignalWithStartResult(started.run_id, started.created, started.status, result)

    def _flow_of(self, flow: object) -> FlowDef[Any, Any]:
        """A handle's definition, or the newest registered version of a flow name
        (``FLOW_UNKNOWN``)."""
        if isinstance(flow, FlowHandle):
            return flow.definition
        if not isinstance(flow, str):
            raise InputInvalid(f"flow must be a handle or a name, got {type(flow).__name__}")
        found = self.registry.latest(flow)
        if found is None:
            raise FlowUnknown(f"no flow named {codec.shown(flow)} is registered in this process")
        return found

    @overload
    async def signal(
        self,
        run_id: uuid.UUID | str,
        name: Signal[M],
        payload: M,
        *,
        idempotency_key: str | None = None,
    ) -> SignalResult: ...

    @overload
    async def signal(
        self,
        run_id: uuid.UUID | str,
        name: str,
        payload: Any,
        *,
        idempotency_key: str | None = None,
    ) -> SignalResult: ...

    async def signal(
        self,
        run_id: uuid.UUID | str,
        name: str | Signal[Any],
        payload: Any,
        *,
        idempotency_key: str | None = None,
    ) -> SignalResult:
        """Deliver a signal to a run (what a webhook handler calls): ``name`` is a
        :class:`~iterflow.core.signals.Signal` descriptor (``payload`` then type-checked against
        its model) or the signal's name.

        The payload is validated before anything is stored, against the model declared by the
        run's flow version when this process registers it; otherwise (a web tier that registers
        an older or newer version, or no flow at all) against the descriptor's model, else the
        model the newest registered version of the flow declares for that name (then stored as
        sent, so fields only the run's model reads are kept), else it is only checked as
        storable JSON; either way the worker validates it against the run's own model when the
        run consumes it (an invalid one fails that ``ctx.signal`` with
        ``SIGNAL_PAYLOAD_INVALID``). Returns
        ``delivered``, ``buffered``, ``duplicate``, ``not_found`` or ``closed``; invalid input
        raises a :class:`FlowError` and writes nothing.
        """
        return await self._signal(run_id, name, payload, idempotency_key, flow=None)

    async def _signal(
        self,
        run_id: uuid.UUID | str,
        name: str | Signal[Any],
        payload: Any,
        idempotency_key: str | None,
        *,
        flow: FlowDef[Any, Any] | None,
    ) -> SignalResult:
        """``engine.signal``, and ``handle.signal`` (``flow``: only to runs of that flow)."""
        rid = inputs.run_id(run_id)
        label, model = (name.name, name.model) if isinstance(name, Signal) else (name, None)
        codec.check_text(label, what="signal name", max_chars=200)
        key = inputs.check_key(idempotency_key, max_chars=self.settings.max_key_chars)
        run = await self.store.get_run(rid)
        if run is None:
            return SignalResult("not_found")
        if flow is not None:
            _check_run_of(run, flow)
        model = payload_model(self.registry, run.name, run.version, label, model)
        what, limit = f"signal {label!r} payload", self.settings.max_payload_bytes
        if model is None:  # validated by the worker when the run consumes it
            data = codec.encode(payload, what=what, limit=limit)
        elif self.registry.get(run.name, run.version) is not None:  # the run's own model
            value = validate_signal_payload(label, model, payload)
            data = codec.encode(value, model, what=what, limit=limit)
        else:  # vetted by another version's model, stored as sent (keeping fields it lacks)
            validate_signal_payload(label, model, payload)
            data = codec.encode(payload, what=what, limit=limit)
        sender = self._hooks.inject() if self._hooks is not None else None
        result = await self.store.deliver_signal(
            rid,
            label,
            data,
            key,
            max_signals=self.settings.max_signals_per_run,
            meta={TRACE_META_KEY: sender} if sender else None,
        )
        if self._hooks is not None:
            carrier = clean_carrier(run.meta.get(TRACE_META_KEY))
            self._hooks.signal(
                SignalInfo(rid, run.name, label, result.kind, result.signal_id, carrier)
            )
        return result

    async def cancel(
        self, run_id: uuid.UUID | str, *, reason: str | None = None, compensate: bool = False
    ) -> CancelResult:
        """Cancel a live run and its non-detached live children.

        Returns ``canceled``, ``not_found`` or ``already_terminal`` (terminal runs never change).
        An attempt running elsewhere stops at once (async steps get ``CancelledError``) or at its
        next checkpoint at the latest, and writes nothing more; ``result`` raises
        ``RUN_CANCELED``.

        ``compensate=True`` (sagas): the children are canceled, but the run is set ``pending``
        (``canceling`` is returned); its next attempt replays the body to where it stopped, runs
        the compensations of its completed steps (``ctx.step(..., compensate=)``) in reverse
        order, each as a durable step, then ends it ``canceled`` (``RUN_CANCELED`` with a
        ``compensation`` record in its details), or ``compensation_failed``.
        """
        rid = inputs.run_id(run_id)
        text = "canceled" if reason is None else reason
        codec.check_text(text, what="cancel reason", max_chars=1000)
        if not isinstance(compensate, bool):
            raise InputInvalid("compensate must be True or False")
        hooks = self._hooks
        if compensate or hooks is None or not hooks.wants("on_run_finished"):
            return await self.store.cancel(rid, text, compensate=compensate)
        run = await self.store.get_run(rid)
        result = await self.store.cancel(rid, text)
        if result.kind == "canceled" and run is not None:
            hooks.run_finished(
                RunFinishedInfo(
                    run.id,
                    run.name,
                    run.version,
                    RunStatus.CANCELED,
                    None,
                    run.parent_run_id,
                    waited_reason=(
                        wait_reason(run.waiting_for) if run.status in WAITING_STATUSES else None
                    ),
                )
            )
        return result

    async def retry(self, run_id: uuid.UUID | str, *, resume: bool = False) -> RetryResult:
        """Replay a failed run in place from its failed step (same id; ok steps kept).

        A ``parked`` run is woken as it is, to be re-checked against the code deployed now.
        A ``compensation_failed`` run (sagas) resumes its compensation from the one that failed;
        a failed run whose compensations all ran replays from its earliest compensated step
        (those steps were undone).
        ``resume=True`` also resumes a ``canceled`` run where it stopped (not one whose
        compensations ran: ``not_failed``): its whole history is kept (memo rows, pinned
        timers, consumed signals), the canceled children it still awaits are resumed with it,
        and it is set ``pending`` (a ``resumed`` event).
        """
        rid = inputs.run_id(run_id)
        if not isinstance(resume, bool):
            raise InputInvalid("resume must be True or False")
        if resume:
            resumed = await self.store.resume(rid)
            if resumed.kind != "not_failed":
                return resumed
        return await self.store.retry(rid)

    async def fork(self, run_id: uuid.UUID | str, *, from_step: str | None = None) -> StartResult:
        """Start a new run of the same flow, version and input that reuses the source run's
        memo rows before cursor key ``from_step`` and replays from there (the source is not
        touched). ``from_step=None`` forks from the point ``retry`` would replay from.

        The new run has the source's tags and priority and ``meta["forked_from"]`` (its first
        events are ``started`` and ``forked``). ``RUN_NOT_FOUND``, or ``FORK_STEP_UNKNOWN`` for
        a key the run never recorded (the message lists its keys); nothing is written then.
        """
        rid = inputs.run_id(run_id)
        if from_step is not None:
            codec.check_text(from_step, what="from_step", max_chars=1000)
        result = await self.store.fork(rid, uuid.uuid4(), from_step)
        if result is None:
            raise RunNotFound(f"no run {rid}")
        return result

    async def bulk(
        self,
        action: BulkAction,
        *,
        dry_run: bool = False,
        resume: bool = False,
        reason: str | None = None,
        compensate: bool = False,
        progress: Callable[[int, int], None] | None = None,
        limit: int | None = None,
        **filters: Unpack[RunQuery],
    ) -> BulkResult:
        """``retry`` (with ``resume``) or ``cancel`` (with ``reason`` and ``compensate``) every
        run the filters select (the keywords of :meth:`list_runs`), oldest first, each run as
        its single-run call does it; with ``dry_run`` nothing changes and the result says what
        would be done.
        ``progress(done, total)`` is called after each run; with ``limit`` it stops after that
        many runs (``BulkResult.more``). Without any filter it is refused (``INPUT_INVALID``):
        acting on every run is never implied."""
        if action not in ("retry", "cancel"):
            raise InputInvalid(f"bulk action must be 'retry' or 'cancel', got {action!r}")
        if not all(isinstance(flag, bool) for flag in (dry_run, resume, compensate)):
            raise InputInvalid("dry_run, resume and compensate must be True or False")
        if not any(v is not None and v != () and v != [] for v in filters.values()):
            raise InputInvalid(
                f"bulk {action} needs at least one filter (flow name, status, tag, time window, "
                "...); it never acts on every run implicitly"
            )
        if reason is not None:
            codec.check_text(reason, what="cancel reason", max_chars=1000)
        if limit is not None:
            limit = inputs.check_limit(limit, most=2**31 - 1)
        counts = await self.count_runs(**filters)

        async def page(cursor: int | None) -> RunPage:
            return await self.list_runs(
                **filters, cursor=cursor, limit=BULK_PAGE, oldest_first=True
            )

        async def act(rid: uuid.UUID) -> str:
            if action == "cancel":
                return (await self.cancel(rid, reason=reason, compensate=compensate)).kind
            return (await self.retry(rid, resume=resume)).kind

        return await run_bulk(
            action,
            list_page=page,
            act=act,
            total=sum(counts.values()),
            dry_run=dry_run,
            resume=resume,
            progress=progress,
            limit=limit,
        )

    async def explain(self, run_id: uuid.UUID | str) -> Explanation:
        """What the run is doing or waiting for, what would wake it, what the reconciler would
        do (:func:`iterflow.core.explain.explain` at the database's clock), and, for a live run,
        whether any live registered worker runs its flow version (state ``no_worker`` if none;
        on an in-memory engine, whether this engine registers it). ``RUN_NOT_FOUND`` if there is
        no such run."""
        rid = inputs.run_id(run_id)
        run = await self.store.get_run(rid)
        if run is None:
            raise RunNotFound(f"no run {rid}")
        now = await self._schedule_store.schedule_now()
        if self._memory is not None:  # this process runs them (drain or listen)
            live = {f.key for f in self.registry.all()}
        else:
            live = {f for w in await self.workers() if not w.stale for f in w.flows}
        return explain_run(run, now=now, served=lambda name, v: f"{name}@{v}" in live)

    async def workers(self) -> list[WorkerRecord]:
        """The registered workers, oldest first, each with the ``name@version`` flows it runs.

        A worker registers when it starts and unregisters when it stops cleanly; ``stale`` ones
        missed their heartbeats for ``WORKER_STALE_SECONDS`` (killed, or cut off from the
        database)."""
        return await cast(WorkerStore, self.store).list_workers(WORKER_STALE_SECONDS)

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
        version: int | None = None,
        tags: Iterable[str] = (),
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        finished_after: datetime | None = None,
        finished_before: datetime | None = None,
        parent: uuid.UUID | str | None = None,
        schedule: str | None = None,
        id_prefix: str | None = None,
        oldest_first: bool = False,
    ) -> RunPage:
        """Runs newest first (``oldest_first`` reverses), keyset-paginated: pass ``next_cursor``
        back as ``cursor`` (with the same filters and order) for the next page.

        Every filter narrows: flow ``name`` and ``version``, ``status`` (one or several), ``tag``
        and ``tags`` (all present), ``idempotency_key``, created and finished time windows
        (``[after, before)``, timezone-aware; a finished bound leaves out unfinished runs), the
        ``parent`` run, the ``schedule`` that started the runs, and a run ``id_prefix``.
        """
        limit = inputs.check_limit(limit)
        where = self._run_filter(
            name=name,
            status=status,
            tag=tag,
            idempotency_key=idempotency_key,
            version=version,
            tags=tags,
            created_after=created_after,
            created_before=created_before,
            finished_after=finished_after,
            finished_before=finished_before,
            parent=parent,
            schedule=schedule,
            id_prefix=id_prefix,
        )
        seq = inputs.check_cursor(cursor)
        if not isinstance(oldest_first, bool):
            raise InputInvalid("oldest_first must be True or False")
        if oldest_first:
            seq = seq if seq is not None else 0
        runs = await self.store.list_runs(
            name=None,
            statuses=(),
            tag=None,
            limit=limit,
            before_seq=None if oldest_first else seq,
            after_seq=seq if oldest_first else None,
            filters=where,
        )
        next_cursor = runs[-1].seq if len(runs) == limit else None
        return RunPage(runs=tuple(runs), next_cursor=next_cursor)

    async def count_runs(
        self,
        *,
        name: str | None = None,
        status: RunStatus | str | Iterable[RunStatus | str] | None = None,
        tag: str | None = None,
        idempotency_key: str | None = None,
        version: int | None = None,
        tags: Iterable[str] = (),
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        finished_after: datetime | None = None,
        finished_before: datetime | None = None,
        parent: uuid.UUID | str | None = None,
        schedule: str | None = None,
        id_prefix: str | None = None,
    ) -> dict[RunStatus, int]:
        """How many runs :meth:`list_runs` would list with these filters, per status (statuses
        without runs are left out)."""
        where = self._run_filter(
            name=name,
            status=status,
            tag=tag,
            idempotency_key=idempotency_key,
            version=version,
            tags=tags,
            created_after=created_after,
            created_before=created_before,
            finished_after=finished_after,
            finished_before=finished_before,
            parent=parent,
            schedule=schedule,
            id_prefix=id_prefix,
        )
        return await self.store.count_runs(where)

    def _run_filter(
        self,
        *,
        name: object,
        status: object,
        tag: object,
        idempotency_key: object,
        version: object,
        tags: object,
        created_after: object,
        created_before: object,
        finished_after: object,
        finished_before: object,
        parent: object,
        schedule: object,
        id_prefix: object,
    ) -> RunFilter:
        settings = self.settings
        if name is not None:
            name = codec.check_text(name, what="flow name filter", max_chars=200)
        tag_list = inputs.check_tags(tags, cap=100, max_chars=settings.max_tag_chars)
        if tag is not None:
            tag_text = codec.check_text(tag, what="tag filter", max_chars=settings.max_tag_chars)
            tag_list = (tag_text, *tag_list)
        if schedule is not None:
            schedule = codec.check_text(schedule, what="schedule filter", max_chars=200)
        return RunFilter(
            name=name,
            version=inputs.check_version(version),
            statuses=tuple(inputs.statuses(status)),
            tags=tag_list,
            idempotency_key=inputs.check_key(idempotency_key, max_chars=settings.max_key_chars),
            created_after=inputs.check_time(created_after, what="created_after"),
            created_before=inputs.check_time(created_before, what="created_before"),
            finished_after=inputs.check_time(finished_after, what="finished_after"),
            finished_before=inputs.check_time(finished_before, what="finished_before"),
            parent_run_id=None if parent is None else inputs.run_id(parent),
            schedule_id=schedule,
            id_prefix=inputs.check_id_prefix(id_prefix),
        )

    async def changed_runs(
        self, since: int | None = None, *, limit: int = 500
    ) -> tuple[list[tuple[uuid.UUID, RunStatus]], int]:
        """Runs that changed since the change token ``since`` (each once, with its status now),
        and the token to pass next; ``since=None`` returns no runs and the current token.

        A cheap, indexed poll (a range of the events' primary key) for dashboards: a run
        changes when it starts, suspends, finishes, is retried, recovered, parked or gets a
        signal (a claim alone writes no event: :meth:`claimed_runs` reports claims).
        """
        if since is not None:
            since = inputs.check_cursor(since)
        return await self.store.changes_since(since, inputs.check_limit(limit))

    async def claimed_runs(
        self, since: datetime | None = None, *, limit: int = 500
    ) -> tuple[list[uuid.UUID], datetime]:
        """Runs ``running`` now that were claimed (or wrote a checkpoint) at or after ``since``,
        by the database's clock, and the ``since`` to pass next; ``since=None`` returns no runs
        and the current mark. The companion of :meth:`changed_runs` for the transitions a claim
        makes without an event (``pending`` or waiting to ``running``).

        A cheap read of the running runs only (the live-status index), nothing added to the
        claim. The mark trails the database's clock by :data:`CLAIM_MARGIN` so that a claim
        committed after a poll read is not missed: a run may be reported more than once.
        """
        if since is not None:
            since = inputs.check_time(since, what="since")
        checked = inputs.check_limit(limit)
        ids, mark = await self.store.running_since(since, checked)
        return ids, mark if len(ids) >= checked else mark - CLAIM_MARGIN

    def on_terminal(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(run_id)`` (in the event loop) whenever a run reaches a terminal status
        (``LISTEN`` on PostgreSQL: a hint, a lost notification is not replayed; the callback
        may also get ``""`` whenever the listener's LISTEN became active, its first connect or
        a reconnect, and anything may have changed).
        Returns the function that unsubscribes."""
        notifier = self._notifier
        if notifier is None:
            raise ConfigInvalid("the engine is not open; use `async with Engine(...)`")
        notifier.observe(callback)
        return lambda: notifier.unobserve(callback)

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
        """The run's output decoded with its flow's output model (untyped; prefer the handle:
        ``await handle.result(run_id)`` is typed as the flow's output model)."""
        run = await self.wait(run_id, timeout=timeout)
        flow = self.registry.get(run.name, run.version)
        return run.output if flow is None else flow.decode_output(run.output)

    async def reconcile(self) -> ReconcileReport:
        """Run one reconciler sweep now (workers also run it periodically)."""
        if self._reconciler is None:
            raise ConfigInvalid("the engine is not open; use `async with Engine(...)`")
        return await self._reconciler.sweep()

    # -- retention (runtime/retention.py; docs/operations.md) --------------------------------

    async def purge(
        self,
        *,
        older_than: DurationLike,
        status: RunStatus | str | Iterable[RunStatus | str] | None = None,
        flow: str | FlowHandle[Any, Any] | None = None,
        dry_run: bool = False,
        progress: Callable[[int], object] | None = None,
    ) -> PurgeReport:
        """Delete finished top-level runs that ended more than ``older_than`` ago (``"30d"``),
        with their children and every row of theirs (steps, signals, timers, events).

        ``status``: the terminal statuses to purge (default all: done, failed, canceled,
        compensation_failed; a live status is ``INPUT_INVALID``); ``flow``: one flow's runs
        only. ``dry_run`` counts what would go and deletes nothing. Live runs are never touched
        or locked: a run whose detached child is still live stays, and batches skip rows other
        transactions hold. An idempotency key is free again once its run is purged. Batches are
        sized and paced by ``Settings.retention`` (or its defaults);
        ``progress(runs_deleted_so_far)`` is called after each.
        """
        age = parse_duration(older_than)
        statuses = inputs.terminal_statuses(status)
        name = flow.name if isinstance(flow, FlowHandle) else flow
        if name is not None:
            codec.check_text(name, what="flow name filter", max_chars=200)
        if not isinstance(dry_run, bool):
            raise InputInvalid("dry_run must be True or False")
        rules = [RetentionRule(s, age, flow=name) for s in statuses]
        return await self._retention().purge(rules, dry_run=dry_run, progress=progress)

    async def sweep_retention(self, *, budget_seconds: float | None = None) -> PurgeReport:
        """Apply ``Settings(retention=...)`` once now (workers run it periodically, each sweep
        starting no new batch after ``budget_seconds``); nothing without a retention policy."""
        return await self._retention().sweep(budget_seconds=budget_seconds)

    def _retention(self) -> RetentionSweeper:
        return RetentionSweeper(
            self.store, self.settings.retention, hooks=self._hooks, schedules=self._schedule_store
        )

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

    @property
    def declared_schedules(self) -> tuple[ScheduleSpec, ...]:
        """The schedules declared in code (``@engine.flow(..., schedule=)``) on this engine,
        by id (the flow's name); a worker start writes them to the database."""
        return tuple(self._schedules.declared[key] for key in sorted(self._schedules.declared))

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

    async def backfill(
        self,
        schedule_id: str,
        start: datetime,
        end: datetime,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[StartResult]:
        """Start the ticks in ``[start, end]``; ticks that already have a run start nothing.
        ``progress(done, total)`` is called as batches of ticks are started."""
        return await self._schedules.backfill(
            self._schedule_store, schedule_id, start, end, progress=progress
        )

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

    async def listen(
        self,
        *,
        concurrency: int = 4,
        queues: Sequence[str] | None = None,
        flows: Sequence[str] | None = None,
    ) -> None:
        """Start an in-process worker in the background; it stops when the engine closes.
        ``queues`` and ``flows`` choose what it serves, as for :meth:`run_worker`.

        Raises ``SCHEMA_MISSING`` (or ``DATABASE_UNAVAILABLE``) here rather than in a background
        task nobody awaits; a worker task that dies later is logged at ERROR with its cause.
        """
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigInvalid("concurrency must be an integer of at least 1")
        self.registry.serving(queues, flows)  # CONFIG_INVALID here, not in the task
        await self.store.get_run(uuid.UUID(int=0))  # the tables are there and reachable
        task = asyncio.create_task(
            self.run_worker(concurrency=concurrency, queues=queues, flows=flows),
            name="iterflow-worker",
        )
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

    def stop_worker(self) -> None:
        """Ask :meth:`run_worker` to stop as on cancellation: it finishes its running attempts
        (those still running after 5 s are cancelled and recovered from their leases) and
        returns. Safe from a signal handler; the engine runs no worker again until it is
        reopened.

        Stopping by cancelling the task alone is not enough: a library can lose a cancellation
        that arrives while it is starting (on Python 3.11, ``asyncio.wait_for`` returns
        normally when cancelled as what it waits for completes, as psycopg_pool's open does);
        this request cannot be lost. ``flowctl worker`` does both on SIGTERM."""
        self._stop.set()

    async def run_worker(
        self,
        *,
        concurrency: int = 4,
        queues: Sequence[str] | None = None,
        flows: Sequence[str] | None = None,
    ) -> None:
        """Run a procrastinate worker executing wake-ups until cancelled or
        :meth:`stop_worker`.

        It serves the registered flow versions in ``queues`` (their ``queue=``; None: every
        queue) and named in ``flows`` (None: all): it fetches only their wake-ups, so the runs
        of any other flow version wait for a worker that serves them (``CONFIG_INVALID`` for a
        flow name not registered here). Flow versions registered later are served as they are
        registered."""
        if concurrency < 1:
            raise ConfigInvalid("concurrency must be at least 1")
        self.worker.serve(queues, flows)
        served = self.registry.serving(queues, flows)
        if self._memory is None:  # starts here are claimed at once (runtime/eager.py)
            self._eager.open(concurrency)
        try:
            await self.sync_schedules()
            names = sorted({f.name for f in served})
            if requeued := await self.store.requeue_parked(names):  # re-check them on this code
                logger.info("re-checking %d parked run(s) on the flows of this worker", requeued)
        except BaseException:
            await self._eager.close()
            raise

        def info() -> WorkerInfo:
            now = self.registry.serving(queues, flows)
            return worker_info(self.worker.owner, now, sorted({f.queue for f in now}))

        def flow_queues() -> list[str]:
            base = self.settings.queue_name
            served = self.registry.serving(queues, flows)
            return [flow_queue(base, f.name, f.version) for f in served]

        loop = asyncio.get_running_loop()
        listed, rerouted = asyncio.Event(), asyncio.Event()

        def on_register() -> None:  # a flow version registered while this worker runs
            loop.call_soon_threadsafe(listed.set)
            loop.call_soon_threadsafe(rerouted.set)

        unwatch = self.registry.watch(on_register)
        try:
            async with registered(cast(WorkerStore, self.store), info, changed=listed):
                if self._memory is not None:
                    while not self._stop.is_set():  # the in-memory store's in-process queue
                        await self.drain()
                        await asyncio.sleep(0.01)
                    return
                if self._listener is not None:
                    await self._listener.start()  # cancel notifications reach running attempts
                await run_procrastinate(
                    self.worker,
                    self.settings,
                    self.database_url,
                    reconcile=self.reconcile,
                    sweep_schedules=self.sweep_schedules,
                    sweep_retention=functools.partial(
                        self.sweep_retention,
                        budget_seconds=stale_worker_seconds(self.settings) / 2,
                    ),
                    concurrency=concurrency,
                    queues=flow_queues,
                    rerouted=rerouted,
                    stop=self._stop,
                    fetch_job=None if self._backend is None else self._backend.store.fetch_job,
                )
        finally:
            unwatch()
            await self._eager.close()


def _hook_failed(hook: Hook, event: str, exc: Exception) -> None:
    """A hook raised: log it; the run goes on."""
    logger.error(
        "hook %s raised in %s; ignored: %s", type(hook).__qualname__, event, exc, exc_info=exc
    )


def _log_worker_death(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        logger.error("the in-process iterflow worker stopped: %s", exc, exc_info=exc)
